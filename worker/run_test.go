package worker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/sink"
)

// fakeDirect stands in for the App and Track APIs: it records every
// request and answers what respond says (nil: 2xx).
type fakeDirect struct {
	respond func(op, arg string) error
	mu      sync.Mutex
	calls   []string
}

func (f *fakeDirect) do(op, arg string) error {
	f.mu.Lock()
	f.calls = append(f.calls, op+" "+arg)
	f.mu.Unlock()
	if f.respond != nil {
		return f.respond(op, arg)
	}
	return nil
}

func (f *fakeDirect) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(slices.Values(f.calls))
}

func (f *fakeDirect) Trigger(_ context.Context, id int64, body []byte) (int64, error) {
	return 42, f.do("trigger", fmt.Sprintf("%d %s", id, body))
}
func (f *fakeDirect) Suppress(_ context.Context, id string) error   { return f.do("suppress", id) }
func (f *fakeDirect) Unsuppress(_ context.Context, id string) error { return f.do("unsuppress", id) }
func (f *fakeDirect) Unsubscribe(_ context.Context, u sink.Unsubscribe) error {
	return f.do("unsubscribe", fmt.Sprintf("%s %v", u.DeliveryID, u.Unsubscribe))
}
func (f *fakeDirect) ReportMetric(_ context.Context, body []byte) error {
	return f.do("metric", string(body))
}

// settledAll waits until every consumer of stream has nothing pending or
// unacknowledged.
func settledAll(t *testing.T, js jetstream.JetStream, stream string) {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(30 * time.Second)
	for {
		busy := ""
		st, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		names := st.ConsumerNames(ctx)
		n := 0
		for name := range names.Name() {
			n++
			c, err := js.Consumer(ctx, stream, name)
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.NumPending+uint64(info.NumAckPending) > 0 {
				busy = fmt.Sprintf("%s: %d pending, %d unacked", name, info.NumPending, info.NumAckPending)
			}
		}
		if busy == "" && n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled in 30s: %s", busy)
		}
		time.Sleep(20 * time.Millisecond) // polling the server: nothing to await
	}
}

// dlqReasons reads the dead-letter stream's reasons, sorted.
func dlqReasons(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx := t.Context()
	s, err := js.Stream(ctx, DefaultDLQStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rs []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, m.Header.Get(deadletter.HeaderReason))
	}
	slices.Sort(rs)
	return rs
}

// TestRunDeliversEveryKind runs a worker against a real server with fake
// Customer.io APIs and publishes every kind of message, good and bad: each
// ends delivered or dead-lettered with its reason, and nothing is left
// pending. Then the worker stops cleanly. Both batch pipelines (unordered
// and ordered) are run.
func TestRunDeliversEveryKind(t *testing.T) {
	for _, ordering := range []bool{false, true} {
		t.Run(fmt.Sprintf("ordering=%v", ordering), func(t *testing.T) {
			_, js := natstest.Start(t).Connect(t)
			ctx := t.Context()
			sender := &fakeSender{respond: func(_ context.Context, _ int, body []byte) error {
				if strings.Contains(string(body), "refused") {
					return statusErr("cdp", 400)
				}
				return nil
			}}
			direct := &fakeDirect{respond: func(op, arg string) error {
				if strings.Contains(arg, "refused") {
					return statusErr("track", 400)
				}
				return nil
			}}
			w, err := New(js, sender, Options{ManageStreams: true, Ordering: ordering, FlushInterval: 20 * time.Millisecond,
				BroadcastInterval: 10 * time.Millisecond, ShutdownTimeout: 5 * time.Second,
				App: direct, Track: direct, Delivery: direct})
			if err != nil {
				t.Fatal(err)
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- w.Run(runCtx) }()
			// Publish once the worker has made the streams.
			deadline := time.Now().Add(10 * time.Second)
			for ok, _ := w.Ready(); !ok; ok, _ = w.Ready() {
				if time.Now().After(deadline) {
					t.Fatal("worker not ready in 10s")
				}
				time.Sleep(10 * time.Millisecond)
			}
			for _, m := range []struct{ subject, body string }{
				{"cio.track", `{"userId":"u1","event":"A"}`},
				{"cio.identify", `{"userId":"u2","traits":{"plan":"pro"}}`},
				{"cio.track", `{"userId":"u3","event":"refused"}`},
				{"cio.track", `{not json`},
				{SubjectBroadcast, `{"broadcast_id":7,"ids":["a"],"id_ignore_missing":true}`},
				{SubjectBroadcast, `{"broadcast_id":"x"}`},
				{SubjectSuppress, `{"identifier":"a@x.io"}`},
				{SubjectUnsuppress, `{"identifier":"a@x.io"}`},
				{SubjectSuppress, `{"identifier":"refused@x.io"}`},
				{SubjectUnsubscribe, `{"delivery_id":"d1"}`},
				{SubjectMetric, `{"delivery_id":"d3","metric":"clicked","timestamp":1700000000}`},
				{SubjectMetric, `{"delivery_id":"d4"}`},
			} {
				if _, err := js.Publish(ctx, m.subject, []byte(m.body)); err != nil {
					t.Fatal(err)
				}
			}
			settledAll(t, js, DefaultStream)
			stop()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			var delivered []string
			for _, b := range sender.bodies {
				for _, u := range []string{"u1", "u2", "u3"} {
					if strings.Contains(b, `"`+u+`"`) && !strings.Contains(b, "refused") {
						delivered = append(delivered, u)
					}
				}
			}
			if slices.Sort(delivered); !slices.Equal(slices.Compact(delivered), []string{"u1", "u2"}) {
				t.Errorf("delivered %v in %q, want u1 and u2", delivered, sender.bodies)
			}
			wantDirect := []string{
				`metric {"delivery_id":"d3","metric":"clicked","timestamp":1700000000}`,
				"suppress a@x.io", "suppress refused@x.io",
				`trigger 7 {"ids":["a"],"id_ignore_missing":true}`,
				"unsubscribe d1 true", "unsuppress a@x.io",
			}
			if got := direct.got(); !slices.Equal(got, wantDirect) {
				t.Errorf("direct calls\n%q\nwant\n%q", got, wantDirect)
			}
			want := []string{"invalid_broadcast_id", "invalid_json", "invalid_metric", string(deadletter.ReasonRejected), string(deadletter.ReasonRejected)}
			if got := dlqReasons(t, js); !slices.Equal(got, want) {
				t.Errorf("dead letters %q, want %q", got, want)
			}
		})
	}
}

// TestHardStopHandsBatchesToAnotherWorker: two workers share the batch
// consumer; one is stopped while Customer.io holds its requests. Its drain
// waits ShutdownTimeout (a short one here, unlike the other worker's), then
// the hard stop cuts the requests off and naks its calls at once, so the
// other worker delivers them long before their ack wait (a minute) would
// have ended; the stopped worker's Run returns nil.
func TestHardStopHandsBatchesToAnotherWorker(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx := t.Context()
	held := make(chan struct{}, 100)
	stuck := &fakeSender{respond: func(ctx context.Context, _ int, _ []byte) error {
		held <- struct{}{}
		<-ctx.Done() // Customer.io never answers
		return ctx.Err()
	}}
	delivered := make(chan string, 100)
	healthy := &fakeSender{respond: func(_ context.Context, _ int, body []byte) error {
		delivered <- string(body)
		return nil
	}}
	start := func(s Sender, shutdown time.Duration) (stop func() error) {
		w, err := New(js, s, Options{ManageStreams: true, AckWait: time.Minute, FlushInterval: 20 * time.Millisecond,
			ShutdownTimeout: shutdown, RetryMaxElapsed: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(runCtx) }()
		deadline := time.Now().Add(10 * time.Second)
		for ok, _ := w.Ready(); !ok; ok, _ = w.Ready() {
			if time.Now().After(deadline) {
				t.Fatal("worker not ready in 10s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		return func() error { cancel(); return <-done }
	}
	stopStuck := start(stuck, 300*time.Millisecond)
	const n = 20
	for i := range n {
		if _, err := js.Publish(ctx, "cio.track", fmt.Appendf(nil, `{"userId":"u%d","event":"e"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-held: // the stuck worker has the calls in flight
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck worker sent nothing")
	}
	stopHealthy := start(healthy, 0)
	defer func() {
		if err := stopHealthy(); err != nil {
			t.Error(err)
		}
	}()
	stopped := time.Now()
	if err := stopStuck(); err != nil {
		t.Fatalf("stopped worker's Run: %v", err)
	}
	if d := time.Since(stopped); d < 300*time.Millisecond {
		t.Fatalf("stopped after %v, before its shutdown timeout: no drain", d)
	}
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case body := <-delivered:
			for i := range n {
				if strings.Contains(body, fmt.Sprintf(`"u%d"`, i)) {
					seen[fmt.Sprint(i)] = true
				}
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("the other worker delivered %d of %d within 20s of the hard stop (ack wait 1m)", len(seen), n)
		}
	}
	t.Logf("all %d calls delivered by the other worker %v after the stop", n, time.Since(stopped).Round(time.Millisecond))
}
