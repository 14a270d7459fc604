package integration_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// TestThreeReplicasPaceEachBroadcastGlobally: three replicas, started with
// different ack waits and concurrency as in a rolling deploy, share the
// broadcast consumer; 30 triggers over 3 broadcasts, none of which can be
// merged with another (each has its own data), so every one is a request
// of its own. However the consumer spreads them, no two requests for one
// broadcast may reach Customer.io within its 10 seconds (by the stand-in's
// clock, 10 times the wall clock's pace), and none is answered 429.
func TestThreeReplicasPaceEachBroadcastGlobally(t *testing.T) {
	base := time.Now()
	scaled := func() time.Time { return base.Add(time.Since(base) * speedup) }
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaled})

	replicas := []struct {
		name    string
		ackWait time.Duration
		direct  int
	}{
		{"replica-a", time.Second, 4},
		{"replica-b", 2 * time.Second, 1},
		{"replica-c", 3 * time.Second, 8},
	}
	var regs []*prometheus.Registry
	for _, r := range replicas {
		app, err := sink.NewApp(sink.AppOptions{URL: e.cio.AppURL(), APIKey: func() string { return "app-key" }, UserAgent: r.name,
			Client: sink.NewHTTPClient(4, 5*time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		o := fastOptions()
		o.App = app
		o.BroadcastInterval = trigger10s / speedup
		o.AckWait = r.ackWait
		o.DirectConcurrency = r.direct
		o.TriggerTimeout = 5 * time.Second // the client's
		_, js := e.nats.Connect(t)         // each replica its own connection
		_, reg := runWorkerOn(t, js, o)
		regs = append(regs, reg)
	}

	const broadcasts, perBroadcast = 3, 10
	var msgs []published
	for i := range broadcasts * perBroadcast {
		msgs = append(msgs, published{subject: worker.SubjectBroadcast,
			body: fmt.Appendf(nil, `{"broadcast_id":%d,"ids":["u-%d"],"id_ignore_missing":true,"data":{"n":%d}}`, 1+i/perBroadcast, i, i)})
	}
	e.publishAll(t, msgs)
	waitBroadcastSettled(t, e, 90*time.Second)

	times := map[int64][]time.Time{}      // broadcast → arrival of every request, stand-in clock
	by := map[string]int{}                // replica → requests
	shared := map[int64]map[string]bool{} // broadcast → the replicas that sent for it
	rateLimited := 0
	for _, r := range e.cio.Requests() {
		if r.API != ciotest.APIApp {
			continue
		}
		var id int64
		if _, err := fmt.Sscanf(r.Path, "/v1/campaigns/%d/triggers", &id); err != nil {
			t.Fatalf("request to %s: %v", r.Path, err)
		}
		times[id] = append(times[id], r.Time)
		by[r.Header.Get("User-Agent")]++
		if shared[id] == nil {
			shared[id] = map[string]bool{}
		}
		shared[id][r.Header.Get("User-Agent")] = true
		if r.Status == 429 {
			rateLimited++
		}
	}
	close := 0
	minGap := time.Duration(1<<63 - 1)
	for id, ts := range times {
		slices.SortFunc(ts, time.Time.Compare)
		for i := 1; i < len(ts); i++ {
			gap := ts[i].Sub(ts[i-1])
			minGap = min(minGap, gap)
			if gap < trigger10s {
				close++
				t.Errorf("broadcast %d: requests %d and %d %v apart (stand-in clock), want at least %v", id, i, i+1, gap, trigger10s)
			}
		}
	}
	t.Logf("%d requests by replica %v, replicas per broadcast %v; %d answered 429; %d pairs of one broadcast closer than 10s; closest %v (stand-in clock)",
		len(e.cio.Requests()), by, shared, rateLimited, close, minGap)
	if rateLimited != 0 {
		t.Errorf("%d requests answered 429, want none", rateLimited)
	}
	for i, reg := range regs {
		if got := metricValue(t, reg, "cio_relay_broadcast_pacing_fallback_total"); got != 0 {
			t.Errorf("%s sent %v requests paced on its own, want none", replicas[i].name, got)
		}
		if got := metricValue(t, reg, "cio_relay_broadcast_pacing_global"); got != 1 {
			t.Errorf("%s: cio_relay_broadcast_pacing_global %v, want 1", replicas[i].name, got)
		}
	}
	accepted := acceptedPerBroadcast(e)
	for id := range int64(broadcasts) {
		if got := accepted[id+1]; got != perBroadcast {
			t.Errorf("broadcast %d accepted %d triggers, want %d", id+1, got, perBroadcast)
		}
	}
	for id, names := range shared {
		if len(names) < 2 {
			t.Errorf("broadcast %d was sent for by %d replica: the test did not make the replicas share it", id, len(names))
		}
	}
}

// TestTriggersPacedPerReplicaWhenThePaceBucketIsGone: with the pacing
// bucket deleted under a running replica, triggers are still sent, each
// paced by the replica alone, counted as such, and the replica says it is
// no longer pacing globally.
func TestTriggersPacedPerReplicaWhenThePaceBucketIsGone(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaledClock()})
	w, reg := e.runWorker(t, triggerOptions(appClient(t, e)), 0)
	// runWorker waits for the batch consumer; the buckets are made after
	// it, so wait until the worker has bound everything.
	waitReady(t, w)
	ctx := context.Background()
	if err := e.js.DeleteKeyValue(ctx, worker.TurnsBucket("CIO")); err != nil {
		t.Fatal(err)
	}
	e.publishAll(t, []published{
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":4,"ids":["a"],"id_ignore_missing":true,"data":{"n":1}}`)},
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":4,"ids":["b"],"id_ignore_missing":true,"data":{"n":2}}`)},
	})
	waitBroadcastSettled(t, e, 30*time.Second)
	if got := acceptedPerBroadcast(e)[4]; got != 2 {
		t.Errorf("broadcast 4 accepted %d triggers, want 2", got)
	}
	if got := metricValue(t, reg, "cio_relay_broadcast_pacing_fallback_total"); got != 2 {
		t.Errorf("%v requests counted as paced per replica, want 2", got)
	}
	if got := metricValue(t, reg, "cio_relay_broadcast_pacing_global"); got != 0 {
		t.Errorf("cio_relay_broadcast_pacing_global %v without the bucket, want 0", got)
	}
}

// TestWorkerStartsWithoutThePaceBucket: a replica that does not manage
// streams starts without the pacing bucket (unlike the marker bucket, it
// is not needed to send a trigger once), paces per replica and says how to
// create the bucket.
func TestWorkerStartsWithoutThePaceBucket(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaledClock()})
	ctx := context.Background()
	// A managing replica creates everything; the pacing bucket is then
	// deleted, as if it had never been created by hand.
	stop, _ := runWorkerOn(t, e.js, triggerOptions(appClient(t, e)))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.js.DeleteKeyValue(ctx, worker.TurnsBucket("CIO")); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	opts := triggerOptions(appClient(t, e))
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	w, err := worker.New(e.js, sink.NewDryRun(io.Discard), opts) // ManageStreams false
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker.Run: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "the worker to be ready", func() bool { ok, _ := w.Ready(); return ok })
	e.publishAll(t, []published{{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":5,"ids":["a"]}`)}})
	waitBroadcastSettled(t, e, 30*time.Second)
	if got := acceptedPerBroadcast(e)[5]; got != 1 {
		t.Errorf("broadcast 5 accepted %d times, want once", got)
	}
	if got := metricValue(t, reg, "cio_relay_broadcast_pacing_fallback_total"); got != 1 {
		t.Errorf("%v requests counted as paced per replica, want 1", got)
	}
	if out := logs.String(); !strings.Contains(out, "nats kv add CIO_PACE") || !strings.Contains(out, "RELAY_MANAGE_STREAMS=false") {
		t.Errorf("no warning saying how to create CIO_PACE in the log:\n%s", out)
	}
}
