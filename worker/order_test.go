package worker

import (
	"slices"
	"testing"
)

// seqs returns the stream sequences of calls.
func seqs(calls []*held) []uint64 {
	out := make([]uint64, len(calls))
	for i, h := range calls {
		out[i] = h.seq
	}
	return out
}

// TestKeyOrder plays scripts of arrivals, naks and send-time checks
// against the per-key policy and checks what it lets go, and in which
// order. Key 1 is the person under test; key 2 another person.
func TestKeyOrder(t *testing.T) {
	type step struct {
		op   string // "add": arrival; "nak": handed back; "send": eligibility at send time; "floor": the ack floor is seq; "gone": let go unsent
		key  uint64
		seq  uint64
		want []uint64 // add: released, in order; send: [seq] when eligible, else none
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"unblocked keys pass straight through", []step{
			{"add", 1, 1, []uint64{1}}, {"add", 2, 2, []uint64{2}}, {"send", 1, 1, []uint64{1}},
		}},
		{"a nakked call blocks its key's later calls until it is back", []step{
			{"nak", 1, 1, nil},
			{"add", 1, 3, nil}, {"add", 1, 5, nil},
			{"add", 2, 4, []uint64{4}}, // another person is not held up
			{"add", 1, 1, []uint64{1, 3, 5}},
			{"add", 1, 6, []uint64{6}},
		}},
		{"several blockers are released in sequence order", []step{
			{"nak", 1, 1, nil}, {"nak", 1, 4, nil},
			{"add", 1, 6, nil},
			{"add", 1, 4, nil}, // 1 is still out
			{"add", 1, 1, []uint64{1, 4, 6}},
		}},
		{"a blocker back releases only up to the next blocker", []step{
			{"nak", 1, 1, nil}, {"nak", 1, 4, nil},
			{"add", 1, 3, nil}, {"add", 1, 6, nil},
			{"add", 1, 1, []uint64{1, 3}},
			{"add", 1, 4, []uint64{4, 6}},
		}},
		{"a queued call of a key blocked since is held back at send time", []step{
			{"add", 1, 5, []uint64{5}},
			{"nak", 1, 2, nil},
			{"send", 1, 5, nil},
			{"add", 1, 2, []uint64{2, 5}},
		}},
		{"a call before the blocker may still go", []step{
			{"nak", 1, 4, nil}, {"send", 1, 2, []uint64{2}},
		}},
		{"a copy of a blocker at send time is the blocker back", []step{
			{"nak", 1, 2, nil}, {"send", 1, 2, []uint64{2}}, {"add", 1, 3, []uint64{3}},
		}},
		{"a blocker under the ack floor is done: what waited goes", []step{
			{"nak", 1, 2, nil}, {"nak", 1, 4, nil}, {"add", 1, 3, nil}, {"add", 1, 5, nil},
			{"floor", 0, 1, nil},
			{"floor", 0, 2, []uint64{3}}, // 4 is still out
			{"floor", 0, 4, []uint64{5}},
		}},
		{"a blocker back does not let a later call already in flight overtake it", []step{
			// A bisect: the half with 1 failed and was nakked; 1 came back
			// (its nak delay is short) while the half with 5 was still to
			// be sent. 5 must wait until 1 is sent.
			{"nak", 1, 1, nil},
			{"add", 1, 1, []uint64{1}},
			{"send", 1, 5, nil},
			{"send", 1, 1, []uint64{1, 5}},
			{"send", 1, 5, []uint64{5}},
		}},
		{"a released call that never goes (too large) does not hold its key", []step{
			{"nak", 1, 1, nil}, {"add", 1, 1, []uint64{1}},
			{"gone", 1, 1, nil},
			{"send", 1, 5, []uint64{5}},
		}},
		{"a released call under the ack floor does not hold its key", []step{
			{"nak", 1, 1, nil}, {"add", 1, 1, []uint64{1}},
			{"floor", 0, 1, nil},
			{"send", 1, 5, []uint64{5}},
		}},
		{"nothing of a dead-lettered call blocks: it is never nakked", []step{
			{"add", 1, 1, []uint64{1}}, {"add", 1, 2, []uint64{2}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newKeyOrder()
			for i, s := range tt.steps {
				h := &held{key: s.key, seq: s.seq}
				var got []uint64
				switch s.op {
				case "add":
					got = seqs(o.add(h))
				case "nak":
					o.nakked(h)
				case "gone":
					o.gone(h)
					got = seqs(o.freed)
					o.freed = nil
				case "floor":
					o.settled(s.seq)
					got = seqs(o.freed)
					o.freed = nil
				case "send":
					if o.eligible(h) {
						got = []uint64{s.seq}
					}
					got = append(got, seqs(o.freed)...)
					o.freed = nil
				}
				if !slices.Equal(got, s.want) {
					t.Fatalf("step %d (%s key %d seq %d): got %v, want %v", i, s.op, s.key, s.seq, got, s.want)
				}
			}
		})
	}
}

// TestKeyOrderForgetsSettledKeys: a key whose blockers are all back and
// released has no state left, so memory follows what is held, not how
// many persons were ever seen.
func TestKeyOrderForgetsSettledKeys(t *testing.T) {
	o := newKeyOrder()
	for k := range uint64(1000) {
		o.nakked(&held{key: k, seq: k})
		o.add(&held{key: k, seq: k + 5000})
		for _, h := range o.add(&held{key: k, seq: k}) {
			o.eligible(h) // sent, as its lane does
		}
	}
	if n := len(o.keys); n != 0 {
		t.Fatalf("%d keys still have state", n)
	}
}

func TestParseAckCseq(t *testing.T) {
	for _, c := range []struct {
		reply string
		want  uint64
		ok    bool
	}{
		{"$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.5", 7, true},
		{"$JS.ACK.dom.hash.CIO.cio-relay.2.42.9.1700000000000000000.0.rand", 9, true},
		{"$JS.ACK.CIO.x", 0, false},
		{"_INBOX.x", 0, false},
	} {
		if got, ok := parseAckCseq(c.reply); got != c.want || ok != c.ok {
			t.Errorf("%s: got %d %v, want %d %v", c.reply, got, ok, c.want, c.ok)
		}
	}
}
