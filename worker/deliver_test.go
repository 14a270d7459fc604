package worker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/deadletter"
)

// TestSendSettlesByOutcome sends one batch through a scripted Customer.io
// and checks how each message is settled, in virtual time (the retries'
// backoff and Retry-After pass without waiting).
func TestSendSettlesByOutcome(t *testing.T) {
	const good, bad, poison = `{"type":"track","userId":"a"}`, `{"type":"track","userId":"bad"}`, `{"type":"track","userId":"poison"}`
	hasBad := func(body []byte) bool { return strings.Contains(string(body), "bad") }
	tests := []struct {
		name       string
		deliveries uint64
		calls      []string
		respond    func(ctx context.Context, n int, body []byte) error
		want       []string            // settlement of each call
		letters    []deadletter.Reason // dead letters' reasons
		requests   int                 // requests made, 0 to not check
	}{
		{name: "2xx acks all", deliveries: 1, calls: []string{good, good},
			want: []string{"ack", "ack"}, requests: 1},
		{name: "400 bisects to the bad call", deliveries: 1, calls: []string{good, bad, good, good},
			respond: func(_ context.Context, _ int, body []byte) error {
				if hasBad(body) {
					return statusErr("cdp", 400)
				}
				return nil
			},
			want: []string{"ack", "term rejected", "ack", "ack"}, letters: []deadletter.Reason{deadletter.ReasonRejected}},
		{name: "5xx on a first delivery naks whole with a delay", deliveries: 1, calls: []string{good, good},
			respond: func(context.Context, int, []byte) error { return statusErr("cdp", 500) },
			want:    []string{"nak 30s", "nak 30s"}},
		{name: "5xx redelivered splits to the poison call", deliveries: 2, calls: []string{good, poison, good, good},
			respond: func(_ context.Context, _ int, body []byte) error {
				if strings.Contains(string(body), "poison") {
					return statusErr("cdp", 503)
				}
				return nil
			},
			want: []string{"ack", "nak 1m0s", "ack", "ack"}},
		{name: "5xx redelivered in an outage probes, naks all", deliveries: 2, calls: []string{good, good, good, good},
			respond: func(context.Context, int, []byte) error { return statusErr("cdp", 502) },
			want:    []string{"nak 1m0s", "nak 1m0s", "nak 1m0s", "nak 1m0s"}},
		{name: "retries exhausted at MaxDeliver dead-letter", deliveries: 3, calls: []string{good},
			respond: func(context.Context, int, []byte) error { return transportErr("cdp") },
			want:    []string{"term retries_exhausted"}, letters: []deadletter.Reason{deadletter.ReasonRetriesExhausted}},
		{name: "429 with Retry-After then 2xx acks", deliveries: 1, calls: []string{good},
			respond: func(_ context.Context, n int, _ []byte) error {
				if n == 0 {
					return retryAfterErr("cdp", 2*time.Second)
				}
				return nil
			},
			want: []string{"ack"}, requests: 2},
		{name: "Retry-After beyond the budget naks at once", deliveries: 1, calls: []string{good},
			respond: func(context.Context, int, []byte) error { return retryAfterErr("cdp", time.Hour) },
			want:    []string{"nak 30s"}, requests: 1},
		{name: "a slow 2xx acks", deliveries: 1, calls: []string{good},
			respond: func(ctx context.Context, _ int, _ []byte) error { return slow(ctx, 10*time.Second) },
			want:    []string{"ack"}, requests: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &fakeSender{respond: tt.respond}
				w, js := newFakeWorker(t, s, Options{})
				hs, ms := heldCalls(t, w, tt.deliveries, tt.calls...)
				w.send(t.Context(), hs, batcher.BodyOf(hs, callOf))
				if got := settledAs(ms); !slices.Equal(got, tt.want) {
					t.Errorf("settled %q, want %q", got, tt.want)
				}
				if got := js.reasons(); !slices.Equal(got, tt.letters) {
					t.Errorf("dead letters %q, want %q", got, tt.letters)
				}
				if tt.requests > 0 && s.requests() != tt.requests {
					t.Errorf("%d requests, want %d", s.requests(), tt.requests)
				}
			})
		})
	}
}

// TestRetryAfterIsWaited checks in virtual time that a 429's Retry-After is
// waited before the next request, beyond the backoff's own wait.
func TestRetryAfterIsWaited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &fakeSender{respond: func(_ context.Context, n int, _ []byte) error {
			if n == 0 {
				return retryAfterErr("cdp", 3*time.Second)
			}
			return nil
		}}
		w, _ := newFakeWorker(t, s, Options{})
		hs, ms := heldCalls(t, w, 1, `{"type":"track","userId":"a"}`)
		w.send(t.Context(), hs, batcher.BodyOf(hs, callOf))
		if gap := s.at[1].Sub(s.at[0]); gap < 3*time.Second {
			t.Fatalf("second request %v after the 429, want at least its Retry-After 3s", gap)
		}
		if ms[0].how() != "ack" {
			t.Fatalf("settled %q", ms[0].how())
		}
	})
}

// TestPauseHoldsAndProbes: a 401 pauses delivery (Ready says so), probes
// every ProbeInterval, dead-letters nothing, and resumes on the first 2xx.
func TestPauseHoldsAndProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		s := &fakeSender{respond: func(_ context.Context, n int, _ []byte) error {
			if n < 3 {
				return statusErr("cdp", 401)
			}
			<-release
			return nil
		}}
		w, js := newFakeWorker(t, s, Options{ProbeInterval: 7 * time.Second})
		w.ready.Store(true)
		hs, ms := heldCalls(t, w, 5, `{"type":"track","userId":"a"}`)
		done := make(chan struct{})
		go func() { w.send(t.Context(), hs, batcher.BodyOf(hs, callOf)); close(done) }()
		synctest.Wait() // the fourth request waits for release
		if ok, why := w.Ready(); ok || !strings.Contains(why, "cdp paused") {
			t.Fatalf("Ready() = %v %q while paused", ok, why)
		}
		close(release)
		<-done
		if ok, why := w.Ready(); !ok {
			t.Fatalf("still not ready after the pause: %s", why)
		}
		for i := 1; i < 4; i++ {
			if gap := s.at[i].Sub(s.at[i-1]); gap != 7*time.Second {
				t.Errorf("probe %d after %v, want the probe interval 7s", i, gap)
			}
		}
		if ms[0].how() != "ack" || len(js.reasons()) != 0 {
			t.Fatalf("settled %q, dead letters %q: want ack, none", ms[0].how(), js.reasons())
		}
	})
}

// TestHardStopNaksNow: the hard stop (send context cancelled) cuts a
// request off, or ends the wait between retries, and every call is nakked
// at once for another replica; none is dead-lettered.
func TestHardStopNaksNow(t *testing.T) {
	for _, tt := range []struct {
		name    string
		respond func(ctx context.Context, n int, body []byte) error
	}{
		{"in flight", func(ctx context.Context, _ int, _ []byte) error { return slow(ctx, time.Hour) }},
		{"between retries", func(context.Context, int, []byte) error { return statusErr("cdp", 503) }},
		{"while paused", func(context.Context, int, []byte) error { return statusErr("cdp", 403) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &fakeSender{respond: tt.respond}
				w, js := newFakeWorker(t, s, Options{RetryMaxElapsed: time.Hour, MaxDeliver: 1})
				hs, ms := heldCalls(t, w, 1, `{"type":"track","userId":"a"}`, `{"type":"track","userId":"b"}`)
				ctx, cancel := context.WithCancel(t.Context())
				time.AfterFunc(time.Minute, cancel)
				w.send(ctx, hs, batcher.BodyOf(hs, callOf))
				if got := settledAs(ms); !slices.Equal(got, []string{"nak", "nak"}) {
					t.Fatalf("settled %q, want nak now for both", got)
				}
				if len(js.reasons()) != 0 {
					t.Fatalf("dead-lettered %q at a hard stop", js.reasons())
				}
			})
		})
	}
}

// TestDeadLetterPublishFailureNaks: a dead letter that cannot be written
// leaves the original nakked with a delay, never terminated; one too large
// for NATS is written without its body.
func TestDeadLetterPublishFailureNaks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w, js := newFakeWorker(t, &fakeSender{}, Options{})
		hs, ms := heldCalls(t, w, 1, `{"type":"track","userId":"a"}`, `{"type":"track","userId":"b"}`)
		js.fail = func(*nats.Msg) error { return errors.New("no responders") }
		w.deadLetter(t.Context(), hs[0], deadletter.ReasonRejected, 400, "bad")
		if got := ms[0].how(); got != "nak 30s" {
			t.Fatalf("settled %q, want nak 30s", got)
		}
		big := true
		js.fail = func(m *nats.Msg) error {
			if big && len(m.Data) > 0 {
				return nats.ErrMaxPayload
			}
			return nil
		}
		w.deadLetter(t.Context(), hs[1], deadletter.ReasonRejected, 400, strings.Repeat("x", 400))
		if got := ms[1].how(); got != "term rejected" {
			t.Fatalf("settled %q, want term rejected", got)
		}
		if n := len(js.letters); n != 1 || len(js.letters[0].Data) != 0 {
			t.Fatalf("letters %d, want one stub without body", n)
		}
	})
}

// TestSettleFailureIsCounted: an ack the server does not take is logged
// and counted, and leaves the message to be redelivered.
func TestSettleFailureIsCounted(t *testing.T) {
	w, _ := newFakeWorker(t, &fakeSender{}, Options{})
	hs, ms := heldCalls(t, w, 1, `{"type":"track","userId":"a"}`)
	ms[0].err = errors.New("connection closed")
	w.send(context.Background(), hs, batcher.BodyOf(hs, callOf))
	if ms[0].how() != "ack" {
		t.Fatalf("settled %q, want an ack tried", ms[0].how())
	}
	var c dto.Metric
	if err := w.m.acksFailed.Write(&c); err != nil {
		t.Fatal(err)
	}
	if n := c.GetCounter().GetValue(); n != 1 {
		t.Fatalf("acks failed counted %v, want 1", n)
	}
}
