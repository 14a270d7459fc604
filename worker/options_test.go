package worker

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestOptionsValidateNamesTheField(t *testing.T) {
	tests := []struct {
		name        string
		opts        Options
		field       string // "" for valid options
		other       string
		errContains string
	}{
		{"zero value takes the defaults", Options{}, "", "", ""},
		{"no retry", Options{NoRetry: true}, "", "", ""},
		{"stream name with a dot", Options{Stream: "a.b"}, "Stream", "", `"a.b"`},
		{"dead-letter stream with a space", Options{DLQStream: "a b"}, "DLQStream", "", `"a b"`},
		{"dead-letter stream is the stream", Options{Stream: "S", DLQStream: "S"}, "DLQStream", "Stream", `both "S"`},
		{"dead-letter stream is the default stream", Options{DLQStream: DefaultStream}, "DLQStream", "Stream", `both "CIO"`},
		{"replicas over JetStream's limit", Options{StreamReplicas: 6}, "StreamReplicas", "", "from 1 to 5"},
		{"negative replicas", Options{StreamReplicas: -1}, "StreamReplicas", "", "-1"},
		{"ack wait too short", Options{AckWait: time.Millisecond, FlushInterval: time.Nanosecond}, "AckWait", "", "too short"},
		{"flush over half the ack wait", Options{AckWait: 10 * time.Second, FlushInterval: 6 * time.Second}, "FlushInterval", "AckWait", "half"},
		{"flush over half the default ack wait", Options{FlushInterval: 16 * time.Second}, "FlushInterval", "AckWait", "30s"},
		{"negative max deliver", Options{MaxDeliver: -1}, "MaxDeliver", "", "at least 1"},
		{"batch bytes over Customer.io's limit", Options{BatchMaxBytes: 500001}, "BatchMaxBytes", "", "out of range"},
		{"batch bytes below the envelope", Options{BatchMaxBytes: 5}, "BatchMaxBytes", "", "out of range"},
		{"negative batch calls", Options{BatchMaxCalls: -1}, "BatchMaxCalls", "", "at least 1"},
		{"negative send concurrency", Options{SendConcurrency: -2}, "SendConcurrency", "", "at least 1"},
		{"negative retry budget", Options{RetryMaxElapsed: -time.Second}, "RetryMaxElapsed", "", "NoRetry"},
		{"negative broadcast interval", Options{BroadcastInterval: -time.Second}, "BroadcastInterval", "", "negative"},
		{"negative direct concurrency", Options{DirectConcurrency: -1}, "DirectConcurrency", "", "at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.opts
			err := tt.opts.Validate()
			if tt.opts != before {
				t.Errorf("Validate changed the options: %+v, was %+v", tt.opts, before)
			}
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("Validate() = %v, want one matching ErrInvalidOption", err)
			}
			var oe *OptionError
			if !errors.As(err, &oe) {
				t.Fatalf("Validate() = %v, want an *OptionError", err)
			}
			if oe.Field != tt.field || oe.Other != tt.other {
				t.Errorf("OptionError names %q against %q, want %q against %q", oe.Field, oe.Other, tt.field, tt.other)
			}
			if !strings.HasPrefix(err.Error(), tt.field+": ") || !strings.Contains(err.Error(), tt.errContains) {
				t.Errorf("Validate() = %q, want it to start with %q and contain %q", err, tt.field+": ", tt.errContains)
			}
		})
	}
}

// TestOptionsValidateReportsEveryRule: one call lists every problem, each
// an *OptionError, so that config can name each variable.
func TestOptionsValidateReportsEveryRule(t *testing.T) {
	err := (&Options{Stream: "a.b", MaxDeliver: -1, SendConcurrency: -1}).Validate()
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Validate() = %v (%T), want joined errors", err, err)
	}
	var fields []string
	for _, e := range joined.Unwrap() {
		var oe *OptionError
		if !errors.As(e, &oe) {
			t.Fatalf("%v (%T) is not an *OptionError", e, e)
		}
		fields = append(fields, oe.Field)
	}
	if got, want := strings.Join(fields, ","), "Stream,MaxDeliver,SendConcurrency"; got != want {
		t.Errorf("fields at fault %s, want %s", got, want)
	}
}

// TestNewAppliesTheDefaults: the Default* constants are what New uses, and
// New rejects what Validate rejects.
func TestNewAppliesTheDefaults(t *testing.T) {
	w, err := New(nil, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := w.opts
	if o.Stream != DefaultStream || o.Consumer != DefaultConsumer || o.DLQStream != DefaultDLQStream ||
		o.DLQMaxAge != DefaultDLQMaxAge || o.StreamReplicas != DefaultStreamReplicas || o.AckWait != DefaultAckWait ||
		o.MaxAckPending != DefaultMaxAckPending || o.MaxDeliver != DefaultMaxDeliver || o.BatchMaxBytes != DefaultBatchMaxBytes ||
		o.BatchMaxCalls != DefaultBatchMaxCalls || o.FlushInterval != DefaultFlushInterval ||
		o.SendConcurrency != DefaultSendConcurrency || o.NakDelay != DefaultNakDelay || o.RetryInitial != DefaultRetryInitial ||
		o.RetryMaxInterval != DefaultRetryMaxInterval || o.RetryMaxElapsed != DefaultRetryMaxElapsed ||
		o.ProbeInterval != DefaultRetryMaxInterval || o.ShutdownTimeout != DefaultShutdownTimeout ||
		o.BroadcastInterval != DefaultBroadcastInterval || o.DirectConcurrency != DefaultDirectConcurrency ||
		o.Version != DefaultVersion || o.NoRetry {
		t.Errorf("New(Options{}) set %+v, not the Default* constants", o)
	}
	if _, err := New(nil, nil, Options{MaxDeliver: -1}); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("New with MaxDeliver -1 = %v, want ErrInvalidOption", err)
	}
}
