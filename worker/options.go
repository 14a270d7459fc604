package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/trigger"
)

// The defaults of Options, exported so that config and the CLIs name them
// instead of repeating the figures. A zero field takes its default.
const (
	DefaultStream          = "CIO"
	DefaultConsumer        = "cio-relay"
	DefaultDLQStream       = "CIO_DLQ"
	DefaultDLQMaxAge       = 30 * 24 * time.Hour // long enough to notice, investigate and replay after a holiday
	DefaultStreamReplicas  = 1
	DefaultAckWait         = 30 * time.Second // JetStream's own default
	DefaultMaxAckPending   = 20000            // twice DefaultBatchMaxCalls × (DefaultSendConcurrency + 1)
	DefaultMaxDeliver      = 20               // with the retry and nak defaults, about two hours of outage
	DefaultBatchMaxBytes   = batcher.MaxBatchBytes
	DefaultBatchMaxCalls   = 2000 // at about 250 bytes a call, the byte limit closes a batch first
	DefaultFlushInterval   = time.Second
	DefaultSendConcurrency = 4
	DefaultNakDelay        = 30 * time.Second
	// DefaultRetryInitial, DefaultRetryMaxInterval and
	// DefaultRetryMaxElapsed shape the retries of one request within one
	// delivery; set Options.NoRetry for none.
	DefaultRetryInitial      = 500 * time.Millisecond
	DefaultRetryMaxInterval  = 30 * time.Second
	DefaultRetryMaxElapsed   = 2 * time.Minute
	DefaultBroadcastInterval = trigger.Interval
	DefaultDirectConcurrency = 4
	// DefaultShutdownTimeout fits under Kubernetes' default grace period
	// of 30s, leaving 5s for the rest of the shutdown.
	DefaultShutdownTimeout = 25 * time.Second
	DefaultVersion         = "dev"
	// DefaultTriggerTimeout is in turns.go, beside the turn it sizes.
)

// Options configures a Worker. Zero values take the Default* constants;
// config sets them from the environment, which is where an operator sets
// them.
type Options struct {
	Stream          string        // stream name; DefaultStream
	Consumer        string        // durable consumer name; DefaultConsumer
	DLQStream       string        // dead-letter stream name; DefaultDLQStream
	DLQMaxAge       time.Duration // dead-letter retention; DefaultDLQMaxAge
	StreamReplicas  int           // replicas of the streams it creates, 1 to MaxStreamReplicas; DefaultStreamReplicas (see bind)
	ManageStreams   bool          // create/update the streams and consumer at start
	AckWait         time.Duration // DefaultAckWait
	MaxAckPending   int           // DefaultMaxAckPending
	MaxDeliver      int           // deliveries before a transiently failing call is dead-lettered; DefaultMaxDeliver
	BatchMaxBytes   int           // DefaultBatchMaxBytes, also the maximum
	BatchMaxCalls   int           // DefaultBatchMaxCalls
	FlushInterval   time.Duration // DefaultFlushInterval
	SendConcurrency int           // batches in flight at once; DefaultSendConcurrency
	// Ordering delivers each person's calls in stream order (see doc.go):
	// one pinned replica delivers, calls go to SendConcurrency lanes by
	// person key, each lane one batch at a time. config's default is on;
	// the zero value here is the unordered pipeline.
	Ordering bool
	NakDelay time.Duration // base redelivery delay after a failed send; DefaultNakDelay
	// Retries of one request within one delivery: exponential backoff with
	// jitter from RetryInitial up to RetryMaxInterval, for at most
	// RetryMaxElapsed. Defaults DefaultRetryInitial, DefaultRetryMaxInterval,
	// DefaultRetryMaxElapsed. NoRetry turns them off: a failed request is
	// settled at once (nakked, or dead-lettered on its last delivery), and
	// RetryMaxElapsed is ignored. It is a field of its own, not a magic
	// duration, so a zero value keeps meaning "the default".
	RetryInitial     time.Duration
	RetryMaxInterval time.Duration
	RetryMaxElapsed  time.Duration
	NoRetry          bool
	// ProbeInterval is how often a paused worker (401/403/404 from
	// Customer.io) tries again; default RetryMaxInterval.
	ProbeInterval time.Duration
	// Direct calls: a nil App, Track or Delivery leaves its subjects unconsumed.
	App               Triggerer
	Track             Suppressor
	Delivery          DeliveryReporter      // unsubscribes and metrics attributed to a delivery; need no credentials
	BroadcastInterval time.Duration         // Customer.io's pacing per broadcast; DefaultBroadcastInterval
	TriggerTimeout    time.Duration         // a trigger request is cut off after this (the App client's own timeout); sizes the turn a dead replica leaves (see turns.go); DefaultTriggerTimeout
	DirectConcurrency int                   // Track API calls in flight at once per consumer (the ordered ones have 1 anyway); DefaultDirectConcurrency
	ShutdownTimeout   time.Duration         // time to finish in-flight sends after ctx is done; DefaultShutdownTimeout
	Version           string                // recorded on dead letters; DefaultVersion
	Logger            *slog.Logger          // default: discard
	Registerer        prometheus.Registerer // default: none
}

// ErrInvalidOption is wrapped by every *OptionError, so a caller can tell a
// bad setting from a failure to reach JetStream with errors.Is.
var ErrInvalidOption = errors.New("invalid worker option")

// OptionError is one rule of Options that a value breaks. Field names the
// Options field at fault and Other the field it was checked against, if
// any, so that config can name its variables instead.
type OptionError struct {
	Field  string // e.g. "FlushInterval"
	Other  string // e.g. "AckWait"; "" for a rule on Field alone
	Reason string // what is wrong, with the values
}

func (e *OptionError) Error() string { return e.Field + ": " + e.Reason }

// Unwrap makes every OptionError match ErrInvalidOption.
func (e *OptionError) Unwrap() error { return ErrInvalidOption }

// Validate reports every rule o breaks, as *OptionError values joined with
// errors.Join (each matches ErrInvalidOption). Zero fields are checked as
// their defaults, as New would use them; o is not changed.
func (o *Options) Validate() error {
	c := *o
	c.setDefaults()
	return c.check()
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defString := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defString(&o.Stream, DefaultStream)
	defString(&o.Consumer, DefaultConsumer)
	defString(&o.DLQStream, DefaultDLQStream)
	def(&o.DLQMaxAge, DefaultDLQMaxAge)
	defInt(&o.StreamReplicas, DefaultStreamReplicas)
	def(&o.AckWait, DefaultAckWait)
	defInt(&o.MaxAckPending, DefaultMaxAckPending)
	defInt(&o.MaxDeliver, DefaultMaxDeliver)
	defInt(&o.BatchMaxBytes, DefaultBatchMaxBytes)
	defInt(&o.BatchMaxCalls, DefaultBatchMaxCalls)
	def(&o.FlushInterval, DefaultFlushInterval)
	defInt(&o.SendConcurrency, DefaultSendConcurrency)
	def(&o.NakDelay, DefaultNakDelay)
	def(&o.RetryInitial, DefaultRetryInitial)
	def(&o.RetryMaxInterval, DefaultRetryMaxInterval)
	def(&o.RetryMaxElapsed, DefaultRetryMaxElapsed)
	def(&o.ProbeInterval, o.RetryMaxInterval)
	def(&o.ShutdownTimeout, DefaultShutdownTimeout)
	def(&o.BroadcastInterval, DefaultBroadcastInterval)
	defInt(&o.DirectConcurrency, DefaultDirectConcurrency)
	defString(&o.Version, DefaultVersion)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// check applies the rules to options whose defaults are set.
func (o *Options) check() error {
	var errs []error
	bad := func(field, other, format string, args ...any) {
		errs = append(errs, &OptionError{Field: field, Other: other, Reason: fmt.Sprintf(format, args...)})
	}
	for _, s := range []struct{ field, name string }{{"Stream", o.Stream}, {"DLQStream", o.DLQStream}} {
		// A stream name is part of every derived messageId and subject.
		if strings.ContainsAny(s.name, "\"\\ \t\r\n.*>") {
			bad(s.field, "", "stream name %q contains a character JetStream or a messageId cannot carry", s.name)
		}
	}
	if o.Stream == o.DLQStream {
		bad("DLQStream", "Stream", "stream and dead-letter stream are both %q", o.Stream)
	}
	if o.StreamReplicas < 1 || o.StreamReplicas > MaxStreamReplicas {
		bad("StreamReplicas", "", "stream replicas %d must be from 1 to %d", o.StreamReplicas, MaxStreamReplicas)
	}
	if o.AckWait < 3*time.Millisecond {
		bad("AckWait", "", "ack wait %v too short", o.AckWait)
	}
	// A call waiting in a partial batch must not out-wait its ack deadline.
	if o.FlushInterval > o.AckWait/2 {
		bad("FlushInterval", "AckWait", "flush interval %v must be at most half the ack wait %v", o.FlushInterval, o.AckWait)
	}
	if o.MaxDeliver < 1 {
		bad("MaxDeliver", "", "max deliver %d must be at least 1", o.MaxDeliver)
	}
	if o.BatchMaxBytes > batcher.MaxBatchBytes || o.BatchMaxBytes <= batcher.Overhead {
		bad("BatchMaxBytes", "", "batch max bytes %d out of range (%d, %d]", o.BatchMaxBytes, batcher.Overhead, batcher.MaxBatchBytes)
	}
	if o.BatchMaxCalls < 1 {
		bad("BatchMaxCalls", "", "batch max calls %d must be at least 1", o.BatchMaxCalls)
	}
	if o.SendConcurrency < 1 {
		bad("SendConcurrency", "", "send concurrency %d must be at least 1", o.SendConcurrency)
	}
	if o.RetryMaxElapsed < 0 {
		bad("RetryMaxElapsed", "", "retry budget %v must not be negative; set NoRetry for no retries", o.RetryMaxElapsed)
	}
	if o.BroadcastInterval < 0 {
		bad("BroadcastInterval", "", "broadcast interval %v must not be negative", o.BroadcastInterval)
	}
	if o.DirectConcurrency < 1 {
		bad("DirectConcurrency", "", "direct concurrency %d must be at least 1", o.DirectConcurrency)
	}
	return errors.Join(errs...)
}
