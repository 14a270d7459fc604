package worker

import (
	"context"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
)

// BenchmarkHold measures taking one message into the worker's hands: its
// ack subject read, counted and leased (the intake's per-message cost).
func BenchmarkHold(b *testing.B) {
	w, err := New(nil, nil, Options{})
	if err != nil {
		b.Fatal(err)
	}
	m := newScriptedMsg("cio.track", `{"type":"track","userId":"a","event":"e"}`, 12345, 1)
	leases := newLeases[*held](time.Hour)
	h := new(held)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := w.hold(m, "bench.", leases, func() *held { return h }); !ok {
			b.Fatal("not held")
		}
		leases.remove(h)
	}
}

// BenchmarkSendDelivered measures delivering and settling a batch of 500
// calls that Customer.io accepts: the attempt, the decision and the acks.
func BenchmarkSendDelivered(b *testing.B) {
	w, err := New(&fakeJS{}, acceptAll{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	leases := newLeases[*held](time.Hour)
	var hs []*held
	for i := range 500 {
		m := newScriptedMsg("cio.track", `{"type":"track","userId":"a","event":"e"}`, uint64(i+1), 1)
		h, _ := w.hold(m, "bench.", leases, func() *held { return new(held) })
		h.call = m.data
		m.discard = true
		hs = append(hs, h)
	}
	body := batcher.BodyOf(hs, callOf)
	ctx := context.Background()
	b.ReportAllocs()
	b.ReportMetric(float64(len(hs)), "calls/op")
	for b.Loop() {
		w.send(ctx, hs, body)
	}
}

// acceptAll is a Customer.io that accepts every batch and keeps nothing.
type acceptAll struct{}

func (acceptAll) SendBatch(context.Context, []byte) error { return nil }
