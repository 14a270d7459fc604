package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// TestOrderingChaos is issue 13's acceptance test: 20,000 calls over 500
// persons, each with its per-person sequence number in properties.seq, are
// delivered by three cio-relay processes sharing one consumer while the
// stand-in answers 30% of requests 5xx and 10% 429; the delivering replica
// is SIGKILLed three times (and started again) and NATS is restarted once.
// Every call must be accepted, and with RELAY_ORDERING=true every person's
// calls first accepted in publish order. The same scenario with
// RELAY_ORDERING=false must break that order, or the test proves nothing.
func TestOrderingChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("ordering chaos test skipped in -short mode")
	}
	for _, ordering := range []bool{true, false} {
		t.Run(fmt.Sprintf("ordering=%v", ordering), func(t *testing.T) {
			orderingChaos(t, ordering)
		})
	}
}

func orderingChaos(t *testing.T, ordering bool) {
	const events, keys = 20000, 500
	msgs := orderedCalls(13, events, keys)
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(13, 3))
	// Which replica sent each request, for the failure report.
	from := newSenders()
	e := newEnv(t, ciotest.Options{Fault: func(req *ciotest.Request) *ciotest.Fault {
		from.observe(req.RemoteAddr)
		mu.Lock()
		x := r.IntN(100)
		mu.Unlock()
		switch {
		case x < 30:
			return &ciotest.Fault{Status: 500 + x%4, Body: `{"error":"chaos"}`}
		case x < 40:
			return &ciotest.Fault{Status: 429, RetryAfter: "0", Body: `{"error":"rate limited"}`}
		}
		// Customer.io takes a moment to answer: the kills land while
		// batches are in flight.
		return &ciotest.Fault{Slow: true, Delay: 20 * time.Millisecond}
	}})
	keyFile := filepath.Join(t.TempDir(), "cdp-api-key")
	writeFileAtomic(t, keyFile, cdpKey)
	env := relayEnv(e.nats.URL(), e.cio.CDPURL(), keyFile, map[string]string{
		"RELAY_ORDERING":          fmt.Sprint(ordering),
		"RELAY_ACK_WAIT":          "5s", // what a kill left unacked comes back quickly
		"RELAY_NAK_DELAY":         "50ms",
		"RELAY_RETRY_MAX_ELAPSED": "100ms", // batches are nakked and redelivered often
		"RELAY_MAX_DELIVER":       "1000",
		"RELAY_BATCH_MAX_CALLS":   "100",
		// Sizes the delivery lease a killed replica leaves: 6s, not 42s.
		"RELAY_HTTP_TIMEOUT": "2s",
	})
	start := time.Now()
	procs := []*relayProc{}
	startOne := func() {
		p := startRelay(t, fmt.Sprintf("order-%d", len(procs)+1), env)
		from.add(p)
		procs = append(procs, p)
	}
	startOne()
	// Published in one order from one connection: stream order is
	// publish order.
	e.publishAll(t, msgs)
	startOne()
	startOne()
	live := func() []*relayProc {
		var out []*relayProc
		for _, p := range procs {
			select {
			case <-p.done:
			default:
				out = append(out, p)
			}
		}
		return out
	}
	// The replica delivering: with ordering, the live one whose barrier
	// passed most often (it logs so); without, any.
	delivering := func() *relayProc {
		ps := live()
		best, most := ps[0], -1
		for _, p := range ps {
			if n := p.logs.count("barrier passed: delivering in order"); n > most && n > 0 {
				best, most = p, n
			}
		}
		return best
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	waitProgress := func(n int) {
		t.Helper()
		if err := e.cio.WaitDelivered(ctx, n); err != nil {
			info := consumerInfo(t, e.js)
			for _, p := range live() {
				held, _ := p.metric(t, "cio_relay_messages_held")
				t.Logf("%s: %v messages held", p.name, held)
			}
			t.Fatalf("waiting for %d calls accepted: %v; stats %+v; consumer: %d pending, %d unacked, %d waiting pulls, groups %+v",
				n, err, e.cio.Stats(), info.NumPending, info.NumAckPending, info.NumWaiting, info.PriorityGroups)
		}
	}
	var failovers []time.Duration
	kills := 0
	for _, step := range []struct {
		at     float64
		action string
	}{{0.15, "kill"}, {0.35, "kill"}, {0.5, "restart NATS"}, {0.65, "kill"}} {
		waitProgress(int(step.at * events))
		switch step.action {
		case "kill":
			p := delivering()
			at := e.cio.Stats().CallsAccepted
			p.kill(t)
			killed := time.Now()
			kills++
			t.Logf("%s: SIGKILLed %s", killed.Format("15:04:05.000"), p.name)
			startOne()
			// Failover: from the kill to the next call accepted.
			waitProgress(e.cio.Stats().CallsAccepted + 1)
			failovers = append(failovers, time.Since(killed))
			t.Logf("%v: SIGKILLed %s at %d calls accepted; next call accepted %v later",
				time.Since(start).Round(time.Millisecond), p.name, at, failovers[len(failovers)-1].Round(time.Millisecond))
		case "restart NATS":
			t.Logf("%s: stopping NATS", time.Now().Format("15:04:05.000"))
			e.nats.Stop(t)
			for _, p := range live() {
				p.waitLog(t, 30*time.Second, "disconnected from NATS")
			}
			e.nats.Restart(t)
			for _, p := range live() {
				p.waitLog(t, 30*time.Second, "reconnected to NATS")
			}
			t.Logf("%v: restarted NATS at %d calls accepted", time.Since(start).Round(time.Millisecond), e.cio.Stats().CallsAccepted)
		}
	}
	// Every call accepted at least once.
	for {
		delivered := e.cio.Delivered()
		if checkOrder(t, delivered, msgs).missing == 0 {
			break
		}
		waitProgress(len(delivered) + 1)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		info := consumerInfo(t, e.js)
		if info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, p := range live() {
				held, _ := p.metric(t, "cio_relay_messages_held")
				t.Logf("%s: %v messages held", p.name, held)
			}
			t.Fatalf("consumer did not settle: %d pending, %d unacked, groups %+v", info.NumPending, info.NumAckPending, info.PriorityGroups)
		}
		time.Sleep(50 * time.Millisecond) // polling server state: there is no event to await
	}
	rep := checkOrder(t, e.cio.Delivered(), msgs)
	st := e.cio.Stats()
	t.Logf("ordering=%v: %d calls over %d keys, %d accepted (%d duplicates), %d out of order (%s); %d requests %v; "+
		"%d kills, failovers %v; dead letters %d; wall time %v",
		ordering, rep.calls, rep.keys, st.CallsAccepted, st.CallsAccepted-rep.calls, rep.violations, rep.example,
		st.Requests, st.ByStatus, kills, failovers, streamMsgs(t, e.js, "CIO_DLQ"), time.Since(start).Round(time.Millisecond))
	if rep.missing != 0 || rep.keys != keys {
		t.Errorf("%d calls never accepted; %d keys seen, want %d", rep.missing, rep.keys, keys)
	}
	if n := streamMsgs(t, e.js, "CIO_DLQ"); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
	switch {
	case ordering && rep.violations != 0:
		logKeyRequests(t, e.cio.Requests(), rep.exampleKey, func(r ciotest.Request) string { return from.of(r.RemoteAddr) })
		t.Errorf("RELAY_ORDERING=true: %d calls first accepted before an earlier call of their person, e.g. %s", rep.violations, rep.example)
	case !ordering && rep.violations == 0:
		t.Errorf("RELAY_ORDERING=false kept every person's order: the scenario does not exercise ordering")
	}
}
