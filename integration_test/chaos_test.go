package integration_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// TestChaos is the crash-safety test: 20,000 events published with
// Nats-Msg-Id while Customer.io fails 45% of requests (30% 5xx, 10% 429
// with Retry-After: 1, 5% connection reset), the cio-relay binary is killed
// with SIGKILL three times and restarted, and the NATS server is restarted
// once. Every event must reach Customer.io at least once, nothing may be
// dead-lettered, nothing may be sent that was not published, and the
// consumer must end with nothing pending.
//
// The kills and the restart are triggered by progress (calls the stand-in
// has accepted), not by timers, and publishing runs alongside, kept a few
// thousand events ahead of delivery, so it too rides out the restart.
// CIO_RELAY_CHAOS_SEED replays another sequence of faults and sizes.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test skipped in -short mode")
	}
	const (
		events  = 20000
		chunk   = 500  // events published at once
		backlog = 4000 // events published ahead of delivery
	)
	seed := uint64(20260611)
	if s := os.Getenv("CIO_RELAY_CHAOS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("CIO_RELAY_CHAOS_SEED: %v", err)
		}
	}
	t.Logf("chaos seed %d (set CIO_RELAY_CHAOS_SEED to replay another)", seed)

	var faultMu sync.Mutex
	faultRNG := rand.New(rand.NewPCG(seed, 1))
	e := newEnv(t, ciotest.Options{Fault: func(*ciotest.Request) *ciotest.Fault {
		faultMu.Lock()
		n, status := faultRNG.IntN(100), []int{500, 502, 503, 504}[faultRNG.IntN(4)]
		faultMu.Unlock()
		switch {
		case n < 30:
			return &ciotest.Fault{Status: status, Body: `{"error":"chaos"}`}
		case n < 40:
			return &ciotest.Fault{Status: 429, RetryAfter: "1", Body: `{"error":"rate limited"}`}
		case n < 45:
			return &ciotest.Fault{Reset: true}
		}
		return nil
	}})
	keyFile := filepath.Join(t.TempDir(), "cdp-api-key")
	writeFileAtomic(t, keyFile, cdpKey)
	env := relayEnv(e.nats.URL(), e.cio.CDPURL(), keyFile, map[string]string{
		"RELAY_ACK_WAIT":               "5s", // what a kill left unacked comes back quickly
		"RELAY_NAK_DELAY":              "200ms",
		"RELAY_RETRY_INITIAL_INTERVAL": "20ms",
		"RELAY_RETRY_MAX_INTERVAL":     "200ms",
		"RELAY_MAX_DELIVER":            "100",
		"RELAY_FLUSH_INTERVAL":         "100ms",
		"RELAY_BATCH_MAX_CALLS":        "250", // ~80 batches: more requests for the faults and kills to hit
	})

	// Realistic calls: mixed types, 200B to 2KB, each with its messageId,
	// also set as Nats-Msg-Id so a publish retried after a lost PubAck is
	// stored once.
	r := rand.New(rand.NewPCG(seed, 2))
	msgs := make([]published, events)
	for i := range msgs {
		id := fmt.Sprintf("chaos-%05d", i)
		typ := mix(r)
		msgs[i] = published{subject: typ.Subject(), body: makeCall(r, typ, id, 200+r.IntN(1800), true), key: id, valid: true}
	}

	start := time.Now()
	p := startRelay(t, "chaos-1", env)
	procs := []*relayProc{p}

	ctx, cancel := context.WithCancelCause(context.Background())
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelTimeout()
	pub := &chaosPublisher{url: e.nats.URL()}
	var pubDone sync.WaitGroup
	pubDone.Go(func() {
		if err := pub.run(ctx, msgs, chunk, func(n int) error { return e.cio.WaitDelivered(ctx, n-backlog) }); err != nil {
			cancel(fmt.Errorf("publisher: %w", err))
		}
	})
	defer func() {
		cancel(errors.New("test over"))
		pubDone.Wait()
	}()

	// waitProgress waits until the stand-in has accepted n calls, failing
	// at once if the worker process dies or publishing fails.
	waitProgress := func(n int) {
		t.Helper()
		died := make(chan struct{})
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		go func() {
			select {
			case <-p.done:
				close(died)
				stop()
			case <-wctx.Done():
			}
		}()
		if err := e.cio.WaitDelivered(wctx, n); err != nil {
			select {
			case <-died:
				t.Fatalf("cio-relay %s exited (%v) with %d calls accepted, waiting for %d", p.name, p.err, e.cio.Stats().CallsAccepted, n)
			default:
			}
			t.Fatalf("%v (cause: %v); stats %+v", err, context.Cause(ctx), e.cio.Stats())
		}
	}

	kills, natsRestarts := 0, 0
	for _, step := range []struct {
		at     float64
		action string
	}{{0.20, "kill"}, {0.45, "kill"}, {0.55, "restart NATS"}, {0.70, "kill"}} {
		waitProgress(int(step.at * events))
		switch step.action {
		case "kill":
			p.kill(t)
			kills++
			t.Logf("%v: SIGKILLed cio-relay %s at %d calls accepted", time.Since(start).Round(time.Millisecond), p.name, e.cio.Stats().CallsAccepted)
			p = startRelay(t, fmt.Sprintf("chaos-%d", kills+1), env)
			procs = append(procs, p)
		case "restart NATS":
			began := time.Now()
			e.nats.Stop(t)
			// Down until the worker has noticed: not ready, and saying why.
			p.waitLog(t, 30*time.Second, "disconnected from NATS")
			waitFor(t, 10*time.Second, "/readyz to report the lost connection", func() bool {
				code, body := p.get(t, "/readyz")
				return code == 503 && strings.Contains(body, "not connected to NATS")
			})
			e.nats.Restart(t)
			natsRestarts++
			// The same process must carry on: reconnect, be ready again and
			// keep consuming (waitProgress fails at once if it exits).
			p.waitLog(t, 30*time.Second, "reconnected to NATS")
			waitFor(t, 10*time.Second, "/readyz 200 after reconnecting", func() bool {
				code, _ := p.get(t, "/readyz")
				return code == 200
			})
			t.Logf("%v: restarted NATS at %d calls accepted, down for %v", time.Since(start).Round(time.Millisecond),
				e.cio.Stats().CallsAccepted, time.Since(began).Round(time.Millisecond))
		}
	}

	// Every published event delivered at least once. Waiting on the count
	// of distinct messageIds, recounted after every delivery.
	want := map[string]bool{}
	for _, m := range msgs {
		want[m.key] = true
	}
	counts := map[string]int{}
	for {
		delivered := e.cio.Delivered()
		clear(counts)
		for _, c := range delivered {
			counts[c.MessageID]++
		}
		if len(counts) >= events {
			break
		}
		waitProgress(len(delivered) + 1)
	}
	pubDone.Wait()
	waitSettled(t, e.js, 60*time.Second)
	elapsed := time.Since(start)

	duplicates, mostDeliveries := 0, 0
	for id, n := range counts {
		if !want[id] {
			t.Errorf("delivered messageId %q was never published", id)
		}
		duplicates += n - 1
		mostDeliveries = max(mostDeliveries, n)
	}
	for id := range want {
		if counts[id] == 0 {
			t.Errorf("published %s never delivered", id)
		}
	}
	dead := streamMsgs(t, e.js, "CIO_DLQ")
	if dead != 0 {
		for _, d := range readDLQ(t, e.js) {
			t.Errorf("dead letter %d: %s, %s (%d deliveries)", d.Seq, d.Record.Reason, d.Record.Detail, d.Record.Deliveries)
		}
	}
	if n := streamMsgs(t, e.js, "CIO"); n != events {
		t.Errorf("stream CIO holds %d messages for %d events: Nats-Msg-Id must make a retried publish count once", n, events)
	}
	info := consumerInfo(t, e.js)
	if info.NumPending != 0 || info.NumAckPending != 0 {
		t.Errorf("consumer ends with %d pending, %d unacked; want 0, 0", info.NumPending, info.NumAckPending)
	}
	if code := p.stop(t, 30*time.Second); code != 0 {
		t.Errorf("cio-relay exited %d after SIGTERM, want 0", code)
	}

	// The stand-in rejects a request on its own only when its body was cut
	// short, by a kill mid-upload; any other rejection is a packing bug.
	for _, req := range e.cio.Requests() {
		if req.Outcome == ciotest.OutcomeRejected && !strings.HasPrefix(req.Reason, "reading body") {
			t.Errorf("stand-in rejected a request (%d): %s", req.Status, req.Reason)
		}
	}

	st := e.cio.Stats()
	byStatus := slices.Sorted(maps.Keys(st.ByStatus))
	var statusText string
	for _, s := range byStatus {
		name := strconv.Itoa(s)
		if s == 0 {
			name = "reset"
		}
		statusText += fmt.Sprintf(" %s:%d", name, st.ByStatus[s])
	}
	t.Logf("chaos: %d events, %d delivered calls, %d duplicates (%d events delivered more than once, at most %d times), "+
		"%d dead letters, %d kills, %d NATS restarts, %d publishes retried; %d requests by status:%s; "+
		"%d JetStream deliveries (%d redeliveries); wall time %v",
		events, st.CallsAccepted, duplicates, countOver(counts, 1), mostDeliveries, dead, kills, natsRestarts, pub.retried.Load(),
		st.Requests, statusText, info.Delivered.Consumer, info.Delivered.Consumer-events, elapsed.Round(time.Millisecond))

	// What the workers complained about, for a reader judging the noise.
	complaints := map[string]int{}
	for _, p := range procs {
		for msg, n := range p.logs.byLevel("WARN", "ERROR") {
			complaints[msg] += n
		}
	}
	t.Logf("worker warnings and errors across %d processes: %v", len(procs), complaints)
}

func countOver(counts map[string]int, n int) int {
	c := 0
	for _, v := range counts {
		if v > n {
			c++
		}
	}
	return c
}

// chaosPublisher publishes events on a connection of its own, retrying any
// publish whose PubAck does not come (the server restarting, say) with the
// same Nats-Msg-Id, so JetStream stores each event once.
type chaosPublisher struct {
	url     string
	retried atomic.Int64
}

// run publishes msgs in chunks. Before each chunk it calls ready with the
// number of events published so far, which blocks to keep publishing a
// bounded distance ahead of delivery.
func (p *chaosPublisher) run(ctx context.Context, msgs []published, chunk int, ready func(published int) error) error {
	nc, err := nats.Connect(p.url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.Name("chaos publisher"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return err
	}
	for from := 0; from < len(msgs); from += chunk {
		if err := ready(from); err != nil {
			return err
		}
		pending := msgs[from:min(from+chunk, len(msgs))]
		for len(pending) > 0 {
			type inFlight struct {
				m published
				f jetstream.PubAckFuture
			}
			var sent []inFlight
			var failed []published
			for _, m := range pending {
				msg := nats.NewMsg(m.subject)
				msg.Data = m.body
				msg.Header.Set(jetstream.MsgIDHeader, m.key)
				f, err := js.PublishMsgAsync(msg)
				if err != nil {
					failed = append(failed, m)
					continue
				}
				sent = append(sent, inFlight{m, f})
			}
			for _, s := range sent {
				select {
				case <-s.f.Ok():
				case <-s.f.Err():
					failed = append(failed, s.m)
				case <-ctx.Done():
					return context.Cause(ctx)
				}
			}
			if len(failed) == 0 {
				break
			}
			p.retried.Add(int64(len(failed)))
			// A short pause before publishing again, not to spin while the
			// server is down; the connection reconnects by itself.
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			pending = failed
		}
	}
	return nil
}
