package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/worker"
)

// TestWorkerOptionsFromSettings: the options config hands the worker carry
// every setting, with RELAY_RETRY_MAX_ELAPSED=0 meaning no retry (to the
// worker a zero duration is its default) and the defaults agreeing with the
// worker's own.
func TestWorkerOptionsFromSettings(t *testing.T) {
	def := mustLoad(t, nil, nil).Worker()
	want := worker.Options{
		Stream: worker.DefaultStream, Consumer: worker.DefaultConsumer, DLQStream: worker.DefaultDLQStream,
		DLQMaxAge: worker.DefaultDLQMaxAge, StreamReplicas: worker.DefaultStreamReplicas, ManageStreams: true,
		AckWait: worker.DefaultAckWait, MaxAckPending: worker.DefaultMaxAckPending, MaxDeliver: worker.DefaultMaxDeliver,
		NakDelay: worker.DefaultNakDelay, BatchMaxBytes: worker.DefaultBatchMaxBytes, BatchMaxCalls: worker.DefaultBatchMaxCalls,
		FlushInterval: worker.DefaultFlushInterval, SendConcurrency: worker.DefaultSendConcurrency, Ordering: true,
		RetryInitial: worker.DefaultRetryInitial, RetryMaxInterval: worker.DefaultRetryMaxInterval,
		RetryMaxElapsed: worker.DefaultRetryMaxElapsed, TriggerTimeout: worker.DefaultTriggerTimeout,
		ShutdownTimeout: worker.DefaultShutdownTimeout,
	}
	if def != want {
		t.Errorf("default Worker():\n got %+v\nwant %+v", def, want)
	}
	for _, tt := range []struct {
		elapsed string
		noRetry bool
	}{{"0", true}, {"0s", true}, {"1ms", false}, {"2m", false}} {
		got := mustLoad(t, nil, map[string]string{"RELAY_RETRY_MAX_ELAPSED": tt.elapsed}).Worker()
		if got.NoRetry != tt.noRetry {
			t.Errorf("RELAY_RETRY_MAX_ELAPSED=%s: NoRetry = %v, want %v", tt.elapsed, got.NoRetry, tt.noRetry)
		}
		if err := got.Validate(); err != nil {
			t.Errorf("RELAY_RETRY_MAX_ELAPSED=%s: worker rejects the options: %v", tt.elapsed, err)
		}
	}
}

// TestWorkerVariablesAreVariables: every variable a worker option error
// is reported under exists.
func TestWorkerVariablesAreVariables(t *testing.T) {
	names := make(map[string]bool)
	for _, v := range new(Config).variables() {
		names[v.name] = true
	}
	for field, name := range workerVariables {
		if !names[name] {
			t.Errorf("worker option %s maps to %s, which is not a variable", field, name)
		}
	}
}

func TestWordWorkerProblems(t *testing.T) {
	c := mustLoad(t, nil, nil)
	c.Batch.FlushInterval = 20 * time.Second
	problem := func(field, other, reason string) error {
		return &worker.OptionError{Field: field, Other: other, Reason: reason}
	}
	tests := []struct {
		name string
		err  error
		bad  map[string]bool
		want []string
	}{
		{"none", nil, nil, nil},
		{"config's words", problem("FlushInterval", "AckWait", "flush interval 20s must be at most half the ack wait 30s"), nil,
			[]string{"RELAY_FLUSH_INTERVAL: must be at most half of RELAY_ACK_WAIT (15s), or an event waiting in a partial batch could out-wait its ack deadline, got 20s"}},
		{"the worker's words under the variable", problem("MaxDeliver", "", "max deliver 0 must be at least 1"), nil,
			[]string{"RELAY_MAX_DELIVER: max deliver 0 must be at least 1"}},
		{"a rejected variable is not reported twice", problem("FlushInterval", "AckWait", "x"), map[string]bool{"RELAY_ACK_WAIT": true}, nil},
		{"a field no variable sets", problem("DirectConcurrency", "", "direct concurrency 0 must be at least 1"), nil,
			[]string{"worker option DirectConcurrency: direct concurrency 0 must be at least 1"}},
		{"every problem", errors.Join(problem("MaxDeliver", "", "a"), problem("SendConcurrency", "", "b")), nil,
			[]string{"RELAY_MAX_DELIVER: a", "RELAY_SEND_CONCURRENCY: b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, e := range wordWorkerProblems(c, tt.err, tt.bad) {
				got = append(got, e.Error())
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestDurationDefault(t *testing.T) {
	for d, want := range map[time.Duration]string{
		500 * time.Millisecond: "500ms", time.Second: "1s", 10 * time.Second: "10s", 2 * time.Minute: "2m",
		90 * time.Second: "1m30s", 720 * time.Hour: "720h", 90 * time.Minute: "1h30m", 10 * time.Minute: "10m",
	} {
		if got := durationDefault(d); got != want {
			t.Errorf("durationDefault(%v) = %q, want %q", d, got, want)
		}
	}
}
