package worker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestJSHealth(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	type step struct {
		at     time.Duration // after t0
		failed string        // an op that failed; "" for an answer
	}
	tests := []struct {
		name      string
		steps     []step
		at        time.Duration
		wantDown  time.Duration
		wantReady bool
	}{
		{"never failed", nil, time.Hour, 0, true},
		{"a leader election: one failed pull, then a message", []step{{0, opPull}, {3 * time.Second, ""}}, 30 * time.Second, 0, true},
		{"failing, below the threshold", []step{{0, opPull}, {5 * time.Second, opInfo}}, unavailableAfter - time.Millisecond, unavailableAfter - time.Millisecond, true},
		// The clock runs from the first failure, not the latest.
		{"no quorum: failing for the threshold", []step{{0, opPull}, {5 * time.Second, opInfo}, {10 * time.Second, opAck}}, unavailableAfter, unavailableAfter, false},
		{"quorum back: an info answers", []step{{0, opPull}, {20 * time.Second, opPublishDLQ}, {25 * time.Second, ""}}, 26 * time.Second, 0, true},
		{"failing again after an answer starts a new clock", []step{{0, opKV}, {20 * time.Second, ""}, {21 * time.Second, opPull}}, 30 * time.Second, 9 * time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newJSHealth(prometheus.NewRegistry())
			for _, s := range tt.steps {
				if s.failed == "" {
					h.answered()
				} else {
					h.failed(s.failed, errTest, t0.Add(s.at))
				}
			}
			now := t0.Add(tt.at)
			if got := h.unavailable(now); got != tt.wantDown {
				t.Errorf("unavailable = %v, want %v", got, tt.wantDown)
			}
			if ok, why := h.ready(now); ok != tt.wantReady || (ok == (why != "")) {
				t.Errorf("ready = %v %q, want %v (with a reason when not)", ok, why, tt.wantReady)
			}
		})
	}
}

func TestJSHealthCountsErrorsByOp(t *testing.T) {
	h := newJSHealth(prometheus.NewRegistry())
	h.observe(opPublishDLQ, nil, time.Now())
	h.observe(opPublishDLQ, errTest, time.Now())
	h.observe(opPublishDLQ, fmt.Errorf("dead letter: %w", jetstream.ErrAsyncPublishTimeout), time.Now())
	h.failed(opPull, jetstream.ErrNoHeartbeat, time.Now())
	h.failed(opPull, errTest, time.Now())
	h.failed(opKV, fmt.Errorf("lease: %w", context.DeadlineExceeded), time.Now())
	h.failed(opInfo, nats.ErrTimeout, time.Now())
	h.failed(opAck, nil, time.Now()) // the cause unknown: an error, not a timeout
	// What a lost quorum gave (TestRelayWaitsOutLostQuorum): no answer...
	h.failed(opPull, nats.ErrNoResponders, time.Now())
	h.failed(opKV, fmt.Errorf("taking the lease: %w", jetstream.ErrNoStreamResponse), time.Now())
	// ...and an answer that is an error.
	h.failed(opInfo, &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, time.Now())
	tests := []struct {
		op               string
		errors, timeouts float64
	}{
		{opPull, 3, 2},
		{opPublishDLQ, 2, 1},
		{opKV, 2, 2},
		{opInfo, 2, 1},
		{opAck, 1, 0},
	}
	for _, tt := range tests {
		if got := counterValue(t, h.errors, tt.op); got != tt.errors {
			t.Errorf("errors{op=%q} = %v, want %v", tt.op, got, tt.errors)
		}
		if got := counterValue(t, h.timeouts, tt.op); got != tt.timeouts {
			t.Errorf("timeouts{op=%q} = %v, want %v", tt.op, got, tt.timeouts)
		}
	}
	var nilHealth *jsHealth // an intake under test has none
	nilHealth.failed(opPull, errTest, time.Now())
	nilHealth.answered()
	if ok, _ := nilHealth.ready(time.Now()); !ok {
		t.Error("a nil jsHealth reports not ready")
	}
}

func counterValue(t *testing.T, c *prometheus.CounterVec, op string) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.WithLabelValues(op).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

var errTest = testError("JetStream timeout")

type testError string

func (e testError) Error() string { return string(e) }
