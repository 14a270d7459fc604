package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
)

// TestOrderedRecycledSlabsKeepEveryCallIntact is
// TestRecycledSlabsKeepEveryCallIntact for the ordered path, where calls
// wait in lanes and wait lists and are let go from many places (see
// ordered.letGo). MaxAckPending bounds what the worker holds to a few
// slabs, so the reader writes over recycled slabs all the time: while
// batches are answered 5xx (nakked, their keys blocked, their later calls
// set aside at send time and released behind the redelivery, a batch with
// a redelivered call split in halves), 400 (split until the refused call
// is alone, the halves rebuilt from the calls' bytes) and late. Every
// accepted call must be byte for byte what was published, each good call
// accepted once; a slab released while a
// call in it can still be sent or split fails it.
func TestOrderedRecycledSlabsKeepEveryCallIntact(t *testing.T) {
	const (
		calls  = 12000
		users  = 64 // few enough that keys are blocked often
		padLen = 1200
	)
	_, js := natstest.Start(t).Connect(t)
	ctx := t.Context()
	var (
		mu       sync.Mutex
		accepted []string
	)
	sender := &fakeSender{respond: func(ctx context.Context, n int, body []byte) error {
		var err error
		switch {
		case strings.Contains(string(body), "refused"):
			err = statusErr("cdp", 400)
		case n%11 == 5:
			err = statusErr("cdp", 503)
		}
		if n%5 == 2 || err != nil {
			// Answered late, so other lanes go on and the reader fills
			// recycled slabs before this batch's halves or redelivery.
			select {
			case <-time.After(30 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err == nil {
			mu.Lock()
			accepted = append(accepted, string(body))
			mu.Unlock()
		}
		return err
	}}
	w, err := New(js, sender, Options{ManageStreams: true, Ordering: true, MaxAckPending: 2000, SendConcurrency: 4,
		BatchMaxCalls: 300, FlushInterval: 20 * time.Millisecond, NoRetry: true, NakDelay: 20 * time.Millisecond,
		MaxDeliver: 1000, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	errs := make(chan error, 1)
	go func() { errs <- w.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-errs; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// Published once the stream exists, so stream order is publish order.
	deadline := time.Now().Add(10 * time.Second)
	for ok, _ := w.Ready(); !ok; ok, _ = w.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("worker not ready in 10s")
		}
		time.Sleep(10 * time.Millisecond) // Ready has no event to await
	}

	want := map[string]string{} // event → pad, the good calls
	refused := 0
	for i := range calls {
		name := fmt.Sprintf("E%d", i)
		pad := strings.Repeat(string(rune('a'+i%26)), padLen+i%97)
		body := fmt.Sprintf(`{"type":"track","userId":"u%d","event":%q,"properties":{"i":%d,"pad":%q}}`, i%users, name, i, pad)
		if i%499 == 250 {
			body, refused = strings.Replace(body, `"pad"`, `"refused":true,"pad"`, 1), refused+1
		} else {
			want[name] = pad
		}
		if _, err := js.PublishAsync("cio.track", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	publishedAndSettled(t, js)

	mu.Lock()
	defer mu.Unlock()
	got := map[string]int{}
	last := map[string]int{} // user → the latest call (i) accepted
	outOfOrder := 0
	for _, b := range accepted {
		var batch struct {
			Batch []struct {
				UserID     string `json:"userId"`
				Event      string `json:"event"`
				Properties struct {
					I   int    `json:"i"`
					Pad string `json:"pad"`
				} `json:"properties"`
			} `json:"batch"`
		}
		if err := json.Unmarshal([]byte(b), &batch); err != nil {
			t.Fatalf("an accepted body is not JSON (a call overwritten?): %v", err)
		}
		for _, c := range batch.Batch {
			if pad, ok := want[c.Event]; !ok || c.Properties.Pad != pad || c.Event != fmt.Sprintf("E%d", c.Properties.I) {
				t.Fatalf("accepted call %q (i %d) with a pad of %d bytes, not the one published (%d bytes)",
					c.Event, c.Properties.I, len(c.Properties.Pad), len(pad))
			}
			got[c.Event]++
			// Each good call is accepted once (checked below): every
			// acceptance is a first, and a user's must come in order.
			if prev, ok := last[c.UserID]; ok && c.Properties.I < prev {
				outOfOrder++
			}
			last[c.UserID] = max(last[c.UserID], c.Properties.I)
		}
	}
	if outOfOrder > 0 {
		t.Errorf("%d calls accepted after a later call of their user", outOfOrder)
	}
	missing, twice := 0, 0
	for name := range want {
		switch got[name] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	if missing+twice > 0 {
		t.Errorf("of %d good calls, %d never accepted and %d accepted more than once", len(want), missing, twice)
	}
	reasons := dlqReasons(t, js)
	if n := strings.Count(strings.Join(reasons, " "), string(deadletter.ReasonRejected)); n != refused || len(reasons) != refused {
		t.Errorf("dead letters %q, want %d rejected", reasons, refused)
	}
	made := w.slabs.made.Load()
	filled := calls * (padLen + 200) / slabSize
	// Not recycled, made would be filled and more (redelivered calls are
	// prepared again), or nothing (slabs from no pool are not counted);
	// 27–39 were made in runs that recycled. Fewer than filled shows that
	// calls were prepared into slabs others had used.
	if made == 0 || made >= int64(filled) {
		t.Errorf("%d slabs allocated for about %d slabs' worth of calls: not recycled", made, filled)
	}
	t.Logf("%d slabs allocated for about %d slabs' worth of calls; %d requests, %d accepted", made, filled, sender.requests(), len(accepted))
}
