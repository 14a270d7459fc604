package worker

import (
	"slices"
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

// TestOrderedLanesKeepKeyOrderAcrossNaks plays arrivals, sends and failed
// sends against the lanes and the key policy together, as runLane and
// deliver drive them, and checks that every key's calls first go out in
// stream order. The calls that wait in a lane when an earlier call of their
// key is nakked are the case that matters: after a takeover the barrier
// routes thousands of calls to the lanes at once, so a nakked call is
// usually back (after its nak delay) while later calls of its key are
// still queued ahead of where it would be appended.
func TestOrderedLanesKeepKeyOrderAcrossNaks(t *testing.T) {
	type step struct {
		op  string // "add": a delivery arrives; "send": the lane's next batch goes; "fail": it is nakked
		key uint64
		seq uint64
	}
	tests := []struct {
		name  string
		calls int // BatchMaxCalls
		steps []step
	}{
		{"a nakked call back while a later call of its key waits in the lane", 1, []step{
			{"add", 1, 1}, {"add", 2, 2}, {"add", 1, 3},
			{"send", 0, 0}, {"fail", 0, 0}, // 1 nakked: 3 must wait for it
			{"add", 1, 1}, // 1 redelivered, after its nak delay
		}},
		{"several nakked calls back one by one, later calls queued in between", 2, []step{
			{"add", 1, 1}, {"add", 1, 2}, {"add", 2, 3}, {"add", 1, 4}, {"add", 2, 5}, {"add", 1, 6},
			{"send", 0, 0}, {"fail", 0, 0}, // 1 and 2 nakked
			{"add", 1, 2}, {"send", 0, 0}, // 3 and 4 taken; 4 must wait
			{"add", 1, 1}, {"add", 2, 7}, {"add", 1, 8},
		}},
		{"a batch taken before the nakked call is back holds the later call back", 1, []step{
			{"add", 1, 1}, {"add", 2, 2}, {"add", 1, 3}, {"add", 2, 4},
			{"send", 0, 0}, {"fail", 0, 0},
			{"send", 0, 0}, {"send", 0, 0}, // 2 goes; 3 waits for 1
			{"add", 1, 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &Worker{opts: Options{BatchMaxBytes: 1000, BatchMaxCalls: tt.calls, FlushInterval: time.Hour, SendConcurrency: 1}}
			w.opts.setDefaults()
			o := newOrdered(w, nil, newLeases[*held](time.Second))
			o.open, o.pin, o.closing = true, "p", true // closing: every batch is due at once
			var sent []*held                           // first sends, in order
			seen := map[uint64]bool{}
			var last []*held
			send := func() bool {
				batch, _, _, _ := o.takeLocked(o.lanes[0])
				if batch == nil {
					return false
				}
				last = o.filter(batch)
				o.inFlight--
				for _, h := range last {
					if !seen[h.seq] {
						seen[h.seq] = true
						sent = append(sent, h)
					}
				}
				return true
			}
			for _, s := range tt.steps {
				switch s.op {
				case "add":
					o.add(&held{key: s.key, seq: s.seq, call: []byte(`{"x":1}`), ordered: true}, "p", false)
				case "send":
					send()
				case "fail":
					for _, h := range last {
						delete(seen, h.seq)
						sent = slices.DeleteFunc(sent, func(x *held) bool { return x == h })
						o.nakked(h)
					}
				}
			}
			for send() { // the rest goes through
			}
			next := map[uint64]uint64{} // key → highest seq first sent
			for _, h := range sent {
				if h.seq < next[h.key] {
					t.Fatalf("key %d: seq %d first sent after seq %d; first sends %v", h.key, h.seq, next[h.key], seqs(sent))
				}
				next[h.key] = h.seq
			}
			if n := o.keys.keys; len(n) != 0 {
				t.Errorf("%d keys still blocked after everything was back and sent", len(n))
			}
		})
	}
}
