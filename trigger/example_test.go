package trigger_test

import (
	"fmt"
	"time"

	"github.com/cio-relay/cio-relay/trigger"
)

// A Pacer releases one request per broadcast at a time, merging the
// triggers that can share one (here two lists of ids that may name someone
// missing), and the next only Interval after the answer.
// It keeps no clock: the caller passes the time and asks Next when to look
// again.
func ExamplePacer() {
	p, err := trigger.NewPacer[string](trigger.PacerOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, m := range []struct{ handle, body string }{
		{"msg-1", `{"broadcast_id":7,"ids":["u-1"],"id_ignore_missing":true}`},
		{"msg-2", `{"broadcast_id":7,"ids":["u-2"],"id_ignore_missing":true}`},
		{"msg-3", `{"broadcast_id":8,"emails":["a@example.com"]}`},
	} {
		req, err := trigger.Parse([]byte(m.body))
		if err != nil {
			fmt.Println(err)
			return
		}
		if err := p.Add(req, m.handle); err != nil {
			fmt.Println(err)
			return
		}
	}
	start := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, b := range p.Ready(start) {
		fmt.Println(b.BroadcastID, b.Items, string(b.Body))
		p.Done(b, start.Add(time.Second)) // answered 2xx a second later
	}
	p.Add(parsed(`{"broadcast_id":7,"ids":["u-3"]}`), "msg-4")
	fmt.Println(len(p.Ready(start.Add(2*time.Second))), "released two seconds later")
	next, _ := p.Next()
	fmt.Println("next at", next.Sub(start))
	fmt.Println(len(p.Ready(next)), "released then")
	// Output:
	// 7 [msg-1 msg-2] {"ids":["u-1","u-2"],"id_ignore_missing":true}
	// 8 [msg-3] {"emails":["a@example.com"]}
	// 0 released two seconds later
	// next at 11s
	// 1 released then
}

func parsed(body string) *trigger.Request {
	req, err := trigger.Parse([]byte(body))
	if err != nil {
		panic(err)
	}
	return req
}
