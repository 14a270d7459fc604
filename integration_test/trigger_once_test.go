package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// Tests that a broadcast trigger reaches Customer.io at most once however
// its answer or its ack goes astray, and that a rejected merged request is
// bisected at the broadcast's pace.

// triggerSpeedup runs the stand-in's clock 100 times faster than the wall
// clock: Customer.io's 10 seconds per broadcast are 100 ms of test time, and
// the worker paces at 10s/triggerSpeedup.
const triggerSpeedup = 100

func scaledClock() func() time.Time {
	base := time.Now()
	return func() time.Time { return base.Add(time.Since(base) * triggerSpeedup) }
}

func appClient(t *testing.T, e *env) *sink.App {
	t.Helper()
	app, err := sink.NewApp(sink.AppOptions{URL: e.cio.AppURL(), APIKey: func() string { return "app-key" }, UserAgent: "test",
		Client: sink.NewHTTPClient(4, 5*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// triggerOptions are fast worker options for a trigger test.
func triggerOptions(app worker.Triggerer) worker.Options {
	o := fastOptions()
	o.App = app
	o.BroadcastInterval = trigger10s / triggerSpeedup
	o.AckWait = time.Second
	o.TriggerTimeout = 5 * time.Second // appClient's
	return o
}

// runWorkerOn runs a worker on js (which may reach NATS through a proxy)
// until stop is called or the test ends. Run's error is returned on the
// channel rather than failing the test: these tests break workers on
// purpose.
func runWorkerOn(t *testing.T, js jetstream.JetStream, opts worker.Options) (stop func() error, reg *prometheus.Registry) {
	t.Helper()
	opts.ManageStreams = true
	reg = prometheus.NewRegistry()
	opts.Registerer = reg
	w, err := worker.New(js, sink.NewDryRun(io.Discard), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = fmt.Errorf("worker did not stop within 30s")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	waitFor(t, 10*time.Second, "the worker to be ready", func() bool { ok, _ := w.Ready(); return ok })
	return stop, reg
}

// waitBroadcastSettled waits until the broadcast consumer has nothing
// pending and nothing unacknowledged.
func waitBroadcastSettled(t *testing.T, e *env, timeout time.Duration) {
	t.Helper()
	if !broadcastSettled(e, timeout) {
		t.Fatalf("cio-relay-broadcast did not settle every trigger within %v", timeout)
	}
}

// broadcastSettled reports whether the broadcast consumer, having delivered
// something, has nothing pending and nothing unacknowledged within timeout.
func broadcastSettled(e *env, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := e.js.Consumer(context.Background(), "CIO", "cio-relay-broadcast")
		if err != nil {
			continue
		}
		if info, err := c.Info(context.Background()); err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream > 0 {
			return true
		}
	}
	return false
}

// triggersByN counts the stand-in's accepted triggers by their data's n,
// which a test gives each trigger to tell them apart.
func triggersByN(t *testing.T, e *env) map[int]int {
	t.Helper()
	sent := map[int]int{}
	for _, tr := range e.cio.Triggers() {
		var b struct {
			Data struct{ N int } `json:"data"`
		}
		if err := json.Unmarshal(tr.Body, &b); err != nil {
			t.Fatalf("trigger body %s: %v", tr.Body, err)
		}
		sent[b.Data.N]++
	}
	return sent
}

// acceptedPerBroadcast counts the stand-in's accepted triggers by broadcast.
func acceptedPerBroadcast(e *env) map[int64]int {
	n := map[int64]int{}
	for _, tr := range e.cio.Triggers() {
		n[tr.BroadcastID]++
	}
	return n
}

// TestTriggerAnswered502Or504IsAmbiguous: a gateway error may come after
// Customer.io acted on the trigger, so it is not retried: the trigger is
// dead-lettered as ambiguous after one request. A 503 is Customer.io saying
// it did not take the request, and is retried.
func TestTriggerAnswered502Or504IsAmbiguous(t *testing.T) {
	var once503 atomic.Bool
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaledClock(), Fault: func(r *ciotest.Request) *ciotest.Fault {
		switch {
		case strings.Contains(r.Path, "/campaigns/1/"):
			return &ciotest.Fault{Status: 502, Body: "<html>502 Bad Gateway</html>"}
		case strings.Contains(r.Path, "/campaigns/2/"):
			return &ciotest.Fault{Status: 504, Body: "<html>504 Gateway Time-out</html>"}
		case strings.Contains(r.Path, "/campaigns/3/") && once503.CompareAndSwap(false, true):
			return &ciotest.Fault{Status: 503}
		}
		return nil
	}})
	e.runWorker(t, triggerOptions(appClient(t, e)), 0)
	e.publishAll(t, []published{
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":1,"ids":["a"]}`)},
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":2,"ids":["b"]}`)},
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":3,"ids":["c"]}`)},
	})
	if !broadcastSettled(e, 10*time.Second) {
		t.Error("the triggers were not settled within 10s")
	}

	perPath := map[string]int{}
	for _, r := range e.cio.Requests() {
		perPath[r.Path]++
	}
	for id, want := range map[int]int{1: 1, 2: 1, 3: 2} {
		if got := perPath[fmt.Sprintf("/v1/campaigns/%d/triggers", id)]; got != want {
			t.Errorf("broadcast %d requested %d times, want %d", id, got, want)
		}
	}
	var ambiguous []string
	for _, d := range readDLQ(t, e.js) {
		if d.Record.Reason != "ambiguous" {
			t.Errorf("dead letter %s with reason %s, want only ambiguous ones", d.Data, d.Record.Reason)
			continue
		}
		ambiguous = append(ambiguous, string(d.Data))
	}
	slices.Sort(ambiguous)
	if want := []string{`{"broadcast_id":1,"ids":["a"]}`, `{"broadcast_id":2,"ids":["b"]}`}; !slices.Equal(ambiguous, want) {
		t.Errorf("ambiguous dead letters %q, want %q", ambiguous, want)
	}
	if n := acceptedPerBroadcast(e)[3]; n != 1 {
		t.Errorf("broadcast 3 accepted %d times after its 503, want 1", n)
	}
	t.Logf("requests by path: %v", perPath)
}

// TestTriggerWhoseAckIsLostIsNotSentAgain: replica A sends five triggers,
// Customer.io accepts them, and A's acks never reach the server (dropped
// between A and NATS, as in a disconnect or a consumer leader change). A
// stops; the triggers come back to replica B after the ack wait. B must not
// send them again: the first requests are on record.
func TestTriggerWhoseAckIsLostIsNotSentAgain(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaledClock()})
	proxy := startAckDropProxy(t, e.nats.URL())
	ncA, err := nats.Connect(proxy.url(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	jsA, err := jetstream.New(ncA)
	if err != nil {
		t.Fatal(err)
	}
	app := appClient(t, e)
	stopA, _ := runWorkerOn(t, jsA, triggerOptions(app))

	const n = 5
	var msgs []published
	for i := 1; i <= n; i++ {
		msgs = append(msgs, published{subject: worker.SubjectBroadcast, body: fmt.Appendf(nil, `{"broadcast_id":%d,"ids":["u-%d"]}`, i, i)})
	}
	e.publishAll(t, msgs)
	waitFor(t, 20*time.Second, "replica A's five triggers accepted", func() bool { return len(e.cio.Triggers()) >= n })
	waitFor(t, 20*time.Second, "replica A's acks dropped", func() bool { return proxy.dropped.Load() >= n })
	if err := stopA(); err != nil {
		t.Logf("replica A: %v", err)
	}

	_, regB := runWorkerOn(t, e.js, triggerOptions(app)) // replica B, straight to NATS
	waitBroadcastSettled(t, e, 60*time.Second)

	twice := 0
	for id, got := range acceptedPerBroadcast(e) {
		if got != 1 {
			twice++
			t.Errorf("broadcast %d triggered %d times, want once", id, got)
		}
	}
	t.Logf("%d of %d triggers sent more than once; %d acks dropped", twice, n, proxy.dropped.Load())
	if got := metricValue(t, regB, "cio_relay_direct_calls_total", "outcome", "already_sent"); got != n {
		t.Errorf("replica B found %v triggers already sent, want %d", got, n)
	}
	if d := readDLQ(t, e.js); len(d) != 0 {
		t.Errorf("%d dead letters, want none: the triggers went and are on record", len(d))
	}
}

// TestTriggerSenderKilledBeforeAckIsNotSentAgain: replica A's connection to
// NATS dies right after Customer.io accepted its triggers, before anything
// more is recorded or acked (a kill -9, a node lost). The triggers come back
// to replica B, which cannot know whether they went: it must not send them,
// and dead-letters them as ambiguous for an operator to check.
func TestTriggerSenderKilledBeforeAckIsNotSentAgain(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaledClock()})
	ncA, err := nats.Connect(e.nats.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	jsA, err := jetstream.New(ncA)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	app := appClient(t, e)
	var sent atomic.Int32
	allSent := make(chan struct{})
	killer := triggererFunc(func(ctx context.Context, id int64, body []byte) (int64, error) {
		tid, err := app.Trigger(ctx, id, body)
		if err == nil && sent.Add(1) == n {
			close(allSent)
		}
		// A dies with the answers in hand: nothing after them reaches NATS.
		select {
		case <-allSent:
		case <-time.After(10 * time.Second):
		}
		ncA.Close()
		return tid, err
	})
	stopA, _ := runWorkerOn(t, jsA, triggerOptions(killer))

	var msgs []published
	for i := 1; i <= n; i++ {
		msgs = append(msgs, published{subject: worker.SubjectBroadcast, body: fmt.Appendf(nil, `{"broadcast_id":%d,"ids":["u-%d"]}`, i, i)})
	}
	published := time.Now()
	e.publishAll(t, msgs)
	select {
	case <-allSent:
	case <-time.After(20 * time.Second):
		t.Fatalf("replica A sent %d of %d triggers", sent.Load(), n)
	}
	answered := time.Now()
	if err := stopA(); err != nil {
		t.Logf("replica A: %v", err)
	}

	runWorkerOn(t, e.js, triggerOptions(app)) // replica B
	waitBroadcastSettled(t, e, 60*time.Second)

	twice := 0
	for id, got := range acceptedPerBroadcast(e) {
		if got != 1 {
			twice++
			t.Errorf("broadcast %d triggered %d times, want once", id, got)
		}
	}
	reasons, dead := dlqReasons(t, e)
	t.Logf("%d of %d triggers sent more than once; dead letters %v", twice, n, reasons)
	if reasons["ambiguous"] != n || dead != n {
		t.Errorf("dead letters %v, want the %d triggers as ambiguous", reasons, n)
	}
	// B dead-letters them with A's request time (its "sending" marker's),
	// where dlq resolve looks for the triggers A created.
	for _, d := range readDLQ(t, e.js) {
		if at := d.Record.RequestedAt; at.Before(published.Add(-time.Second)) || at.After(answered) {
			t.Errorf("dead letter %d: requested at %v, want A's request, between %v and %v", d.Seq, at, published, answered)
		}
	}
}

type triggererFunc func(ctx context.Context, broadcastID int64, body []byte) (int64, error)

func (f triggererFunc) Trigger(ctx context.Context, broadcastID int64, body []byte) (int64, error) {
	return f(ctx, broadcastID, body)
}

// TestRejectedMergedTriggerIsBisectedAtPace: 64 coalescable triggers of one
// broadcast wait together; Customer.io rejects any request naming person
// "bad" (one of them). The merged request is split in halves, and halves of
// the rejected half, each half waiting its broadcast's turn: only the bad
// trigger is dead-lettered, every other person is triggered once, no two
// requests of the broadcast are closer than Customer.io's 10 seconds (by
// the stand-in's clock), and it takes O(log N) requests, not N.
func TestRejectedMergedTriggerIsBisectedAtPace(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaledClock(), Fault: func(r *ciotest.Request) *ciotest.Fault {
		if r.API == ciotest.APIApp && bytes.Contains(r.Body, []byte(`"bad"`)) {
			return &ciotest.Fault{Status: 422, Body: `{"meta":{"error":"a person could not be messaged"}}`}
		}
		return nil
	}})
	// The triggers wait in the stream before the worker starts, so they
	// reach the pacer together.
	if _, err := e.js.CreateStream(context.Background(), worker.StreamConfig("CIO")); err != nil {
		t.Fatal(err)
	}
	const n = 64
	var msgs []published
	for i := range n {
		id := fmt.Sprintf("u-%d", i)
		if i == n-1 {
			id = "bad"
		}
		msgs = append(msgs, published{subject: worker.SubjectBroadcast, body: fmt.Appendf(nil, `{"broadcast_id":7,"ids":[%q],"id_ignore_missing":true}`, id)})
	}
	e.publishAll(t, msgs)
	e.runWorker(t, triggerOptions(appClient(t, e)), 0)
	waitBroadcastSettled(t, e, 60*time.Second)

	var times []time.Time
	for _, r := range e.cio.Requests() {
		if r.API == ciotest.APIApp {
			times = append(times, r.Time)
		}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	minGap := time.Duration(math.MaxInt64)
	for i := 1; i < len(times); i++ {
		gap := times[i].Sub(times[i-1])
		minGap = min(minGap, gap)
		if gap < trigger10s {
			t.Errorf("requests %d and %d of broadcast 7 %v apart (stand-in clock), want at least %v", i, i+1, gap, trigger10s)
		}
	}
	got := map[string]int{}
	for _, tr := range e.cio.Triggers() {
		for _, r := range recipients(t, tr.Body) {
			got[r]++
		}
	}
	for i := range n - 1 {
		if id := fmt.Sprintf("u-%d", i); got[id] != 1 {
			t.Errorf("%s triggered %d times, want once", id, got[id])
		}
	}
	dl := readDLQ(t, e.js)
	if len(dl) != 1 || dl[0].Record.Reason != "rejected" || !bytes.Contains(dl[0].Data, []byte(`"bad"`)) {
		var what []string
		for _, d := range dl {
			what = append(what, string(d.Record.Reason)+" "+string(d.Data))
		}
		t.Errorf("dead letters %q, want only the bad trigger, rejected", what)
	}
	// One request before the rest arrived, the merged one, then two per
	// level of halving.
	if limit := 2*int(math.Ceil(math.Log2(n))) + 3; len(times) > limit {
		t.Errorf("%d requests for %d triggers, want at most %d", len(times), n, limit)
	}
	t.Logf("%d triggers, one rejected: %d requests, closest two %v apart (stand-in clock)", n, len(times), minGap)
}

// ackDropProxy is a TCP proxy in front of NATS that passes everything
// except the client's acks (a "+ACK" published to $JS.ACK.…): they are
// dropped, as an ack lost in a disconnect would be. Progress, naks and
// terms pass.
type ackDropProxy struct {
	ln      net.Listener
	target  string
	dropped atomic.Int64
}

func startAckDropProxy(t *testing.T, natsURL string) *ackDropProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackDropProxy{ln: ln, target: strings.TrimPrefix(natsURL, "nats://")}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.serve(c) })
		}
	})
	return p
}

func (p *ackDropProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *ackDropProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		_, _ = io.Copy(client, server)
		_ = client.Close()
	}()
	r := bufio.NewReader(client)
	w := bufio.NewWriter(server)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		// PUB <subject> [reply] <size> and HPUB <subject> [reply] <hdr> <size>
		// carry a payload of size bytes and CRLF.
		f := strings.Fields(string(line))
		var payload []byte
		if len(f) >= 3 && (strings.EqualFold(f[0], "PUB") || strings.EqualFold(f[0], "HPUB")) {
			size, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return
			}
			payload = make([]byte, size+2)
			if _, err := io.ReadFull(r, payload); err != nil {
				return
			}
			if strings.HasPrefix(f[1], "$JS.ACK.") && string(payload[:size]) == "+ACK" {
				p.dropped.Add(1)
				continue
			}
		}
		_, _ = w.Write(line)
		_, _ = w.Write(payload)
		if r.Buffered() == 0 {
			if w.Flush() != nil {
				return
			}
		}
	}
}

// TestTriggerNotSentWithoutItsMarkers: with the marker bucket gone (deleted,
// or its stream unavailable), a trigger is not sent blind: it is nakked and
// comes back until the bucket answers again, and is then sent once.
func TestTriggerNotSentWithoutItsMarkers(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key", Now: scaledClock()})
	_, reg := e.runWorker(t, triggerOptions(appClient(t, e)), 0)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "the marker bucket", func() bool {
		_, err := e.js.KeyValue(ctx, worker.SentMarksBucket("CIO"))
		return err == nil
	})
	if err := e.js.DeleteKeyValue(ctx, worker.SentMarksBucket("CIO")); err != nil {
		t.Fatal(err)
	}
	e.publishAll(t, []published{{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":4,"ids":["a"]}`)}})
	waitFor(t, 20*time.Second, "the trigger nakked twice", func() bool {
		return metricValue(t, reg, "cio_relay_direct_calls_total", "outcome", "nakked") >= 2
	})
	if n := len(e.cio.Requests()); n != 0 {
		t.Fatalf("%d requests sent without markers", n)
	}
	if _, err := e.js.CreateKeyValue(ctx, worker.SentMarksConfig("CIO", 0)); err != nil {
		t.Fatal(err)
	}
	waitBroadcastSettled(t, e, 30*time.Second)
	if got := acceptedPerBroadcast(e)[4]; got != 1 || len(e.cio.Requests()) != 1 {
		t.Errorf("broadcast 4 accepted %d times in %d requests, want once", got, len(e.cio.Requests()))
	}
}

// TestTriggersNeedTheirMarkerBucket: a worker that does not manage streams
// and is given the App API key refuses to start without the marker bucket,
// and says how to create it.
func TestTriggersNeedTheirMarkerBucket(t *testing.T) {
	e := newEnv(t, ciotest.Options{AppKey: "app-key"})
	ctx := context.Background()
	// A managing worker without the key creates the streams and the batch
	// consumer, but no marker bucket.
	w, err := worker.New(e.js, sink.NewDryRun(io.Discard), worker.Options{ManageStreams: true})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	waitFor(t, 10*time.Second, "the worker to be ready", func() bool { ok, _ := w.Ready(); return ok })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	w, err = worker.New(e.js, sink.NewDryRun(io.Discard), worker.Options{ManageStreams: false, App: appClient(t, e)})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "CIO_SENT") || !strings.Contains(err.Error(), "RELAY_MANAGE_STREAMS=false") {
		t.Fatalf("Run = %v, want an error naming the missing bucket CIO_SENT", err)
	}
	t.Log(err)
	if _, err := e.js.CreateKeyValue(ctx, worker.SentMarksConfig("CIO", 0)); err != nil {
		t.Fatal(err)
	}
	// With the bucket, it gets as far as the broadcast consumer.
	if err := w.Run(ctx); err == nil || !strings.Contains(err.Error(), "cio-relay-broadcast not found") {
		t.Fatalf("Run = %v, want the missing broadcast consumer next", err)
	}
}
