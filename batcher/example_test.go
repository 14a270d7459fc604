package batcher_test

import (
	"fmt"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
)

// A Packer fills batch bodies to the byte: here a limit of 60 bytes closes
// the first batch when the third call would not fit.
func ExamplePacker() {
	p, err := batcher.NewPacker[string](60, 100)
	if err != nil {
		fmt.Println(err)
		return
	}
	now := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		call := []byte(`{"type":"track","messageId":"` + id + `"}`)
		if b, _ := p.Add(call, id, now); b != nil {
			fmt.Println(b.Reason, b.Items, string(b.Body()))
		}
	}
	b := p.Flush()
	fmt.Println(b.Reason, b.Items, string(b.Body()))
	// Output:
	// full [a] {"batch":[{"type":"track","messageId":"a"}]}
	// full [b] {"batch":[{"type":"track","messageId":"b"}]}
	// requested [c] {"batch":[{"type":"track","messageId":"c"}]}
}

// Halves bisects a batch Customer.io refused: each half is sent on its own
// until the call it refuses is alone.
func ExampleHalves() {
	calls := [][]byte{[]byte(`{"n":1}`), []byte(`{"n":2}`), []byte(`{"n":3}`)}
	self := func(c []byte) []byte { return c }
	_, _, first, second := batcher.Halves(calls, self)
	fmt.Println(string(first))
	fmt.Println(string(second))
	fmt.Println(string(batcher.BodyOf(calls, self)), batcher.BodySizeOf(calls, self))
	// Output:
	// {"batch":[{"n":1}]}
	// {"batch":[{"n":2},{"n":3}]}
	// {"batch":[{"n":1},{"n":2},{"n":3}]} 35
}
