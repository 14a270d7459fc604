package worker

import (
	"testing"
	"time"

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
					h.failed(s.failed, t0.Add(s.at))
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
	h.failed(opPull, time.Now())
	h.failed(opPull, time.Now())
	for op, want := range map[string]float64{opPull: 2, opPublishDLQ: 1, opAck: 0, opInfo: 0, opKV: 0} {
		var m dto.Metric
		if err := h.errors.WithLabelValues(op).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != want {
			t.Errorf("errors{op=%q} = %v, want %v", op, got, want)
		}
	}
	var nilHealth *jsHealth // an intake under test has none
	nilHealth.failed(opPull, time.Now())
	nilHealth.answered()
	if ok, _ := nilHealth.ready(time.Now()); !ok {
		t.Error("a nil jsHealth reports not ready")
	}
}

var errTest = testError("JetStream timeout")

type testError string

func (e testError) Error() string { return string(e) }
