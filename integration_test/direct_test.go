package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// speedup makes the stand-in's clock run this many times faster than the
// wall clock, so Customer.io's 10-second pacing per broadcast is exercised
// in a second of test time. The worker paces at 10s/speedup.
const speedup = 10

// TestDirectCalls sends a burst of 50 broadcast triggers across 3 broadcasts,
// two invalid triggers and suppressions with tricky identifiers through real
// NATS and the worker, against the stand-in's App and Track APIs.
func TestDirectCalls(t *testing.T) {
	base := time.Now()
	scaled := func() time.Time { return base.Add(time.Since(base) * speedup) }
	e := newEnv(t, ciotest.Options{AppKey: "app-key", SiteID: "site-1", TrackKey: "track-key", Now: scaled})

	client := sink.NewHTTPClient(4, 5*time.Second)
	app, err := sink.NewApp(sink.AppOptions{URL: e.cio.AppURL(), APIKey: func() string { return "app-key" }, UserAgent: "test", Client: client})
	if err != nil {
		t.Fatal(err)
	}
	track, err := sink.NewTrack(sink.TrackOptions{URL: e.cio.TrackURL(), SiteID: "site-1", APIKey: func() string { return "track-key" }, UserAgent: "test", Client: client})
	if err != nil {
		t.Fatal(err)
	}
	e.startWorker(t, worker.Options{
		App: app, Track: track,
		BroadcastInterval: trigger10s / speedup,
		FlushInterval:     20 * time.Millisecond,
		RetryInitial:      10 * time.Millisecond, RetryMaxInterval: 100 * time.Millisecond,
	})

	// 50 triggers: most coalescable (same data, ignore-missing set), some
	// with their own data (never merged), some by email.
	want := map[int64][]string{} // broadcast → every recipient that must be triggered
	var msgs []published
	for i := range 50 {
		b := int64(1 + i%3)
		var body string
		switch {
		case i%10 == 9:
			body = fmt.Sprintf(`{"broadcast_id":%d,"ids":["u-%d"],"id_ignore_missing":true,"data":{"n":%d}}`, b, i, i)
			want[b] = append(want[b], fmt.Sprintf("u-%d", i))
		case i%7 == 0:
			body = fmt.Sprintf(`{"broadcast_id":%d,"emails":["p%d@x.io"],"email_ignore_missing":true,"data":{"promo":"<b>&"}}`, b, i)
			want[b] = append(want[b], fmt.Sprintf("p%d@x.io", i))
		default:
			body = fmt.Sprintf(`{"broadcast_id":%d,"ids":["u-%d"],"id_ignore_missing":true,"data":{"promo":"<b>&"}}`, b, i)
			want[b] = append(want[b], fmt.Sprintf("u-%d", i))
		}
		msgs = append(msgs, published{subject: worker.SubjectBroadcast, body: []byte(body), key: fmt.Sprintf("t-%d", i), valid: true})
	}
	invalid := []published{
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":1,"data":{}}`), key: "no-audience"},
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":2,"ids":["a"],"emails":["a@x.io"]}`), key: "two-audiences"},
	}
	supps := []struct{ subject, id string }{
		{worker.SubjectSuppress, "a+b@x.io"},
		{worker.SubjectUnsuppress, "ünï/cödé"},
		{worker.SubjectSuppress, "cio_abc123"},
	}
	for _, s := range supps {
		body, _ := json.Marshal(map[string]string{"identifier": s.id})
		msgs = append(msgs, published{subject: s.subject, body: body, valid: true})
	}
	msgs = append(msgs, invalid...)
	published := scaled()
	e.publishAll(t, msgs)

	// Every recipient triggered: wait for the stand-in to have seen them all.
	waitFor(t, 60*time.Second, "all 50 triggers to reach the stand-in", func() bool {
		n := 0
		for _, tr := range e.cio.Triggers() {
			n += len(recipients(t, tr.Body))
		}
		return n >= 50
	})
	for _, name := range []string{"cio-relay-broadcast", "cio-relay-suppress"} {
		waitFor(t, 30*time.Second, name+" to settle everything", func() bool {
			c, err := e.js.Consumer(context.Background(), "CIO", name)
			if err != nil {
				return false
			}
			info, err := c.Info(context.Background())
			return err == nil && info.NumPending == 0 && info.NumAckPending == 0
		})
	}

	got := map[int64][]string{}
	last := map[int64]time.Time{}
	var maxWait time.Duration
	for _, tr := range e.cio.Triggers() {
		if prev, ok := last[tr.BroadcastID]; ok {
			gap := tr.Time.Sub(prev)
			if gap < trigger10s {
				t.Errorf("broadcast %d called twice within %v (stand-in clock)", tr.BroadcastID, gap)
			}
			maxWait = max(maxWait, gap)
		}
		last[tr.BroadcastID] = tr.Time
		got[tr.BroadcastID] = append(got[tr.BroadcastID], recipients(t, tr.Body)...)
	}
	for b, w := range want {
		g := slices.Clone(got[b])
		sort.Strings(g)
		sort.Strings(w)
		if !slices.Equal(g, w) {
			t.Errorf("broadcast %d triggered for %v, want each of %v exactly once", b, g, w)
		}
	}
	st := e.cio.Stats()
	requests := len(e.cio.Triggers())
	if requests >= 50 {
		t.Errorf("%d trigger requests for 50 triggers: nothing was coalesced", requests)
	}
	var longest time.Duration // publish to the request that carried a broadcast's last trigger
	for _, at := range last {
		longest = max(longest, at.Sub(published))
	}
	t.Logf("50 triggers across 3 broadcasts: %d requests, %d answered 429, longest gap between requests of one broadcast %v, "+
		"longest wait from publish to request %v (stand-in clock, 10s per broadcast)", requests, st.RateLimited, maxWait.Round(time.Millisecond), longest.Round(time.Millisecond))

	reasons, dead := dlqReasons(t, e)
	if reasons["audience"] != 2 || dead != 2 {
		t.Errorf("dead letters by reason %v, want exactly the 2 invalid audiences", reasons)
	}
	if n := len(e.cio.Triggers()); n == 0 {
		t.Fatal("no triggers")
	}

	var gotSupps []string
	for _, s := range e.cio.Suppressions() {
		gotSupps = append(gotSupps, s.Action+" "+s.Identifier)
	}
	var wantSupps []string
	for _, s := range supps {
		action := "suppress"
		if s.subject == worker.SubjectUnsuppress {
			action = "unsuppress"
		}
		wantSupps = append(wantSupps, action+" "+s.id)
	}
	sort.Strings(gotSupps)
	sort.Strings(wantSupps)
	if !slices.Equal(gotSupps, wantSupps) {
		t.Errorf("suppressions %q, want %q", gotSupps, wantSupps)
	}
}

const trigger10s = 10 * time.Second

// recipients returns the ids or emails a trigger body names.
func recipients(t *testing.T, body []byte) []string {
	t.Helper()
	var b struct {
		IDs    []json.RawMessage `json:"ids"`
		Emails []string          `json:"emails"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("trigger body: %v", err)
	}
	out := slices.Clone(b.Emails)
	for _, id := range b.IDs {
		var s string
		if json.Unmarshal(id, &s) != nil {
			s = string(id)
		}
		out = append(out, s)
	}
	return out
}

// dlqReasons counts the dead-letter stream's messages by reason.
func dlqReasons(t *testing.T, e *env) (map[string]int, int) {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, "CIO_DLQ")
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reasons, n := map[string]int{}, 0
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		r, err := deadletter.ParseRecord(m.Header)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		reasons[string(r.Reason)]++
		n++
	}
	return reasons, n
}

// TestTriggerNeverSentTwice: a trigger whose request may have reached
// Customer.io (connection reset after sending) is dead-lettered as ambiguous
// after one request, never retried; a trigger for a broadcast Customer.io
// does not know (404) is dead-lettered as rejected, and nothing pauses.
func TestTriggerNeverSentTwice(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Fault: func(r *ciotest.Request) *ciotest.Fault {
		switch {
		case strings.Contains(r.Path, "/campaigns/1/"):
			return &ciotest.Fault{Reset: true}
		case strings.Contains(r.Path, "/campaigns/2/"):
			return &ciotest.Fault{Status: 404, Body: `{"meta":{"error":"not found"}}`}
		}
		return nil
	}})
	app, err := sink.NewApp(sink.AppOptions{URL: e.cio.AppURL(), APIKey: func() string { return "app-key" }, UserAgent: "test",
		Client: sink.NewHTTPClient(2, 5*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := e.runWorker(t, worker.Options{App: app, BroadcastInterval: 10 * time.Millisecond,
		RetryInitial: 10 * time.Millisecond, RetryMaxInterval: 50 * time.Millisecond}, 0)
	e.publishAll(t, []published{
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":1,"ids":["a"]}`)},
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":2,"ids":["b"]}`)},
	})
	waitFor(t, 20*time.Second, "both triggers dead-lettered", func() bool {
		_, n := dlqReasons(t, e)
		return n == 2
	})
	reasons, _ := dlqReasons(t, e)
	if reasons["ambiguous"] != 1 || reasons["rejected"] != 1 {
		t.Errorf("dead letters by reason %v, want one ambiguous and one rejected", reasons)
	}
	perBroadcast := map[string]int{}
	for _, r := range e.cio.Requests() {
		perBroadcast[r.Path]++
	}
	for path, n := range perBroadcast {
		if n != 1 {
			t.Errorf("%s requested %d times, want once", path, n)
		}
	}
	if ok, why := w.Ready(); !ok {
		t.Errorf("worker not ready after a 404 for an unknown broadcast: %s", why)
	}
}

// TestTriggerCutOffAtShutdownIsAmbiguous: a trigger request still in flight
// when the shutdown timeout ends may have been acted on; it is dead-lettered
// as ambiguous rather than nakked for another replica to send again.
func TestTriggerCutOffAtShutdownIsAmbiguous(t *testing.T) {
	var arrived atomic.Int32
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Fault: func(*ciotest.Request) *ciotest.Fault {
		arrived.Add(1)
		return &ciotest.Fault{Delay: 30 * time.Second, Slow: true}
	}})
	app, err := sink.NewApp(sink.AppOptions{URL: e.cio.AppURL(), APIKey: func() string { return "app-key" }, UserAgent: "test",
		Client: sink.NewHTTPClient(1, time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(e.js, sink.NewDryRun(io.Discard), worker.Options{ManageStreams: true, App: app, ShutdownTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, 10*time.Second, "the worker to be ready", func() bool { ok, _ := w.Ready(); return ok })
	e.publishAll(t, []published{{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":5,"ids":["a"]}`)}})
	waitFor(t, 10*time.Second, "the trigger request in flight", func() bool { return arrived.Load() == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	reasons, n := dlqReasons(t, e)
	if n != 1 || reasons["ambiguous"] != 1 {
		t.Fatalf("dead letters %v, want the cut-off trigger as ambiguous", reasons)
	}
}
