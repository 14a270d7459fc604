package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
)

// TestSlabRefs: a slab goes back to its pool only when the reader and
// every call prepared into it have let go, and a released one is what the
// next get returns.
func TestSlabRefs(t *testing.T) {
	p := newSlabs()
	s := p.get(0)
	a, b := &held{slab: s}, &held{slab: s}
	s.hold()
	s.hold()
	s.release(1) // the reader moves on
	releaseCalls([]*held{a})
	if len(p.free) != 0 {
		t.Fatal("slab recycled while a call still uses it")
	}
	releaseCalls([]*held{a}) // a second release of a settled call drops nothing
	if len(p.free) != 0 {
		t.Fatal("releasing a call twice recycled the slab")
	}
	releaseCalls([]*held{b})
	if len(p.free) != 1 {
		t.Fatal("slab not recycled once its last call was released")
	}
	if got := p.get(0); got != s || len(got.buf) != 0 || got.refs.Load() != 1 {
		t.Errorf("get after release: %p (len %d, refs %d), want the released slab %p, empty, held once", got, len(got.buf), got.refs.Load(), s)
	}
	if big := p.get(slabSize + 1); big.pool != nil {
		t.Error("a slab larger than slabSize would be kept for reuse")
	}
	if p.made.Load() != 2 {
		t.Errorf("%d slabs made, want 2", p.made.Load())
	}
	var none *slabs // no pool: nothing recycled
	if s := none.get(0); s.pool != nil {
		t.Error("a slab from a nil pool is recycled")
	}
}

// TestRecycledSlabsKeepEveryCallIntact: two workers with different send
// concurrency share the batch consumer and drain many times their slabs'
// worth of calls, some of which Customer.io refuses (so batches are split
// in halves, rebuilt from the calls' bytes after many more slabs were
// taken, and the refused calls dead-lettered) and some of which are not
// JSON. Every good call must reach Customer.io exactly once and byte for
// byte what was published, while the workers allocate a fraction of the
// slabs they fill.
func TestRecycledSlabsKeepEveryCallIntact(t *testing.T) {
	const (
		calls  = 12000
		padLen = 1200
	)
	_, js := natstest.Start(t).Connect(t)
	ctx := t.Context()
	var sender *fakeSender
	sender = &fakeSender{respond: func(ctx context.Context, n int, body []byte) error {
		if !strings.Contains(string(body), "refused") {
			return nil
		}
		// A refusal of a large batch is answered late, once other
		// requests went, so its halves are rebuilt after the reader has
		// filled more slabs.
		deadline := time.Now().Add(200 * time.Millisecond)
		for len(body) > 50_000 && sender.requests() < n+8 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(time.Millisecond) // the other requests are the event; they come from another worker
		}
		return statusErr("cdp", 400)
	}}
	var workers []*Worker
	for _, conc := range []int{1, 4} {
		w, err := New(js, sender, Options{ManageStreams: true, SendConcurrency: conc, FlushInterval: 20 * time.Millisecond,
			ShutdownTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		workers = append(workers, w)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, len(workers))
	for _, w := range workers {
		wg.Go(func() { errs <- w.Run(runCtx) })
		deadline := time.Now().Add(10 * time.Second)
		for ok, _ := w.Ready(); !ok; ok, _ = w.Ready() {
			if time.Now().After(deadline) {
				t.Fatal("worker not ready in 10s")
			}
			time.Sleep(10 * time.Millisecond) // Ready has no event to await
		}
	}
	want := map[string]string{} // event → pad, the good calls
	var badRefused, badJSON int
	for i := range calls {
		name := fmt.Sprintf("E%d", i)
		pad := strings.Repeat(string(rune('a'+i%26)), padLen+i%97)
		body := fmt.Sprintf(`{"type":"track","userId":"u%d","event":%q,"properties":{"pad":%q}}`, i, name, pad)
		switch {
		case i%997 == 500:
			body, badJSON = `{"type":"track",`+body, badJSON+1
		case i%499 == 250:
			body, badRefused = strings.Replace(body, `"pad"`, `"refused":true,"pad"`, 1), badRefused+1
		default:
			want[name] = pad
		}
		if _, err := js.PublishAsync("cio.track", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	publishedAndSettled(t, js)
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	}

	got := map[string]int{}
	for _, b := range sender.bodies {
		if strings.Contains(b, "refused") {
			continue // answered 400: split until the refused call is alone
		}
		var batch struct {
			Batch []struct {
				Event      string            `json:"event"`
				Properties map[string]string `json:"properties"`
			} `json:"batch"`
		}
		if err := json.Unmarshal([]byte(b), &batch); err != nil {
			t.Fatalf("a delivered body is not JSON (a call overwritten?): %v", err)
		}
		for _, c := range batch.Batch {
			if pad, ok := want[c.Event]; !ok || c.Properties["pad"] != pad {
				t.Fatalf("delivered call %q with a pad of %d bytes, not the one published (%d bytes)", c.Event, len(c.Properties["pad"]), len(pad))
			}
			got[c.Event]++
		}
	}
	twice := 0
	for name := range want {
		switch got[name] {
		case 0:
			t.Errorf("call %s never delivered", name)
		case 1:
		default:
			twice++
		}
	}
	if twice > 0 {
		t.Errorf("%d of %d calls delivered more than once", twice, len(want))
	}
	reasons := dlqReasons(t, js)
	if n := strings.Count(strings.Join(reasons, " "), string(deadletter.ReasonRejected)); n != badRefused || len(reasons) != badRefused+badJSON {
		t.Errorf("dead letters %q, want %d rejected and %d invalid JSON", reasons, badRefused, badJSON)
	}
	var made int64
	for _, w := range workers {
		made += w.slabs.made.Load()
	}
	filled := calls * (padLen + 200) / slabSize
	if made*2 > int64(filled) {
		t.Errorf("%d slabs allocated for about %d slabs' worth of calls: not recycled", made, filled)
	}
	t.Logf("%d slabs allocated for about %d slabs' worth of calls; %d requests", made, filled, sender.requests())
}

// publishedAndSettled waits for every async publish to be acknowledged,
// then for the worker to settle the whole stream.
func publishedAndSettled(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishes not acknowledged in 30s")
	}
	settledAll(t, js, DefaultStream)
}
