package integration_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/worker"
)

// countingApp is a Triggerer that accepts every request and keeps nothing
// of it. The stand-in keeps every body it receives, which would hide what
// the worker itself keeps.
type countingApp struct{ n atomic.Int64 }

func (a *countingApp) Trigger(_ context.Context, _ int64, _ []byte) (int64, error) {
	return a.n.Add(1), nil
}

// TestSettledTriggersAreReleased sends 60 triggers of 400 KB each, waits
// until every one is acked, and collects garbage: what the worker still
// holds must be far less than the triggers themselves (24 MB), since
// nothing of a settled trigger is needed any more. Records carved from a
// shared block lived until the block was used up, which on the trigger
// path can take hours.
func TestSettledTriggersAreReleased(t *testing.T) {
	const (
		triggers = 60
		size     = 400_000 // bytes per trigger, about
	)
	e := newEnv(t, ciotest.Options{})
	app := &countingApp{}
	opts := fastOptions()
	opts.App = app
	opts.BroadcastInterval = 10 * time.Millisecond
	e.runWorker(t, opts, 0)

	before := heapAfterGC()
	func() {
		msgs := make([]published, triggers)
		for i := range msgs {
			// 10,000 ids of 40 bytes, Customer.io's cap on recipients.
			var b strings.Builder
			fmt.Fprintf(&b, `{"broadcast_id":%d,"ids":[`, 1+i)
			for j := range 10_000 {
				if j > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"t%02d-%05d-%s"`, i, j, strings.Repeat("x", 28))
			}
			b.WriteString("]}")
			msgs[i] = published{subject: worker.SubjectBroadcast, body: []byte(b.String())}
		}
		e.publishAll(t, msgs)
	}()
	waitFor(t, 30*time.Second, "every trigger sent", func() bool { return app.n.Load() >= triggers })
	waitFor(t, 30*time.Second, "every trigger acked", func() bool {
		c, err := e.js.Consumer(context.Background(), "CIO", "cio-relay-broadcast")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	after := heapAfterGC()
	grown := int64(after) - int64(before)
	t.Logf("%d × %d KB triggers acked: heap %d MB before, %d MB after (+%d MB; the triggers total %d MB)",
		triggers, size/1000, before>>20, after>>20, grown>>20, triggers*size>>20)
	// An in-process NATS server shares the heap and caches the stream's
	// recent blocks (16-24 MB here); the worker itself needs nothing of a
	// settled trigger. Records kept alive by their block cost about 150 MB.
	if limit := int64(2 * triggers * size); grown > limit {
		t.Errorf("heap grew by %d MB after every trigger was settled; want less than %d MB, twice what the triggers take, as nothing of them is needed any more",
			grown>>20, limit>>20)
	}
}

// heapAfterGC returns the live heap once garbage has been collected.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
