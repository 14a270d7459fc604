package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// syncBuffer is a log destination shared by the worker's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRedirectPausesDelivery points the CDP URL at an endpoint that
// answers every batch with a redirect to a URL that answers 200 to
// anything. Following it would ack the batch undelivered (301/302/303
// turn the POST into a bodyless GET) or, for 307/308, bisect every call
// into the dead-letter stream. A redirect is a configuration problem:
// delivery must pause — nothing acked, nothing dead-lettered, nothing sent
// to the redirect target, cio_relay_auth_paused{api="cdp"} 1, Ready false,
// an error that says where the URL redirects without the Location's
// secrets — and resume by itself once the redirect is gone. The same holds
// with per-person ordering (RELAY_ORDERING, on by default), whose lanes
// send through the same attempt.
func TestRedirectPausesDelivery(t *testing.T) {
	for _, ordering := range []bool{false, true} {
		for _, status := range []int{301, 302, 303, 307, 308} {
			name := strconv.Itoa(status)
			if ordering {
				name = "ordered-" + name
			}
			t.Run(name, func(t *testing.T) { testRedirectPausesDelivery(t, status, ordering) })
		}
	}
}

func testRedirectPausesDelivery(t *testing.T, status int, ordering bool) {
	t.Parallel()
	var redirecting atomic.Bool
	redirecting.Store(true)
	var e *env
	e = newEnv(t, ciotest.Options{Fault: func(r *ciotest.Request) *ciotest.Fault {
		if r.API != ciotest.APICDP || !redirecting.Load() {
			return nil
		}
		loc := strings.Replace(e.cio.MovedURL(), "http://", "http://ops:s3cret-pw@", 1) + "/v1/batch?token=s3cret-token"
		return &ciotest.Fault{Status: status, Location: loc}
	}})
	logs := &syncBuffer{}
	opts := fastOptions()
	opts.Ordering = ordering
	opts.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	w, reg := e.runWorker(t, opts, 0)

	const n = 30
	r := rand.New(rand.NewPCG(uint64(status), 41))
	var msgs []published
	for i := range n {
		id := fmt.Sprintf("redirect-%d-%02d", status, i)
		typ := mix(r)
		msgs = append(msgs, published{subject: typ.Subject(), body: makeCall(r, typ, id, 200+r.IntN(600), true), key: id, valid: true})
	}
	e.publishAll(t, msgs)

	// Probes every 50ms; stop waiting early if everything settled (acked
	// or terminated: the ack floor at the last message), which is the
	// defect. Not "nothing pending": a message nakked back to the
	// redelivery queue is neither pending nor ack pending, which is what
	// an ordered replica does with what it receives before it holds the
	// delivery lease.
	waitFor(t, 20*time.Second, "five redirects, or every message settled", func() bool {
		if e.cio.Stats().ByStatus[status] >= 5 {
			return true
		}
		return consumerInfo(t, e.js).AckFloor.Stream >= n
	})
	st := e.cio.Stats()
	info := consumerInfo(t, e.js)
	dead := streamMsgs(t, e.js, "CIO_DLQ")
	t.Logf("while redirected: %d requests %v, %d to the redirect target, ack floor %d, ack pending %d, %d dead letters",
		st.Requests, st.ByStatus, st.ByOutcome[ciotest.OutcomeMoved], info.AckFloor.Stream, info.NumAckPending, dead)
	if moved := st.ByOutcome[ciotest.OutcomeMoved]; moved != 0 {
		t.Errorf("%d requests followed the redirect to its target", moved)
	}
	// Unordered, every message is held (pending or leased). An ordered
	// replica may have nakked some it received before taking the lease;
	// those wait for redelivery, counted in neither.
	held := info.NumAckPending + int(info.NumPending)
	if info.AckFloor.Stream != 0 || (!ordering && held != n) || held > n {
		t.Errorf("while redirected: ack floor %d, %d ack pending + %d pending; want nothing acked, all %d held",
			info.AckFloor.Stream, info.NumAckPending, info.NumPending, n)
	}
	if dead != 0 {
		t.Errorf("%d dead letters while redirected, want none", dead)
	}
	if d := len(e.cio.Delivered()); d != 0 {
		t.Errorf("%d calls delivered while redirected", d)
	}
	if got := metricValue(t, reg, "cio_relay_auth_paused", "api", "cdp"); got != 1 {
		t.Errorf(`cio_relay_auth_paused{api="cdp"} = %v while redirected, want 1`, got)
	}
	if ok, why := w.Ready(); ok || !strings.Contains(why, "redirects to") {
		t.Errorf("Ready() = %v, %q while redirected; want false, saying where the URL redirects", ok, why)
	}
	text := logs.String()
	wantLoc := strings.TrimPrefix(e.cio.MovedURL(), "http://") + "/v1/batch"
	if !strings.Contains(text, "delivery PAUSED") || !strings.Contains(text, "redirects to") || !strings.Contains(text, wantLoc) {
		t.Errorf("no PAUSED error saying the URL redirects to %s in the log", wantLoc)
	}
	if strings.Contains(text, "s3cret") {
		t.Error("the log carries the Location's credentials or query")
	}

	redirecting.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, n); err != nil {
		t.Fatalf("after the redirect was removed: %v", err)
	}
	waitSettled(t, e.js, 20*time.Second)
	seen := map[string]int{}
	for _, c := range e.cio.Delivered() {
		seen[c.MessageID]++
	}
	checkExactlyOnce(t, msgs, seen)
	if dead := streamMsgs(t, e.js, "CIO_DLQ"); dead != 0 {
		t.Errorf("%d dead letters, want none", dead)
	}
	if got := metricValue(t, reg, "cio_relay_auth_paused", "api", "cdp"); got != 0 {
		t.Errorf(`cio_relay_auth_paused{api="cdp"} = %v after the redirect was removed, want 0`, got)
	}
	waitFor(t, 5*time.Second, "Ready after the redirect was removed", func() bool { ok, _ := w.Ready(); return ok })
	if ordering {
		checkDeliveredOrdered(t, reg)
	}
}
