package worker

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestLaneTakeTiming checks, in virtual time, when a lane's batch is due:
// a full one at once, a partial one after the flush interval, and every
// lane's partial batch after the linger once the source said it was
// drained, whichever lane the drained call went to.
func TestLaneTakeTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &Worker{opts: Options{BatchMaxBytes: 1000, BatchMaxCalls: 3, FlushInterval: time.Second, SendConcurrency: 2}}
		w.opts.setDefaults()
		o := newOrdered(w, nil, newLeases[*held](time.Second))
		o.open, o.pin = true, "p"
		call := func(key, seq uint64, drained bool) {
			h := &held{key: key, seq: seq, call: []byte(`{"x":1}`), ordered: true}
			o.add(h, "p", drained)
		}
		due := func(l *lane) (int, time.Duration) {
			batch, _, wait, _ := o.takeLocked(l)
			if batch != nil {
				o.inFlight--
			}
			return len(batch), wait
		}
		// Lane 0 gets even keys, lane 1 odd ones.
		for seq := range uint64(4) {
			call(0, seq, false)
		}
		if n, _ := due(o.lanes[0]); n != 3 {
			t.Fatalf("full batch: took %d calls, want 3 at once", n)
		}
		if n, wait := due(o.lanes[0]); n != 0 || wait != time.Second {
			t.Fatalf("partial batch: took %d, wait %v; want 0 and the flush interval", n, wait)
		}
		call(1, 10, false)
		time.Sleep(100 * time.Millisecond)
		call(2, 11, true) // drained, on lane 0
		if n, wait := due(o.lanes[1]); n != 0 || wait != 5*time.Millisecond {
			t.Fatalf("lane 1 after a drained call on lane 0: took %d, wait %v; want the linger", n, wait)
		}
		time.Sleep(5 * time.Millisecond)
		if n, _ := due(o.lanes[1]); n != 1 {
			t.Fatalf("lane 1 after the linger: took %d, want its 1 call", n)
		}
		if n, _ := due(o.lanes[0]); n != 2 {
			t.Fatalf("lane 0 after the linger: took %d, want its 2 calls", n)
		}
		call(3, 12, false) // more is coming: back to the flush interval
		if n, wait := due(o.lanes[1]); n != 0 || wait != time.Second {
			t.Fatalf("after a call that was not drained: took %d, wait %v; want the flush interval", n, wait)
		}
	})
}
