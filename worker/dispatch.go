package worker

import (
	"context"
	"sync"

	"github.com/cio-relay/cio-relay/batcher"
)

// dispatch runs up to SendConcurrency deliveries at once. While all are busy
// it does not receive, which stops the batcher and, through it, the reader.
func (w *Worker) dispatch(ctx context.Context, batches <-chan *batcher.Batch[*held], leases *leases[*held]) {
	sem := make(chan struct{}, w.opts.SendConcurrency)
	var wg sync.WaitGroup
	for batch := range batches {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			w.m.inFlight.Inc()
			defer w.m.inFlight.Dec()
			defer leases.remove(batch.Items...)
			w.send(ctx, batch.Items, batch.Body())
			// The sender is done with the body (see Sender), and the calls
			// point into the reader's slabs, not into it: recycle it. And
			// send has settled every call (halves and dead letters
			// included): recycle their slabs too.
			batch.Release()
			releaseCalls(batch.Items)
		})
	}
	wg.Wait()
}
