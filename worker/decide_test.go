package worker

import (
	"fmt"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
)

// TestDecideTable states the settlement policy for every class × kind ×
// request size × deliveries boundary (first delivery, one before
// MaxDeliver, MaxDeliver, beyond) with no trigger or split flags set.
func TestDecideTable(t *testing.T) {
	const maxDeliver = 5
	const base = time.Second
	ack := action{Verb: verbAck}
	pause := action{Verb: verbPause}
	nakNow := action{Verb: verbNakNow}
	split := action{Verb: verbSplit}
	rejected := action{Verb: verbDeadLetter, Reason: deadletter.ReasonRejected}
	exhausted := action{Verb: verbDeadLetter, Reason: deadletter.ReasonRetriesExhausted}
	ambiguous := action{Verb: verbDeadLetter, Reason: deadletter.ReasonAmbiguous}
	nak := func(d uint64) action { return action{Verb: verbNakDelay, Delay: base * time.Duration(d)} }
	deliveries := []uint64{1, maxDeliver - 1, maxDeliver, maxDeliver + 1}
	// want[kind][class][calls>1] gives the action for each of deliveries.
	type row [4]action
	all := func(a action) row { return row{a, a, a, a} }
	retry := row{nak(1), nak(maxDeliver - 1), exhausted, exhausted}
	want := map[callKind]map[sink.Class][2]row{
		kindBatch: {
			sink.Delivered: {all(ack), all(ack)},
			sink.Pause:     {all(pause), all(pause)},
			sink.Reject:    {all(rejected), all(split)},
			sink.Retry:     {retry, retry}, // not redelivered, no 5xx: no split
			sink.Cancelled: {all(nakNow), all(nakNow)},
		},
		kindTrigger: {
			sink.Delivered: {all(ack), all(ack)},
			sink.Pause:     {all(pause), all(pause)},
			sink.Reject:    {all(rejected), all(split)},
			sink.Retry:     {retry, retry},
			// Cut off in flight: may have been sent.
			sink.Cancelled: {all(ambiguous), all(ambiguous)},
		},
		kindTrack: {
			sink.Delivered: {all(ack), all(ack)},
			sink.Pause:     {all(pause), all(pause)},
			sink.Reject:    {all(rejected), all(rejected)}, // one call a request: nothing to split
			sink.Retry:     {retry, retry},
			sink.Cancelled: {all(nakNow), all(nakNow)},
		},
	}
	n := 0
	for _, kind := range []callKind{kindBatch, kindTrigger, kindTrack} {
		for _, class := range []sink.Class{sink.Delivered, sink.Retry, sink.Pause, sink.Reject, sink.Cancelled} {
			for ci, calls := range []int{1, 2} {
				for di, d := range deliveries {
					o := outcome{Class: class, Kind: kind, Calls: calls, Deliveries: d, MaxDeliver: maxDeliver, NakDelay: base}
					got, exp := decide(o), want[kind][class][ci][di]
					if got != exp {
						t.Errorf("%v %v calls=%d deliveries=%d: got %+v, want %+v", kind, class, calls, d, got, exp)
					}
					n++
				}
			}
		}
	}
	if n != 3*5*2*4 {
		t.Fatalf("covered %d cases", n)
	}
}

// TestDecideFlags covers the flags of batch splits and triggers, each case
// at the deliveries boundary where it differs from the plain table.
func TestDecideFlags(t *testing.T) {
	const maxDeliver = 3
	o := func(kind callKind, class sink.Class, status, calls int, d uint64) outcome {
		return outcome{Class: class, Kind: kind, Status: status, Calls: calls, Deliveries: d, MaxDeliver: maxDeliver, NakDelay: 10 * time.Second}
	}
	with := func(o outcome, f func(*outcome)) outcome { f(&o); return o }
	split := action{Verb: verbSplit}
	nak := func(d time.Duration) action { return action{Verb: verbNakDelay, Delay: d} }
	exhausted := action{Verb: verbDeadLetter, Reason: deadletter.ReasonRetriesExhausted}
	ambiguous := action{Verb: verbDeadLetter, Reason: deadletter.ReasonAmbiguous}
	tests := []struct {
		name string
		in   outcome
		want action
	}{
		{"batch 5xx redelivered splits", with(o(kindBatch, sink.Retry, 500, 2, 1), func(o *outcome) { o.Redelivered, o.MaySplit = true, true }), split},
		{"batch 5xx redelivered splits even at MaxDeliver", with(o(kindBatch, sink.Retry, 503, 2, maxDeliver), func(o *outcome) { o.Redelivered, o.MaySplit = true, true }), split},
		{"batch 5xx in a split splits further", with(o(kindBatch, sink.Retry, 500, 2, 1), func(o *outcome) { o.InSplit, o.MaySplit = true, true }), split},
		{"batch 5xx in a split that may not go further naks", with(o(kindBatch, sink.Retry, 500, 2, 1), func(o *outcome) { o.InSplit = true }), nak(10 * time.Second)},
		{"batch 5xx of one call in a split naks", with(o(kindBatch, sink.Retry, 500, 1, 2), func(o *outcome) { o.InSplit, o.MaySplit = true, true }), nak(20 * time.Second)},
		{"batch 5xx first delivery naks whole", o(kindBatch, sink.Retry, 500, 2, 1), nak(10 * time.Second)},
		{"batch 429 redelivered is never split", with(o(kindBatch, sink.Retry, 429, 2, 2), func(o *outcome) { o.Redelivered, o.MaySplit = true, true }), nak(20 * time.Second)},
		{"batch transport failure redelivered is never split", with(o(kindBatch, sink.Retry, 0, 2, 2), func(o *outcome) { o.Redelivered, o.MaySplit = true, true }), nak(20 * time.Second)},
		{"batch 429 at MaxDeliver is dead-lettered", o(kindBatch, sink.Retry, 429, 2, maxDeliver), exhausted},
		{"track 5xx redelivered is not split", with(o(kindTrack, sink.Retry, 500, 2, 2), func(o *outcome) { o.Redelivered, o.MaySplit = true, true }), nak(20 * time.Second)},
		{"trigger 5xx redelivered is not split", with(o(kindTrigger, sink.Retry, 500, 2, 2), func(o *outcome) { o.Redelivered, o.MaySplit = true, true }), nak(20 * time.Second)},
		{"nak delay capped at ten times", with(o(kindBatch, sink.Retry, 500, 1, 50), func(o *outcome) { o.MaxDeliver = 100 }), nak(100 * time.Second)},
		{"trigger maybe sent is ambiguous, not retried", with(o(kindTrigger, sink.Retry, 502, 1, 1), func(o *outcome) { o.MaybeSent = true }), ambiguous},
		{"trigger maybe sent at MaxDeliver is ambiguous, not exhausted", with(o(kindTrigger, sink.Retry, 504, 1, maxDeliver), func(o *outcome) { o.MaybeSent = true }), ambiguous},
		{"trigger cancelled between tries naks now", with(o(kindTrigger, sink.Cancelled, 0, 2, 1), func(o *outcome) { o.BetweenTries = true }), action{Verb: verbNakNow}},
		{"trigger markers down naks with a delay", with(o(kindTrigger, sink.Retry, 0, 2, 2), func(o *outcome) { o.MarkersDown = true }), nak(20 * time.Second)},
		{"trigger markers down at MaxDeliver still naks", with(o(kindTrigger, sink.Retry, 0, 1, maxDeliver+1), func(o *outcome) { o.MarkersDown = true }), nak(40 * time.Second)},
		{"trigger markers down at shutdown naks now", with(o(kindTrigger, sink.Retry, 0, 1, 1), func(o *outcome) { o.MarkersDown, o.ShuttingDown = true, true }), action{Verb: verbNakNow}},
		{"batch ignores trigger flags", with(o(kindBatch, sink.Cancelled, 0, 1, 1), func(o *outcome) { o.MaybeSent, o.MarkersDown = true, true }), action{Verb: verbNakNow}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decide(tt.in); got != tt.want {
				t.Fatalf("decide(%+v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// TestDecideInvariants runs every combination of the outcome's fields and
// checks what must hold whatever the table says: nothing is dead-lettered
// for a pause or while the markers are down, a trigger that may have been
// sent is ambiguous (a pause, which no such answer is, aside), only a
// trigger is ambiguous,
// only a request of several calls is split, and a nak delay stays within
// [NakDelay, 10×NakDelay], and where byDeliveries says the decision is
// the same for every call of a request, it is.
func TestDecideInvariants(t *testing.T) {
	const base = time.Second
	bools := []bool{false, true}
	n := 0
	for _, kind := range []callKind{kindBatch, kindTrigger, kindTrack} {
		for _, class := range []sink.Class{sink.Delivered, sink.Retry, sink.Pause, sink.Reject, sink.Cancelled} {
			for _, status := range []int{0, 400, 429, 500, 502} {
				for _, calls := range []int{1, 3} {
					for _, d := range []uint64{0, 1, 2, 3, 4, 20} {
						for mask := range 1 << 7 {
							b := func(i int) bool { return bools[mask>>i&1] }
							o := outcome{Class: class, Kind: kind, Status: status, Calls: calls, Deliveries: d, MaxDeliver: 3, NakDelay: base,
								Redelivered: b(0), InSplit: b(1), MaySplit: b(2), MaybeSent: b(3), BetweenTries: b(4), MarkersDown: b(5), ShuttingDown: b(6)}
							a := decide(o)
							n++
							fail := func(why string) { t.Helper(); t.Errorf("%+v → %+v: %s", o, a, why) }
							if a.Verb == verbDeadLetter && (class == sink.Pause || kind == kindTrigger && o.MarkersDown) {
								fail("dead-lettered what must not be")
							}
							if a.Reason == deadletter.ReasonAmbiguous && kind != kindTrigger {
								fail("ambiguous outside triggers")
							}
							if a.Verb == verbSplit && (calls < 2 || kind == kindTrack) {
								fail("split what cannot be split")
							}
							if a.Verb == verbNakDelay && (a.Delay < base || a.Delay > 10*base) {
								fail(fmt.Sprintf("nak delay %v out of range", a.Delay))
							}
							if (a.Verb == verbDeadLetter) != (a.Reason != "") {
								fail("a reason without a dead letter or one without")
							}
							if !o.byDeliveries() {
								for _, other := range []uint64{0, 1, 2, 3, 4, 20} {
									o2 := o
									o2.Deliveries = other
									if decide(o2) != a {
										fail("the decision depends on deliveries, but byDeliveries says it does not")
									}
								}
							}
							if kind == kindTrigger && class != sink.Pause && o.MaybeSent && !o.MarkersDown && a.Reason != deadletter.ReasonAmbiguous {
								fail("a trigger that may have been sent was not dead-lettered as ambiguous")
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d outcomes checked", n)
}
