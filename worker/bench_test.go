package worker

import (
	"context"
	"fmt"
	"strings"
	"sync"
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

// BenchmarkReadToBatches measures the reader and the batcher as Run wires
// them on the unordered path: calls (about 1 KB) prepared into slabs,
// handed to the batcher, packed, and the batches released as a sender
// would once it has settled them. Per op: one call.
func BenchmarkReadToBatches(b *testing.B) {
	w, err := New(nil, nil, Options{})
	if err != nil {
		b.Fatal(err)
	}
	body := `{"type":"track","userId":"user-42","event":"Order Completed","properties":{"note":"` +
		strings.Repeat("x", 900) + `","total":12.5}}`
	m := newScriptedMsg("cio.track", body, 12345, 1)
	leases := newLeases[*held](time.Hour)
	hs := make([]held, b.N)
	for i := range hs {
		if _, ok := w.hold(m, "bench.", leases, func() *held { return &hs[i] }); !ok {
			b.Fatal("not held")
		}
	}
	bt, err := batcher.New[*held](w.opts.BatchMaxBytes, w.opts.BatchMaxCalls, w.opts.FlushInterval)
	if err != nil {
		b.Fatal(err)
	}
	in := &intake{queue: make(chan *held, 1000), freed: make(chan struct{}, 1)}
	calls := make(chan []batcher.Call[*held])
	batches := make(chan *batcher.Batch[*held])
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := range hs {
			in.queue <- &hs[i]
		}
		close(in.queue)
	}()
	go func() {
		w.read(context.Background(), in, leases, calls)
		close(calls)
	}()
	go func() {
		_ = bt.RunSlices(context.Background(), calls, batches, func(batcher.Call[*held], error) { b.Error("rejected") })
		close(batches)
	}()
	n := 0
	for batch := range batches {
		n += batch.Len()
		batch.Release()
		releaseCalls(batch.Items)
	}
	if n != b.N {
		b.Fatalf("%d calls batched, want %d", n, b.N)
	}
}

// BenchmarkReadOrdered is BenchmarkReadToBatches for the ordered path, as
// Run wires it with the barrier open: calls prepared into slabs, routed to
// lanes by key (64 people), packed and sent to a Customer.io that accepts
// everything, acked and let go. Per op: one call.
func BenchmarkReadOrdered(b *testing.B) {
	w, err := New(&fakeJS{}, acceptAll{}, Options{Ordering: true})
	if err != nil {
		b.Fatal(err)
	}
	var msgs []*scriptedMsg
	for u := range 64 {
		body := fmt.Sprintf(`{"type":"track","userId":"user-%d","event":"Order Completed","properties":{"note":"%s","total":12.5}}`,
			u, strings.Repeat("x", 900))
		m := newScriptedMsg("cio.track", body, 12345, 1)
		m.discard = true
		msgs = append(msgs, m)
	}
	leases := newLeases[*held](time.Hour)
	w.ord = newOrdered(w, nil, leases, &intake{freed: make(chan struct{}, 1)}, heldLease())
	w.ord.open, w.ord.holding = true, true
	hs := make([]held, b.N)
	for i := range hs {
		if _, ok := w.hold(msgs[i%len(msgs)], "bench.", leases, func() *held { return &hs[i] }); !ok {
			b.Fatal("not held")
		}
	}
	in := &intake{queue: make(chan *held, 1000), freed: make(chan struct{}, 1)}
	b.SetBytes(int64(len(msgs[0].data)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := range hs {
			in.queue <- &hs[i]
		}
		close(in.queue)
	}()
	var wg sync.WaitGroup
	for _, l := range w.ord.lanes {
		wg.Go(func() { w.ord.runLane(context.Background(), l) })
	}
	w.read(context.Background(), in, leases, nil)
	w.ord.close()
	wg.Wait()
	b.StopTimer()
	if n := leases.len(); n != 0 {
		b.Fatalf("%d calls still leased", n)
	}
}
