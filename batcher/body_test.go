package batcher

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"
)

// call is a test item: a call's wire bytes and a tag to follow it by.
type call struct {
	data []byte
	tag  int
}

func dataOf(c call) []byte { return c.data }

func calls(n int) []call {
	cs := make([]call, n)
	for i := range cs {
		cs[i] = call{data: fmt.Appendf(nil, `{"type":"track","messageId":"m%d","userId":"u","event":"E<&>"}`, i), tag: i}
	}
	return cs
}

func TestBodyOf(t *testing.T) {
	for _, tt := range []struct {
		name  string
		items []call
		want  string
	}{
		{"none", nil, `{"batch":[]}`},
		{"one", []call{{data: []byte(`{"a":1}`)}}, `{"batch":[{"a":1}]}`},
		{"three", []call{{data: []byte(`{"a":1}`)}, {data: []byte(`{"b":2}`)}, {data: []byte(`{}`)}}, `{"batch":[{"a":1},{"b":2},{}]}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := BodyOf(tt.items, dataOf)
			if string(got) != tt.want {
				t.Errorf("BodyOf = %s, want %s", got, tt.want)
			}
			if len(got) != cap(got) || BodySizeOf(tt.items, dataOf) != len(got) {
				t.Errorf("len %d, cap %d, BodySizeOf %d: want all three equal", len(got), cap(got), BodySizeOf(tt.items, dataOf))
			}
			if app := AppendBodyOf([]byte("kept"), tt.items, dataOf); string(app) != "kept"+tt.want {
				t.Errorf("AppendBodyOf onto %q = %s", "kept", app)
			}
		})
	}
}

// TestBodyOfIsPackersBody: a part of a batch built on its own is byte for
// byte what Packer would have sent for the same calls, so a bisected half
// or an ordered lane's batch is the body Packer's limits were checked on.
func TestBodyOfIsPackersBody(t *testing.T) {
	cs := calls(7)
	p, err := NewPacker[call](MaxBatchBytes, len(cs))
	if err != nil {
		t.Fatal(err)
	}
	var b *Batch[call]
	for _, c := range cs {
		if b, err = p.Add(c.data, c, time.Unix(0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if b == nil {
		t.Fatal("Packer did not close the batch at its call cap")
	}
	if got := BodyOf(b.Items, dataOf); string(got) != string(b.Body()) {
		t.Errorf("BodyOf = %s\nPacker = %s", got, b.Body())
	}
	var v struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if err := json.Unmarshal(BodyOf(cs, dataOf), &v); err != nil || len(v.Batch) != len(cs) {
		t.Errorf("body is not a batch of %d calls: %v, %d", len(cs), err, len(v.Batch))
	}
}

func TestHalves(t *testing.T) {
	for n := 2; n <= 7; n++ {
		cs := calls(n)
		first, second, fb, sb := Halves(cs, dataOf)
		if len(first) != n/2 || len(second) != n-n/2 {
			t.Errorf("%d calls: halves of %d and %d, want %d and %d", n, len(first), len(second), n/2, n-n/2)
		}
		var tags []int
		for _, c := range append(slices.Clone(first), second...) {
			tags = append(tags, c.tag)
		}
		if !slices.Equal(tags, []int{0, 1, 2, 3, 4, 5, 6}[:n]) {
			t.Errorf("%d calls: halves reorder or lose calls", n)
		}
		if string(fb) != string(BodyOf(first, dataOf)) || string(sb) != string(BodyOf(second, dataOf)) {
			t.Errorf("%d calls: a half's body is not its calls'", n)
		}
	}
}
