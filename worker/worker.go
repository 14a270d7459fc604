package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/trigger"
)

// Sender delivers one CDP batch body. A nil error means Customer.io accepted
// it (2xx); other errors are classified with sink.Classify. SendBatch must
// not use body after it returns: the worker recycles its memory.
type Sender interface {
	SendBatch(ctx context.Context, body []byte) error
}

// Options configures a Worker. Zero values take the defaults noted; they
// match config's, which is where an operator sets them.
type Options struct {
	Stream          string        // stream name; default "CIO"
	Consumer        string        // durable consumer name; default "cio-relay"
	DLQStream       string        // dead-letter stream name; default "CIO_DLQ"
	DLQMaxAge       time.Duration // dead-letter retention; default 30 days
	StreamReplicas  int           // replicas of the streams it creates, 1 to MaxStreamReplicas; default 1 (see bind)
	ManageStreams   bool          // create/update the streams and consumer at start
	AckWait         time.Duration // default 30s
	MaxAckPending   int           // default 20000
	MaxDeliver      int           // deliveries before a transiently failing call is dead-lettered; default 20
	BatchMaxBytes   int           // default and maximum batcher.MaxBatchBytes
	BatchMaxCalls   int           // default 2000
	FlushInterval   time.Duration // default 1s
	SendConcurrency int           // batches in flight at once; default 4
	// Ordering delivers each person's calls in stream order (see doc.go):
	// one pinned replica delivers, calls go to SendConcurrency lanes by
	// person key, each lane one batch at a time. config's default is on;
	// the zero value here is the unordered pipeline.
	Ordering bool
	NakDelay time.Duration // base redelivery delay after a failed send; default 30s
	// Retries of one batch within one delivery: exponential backoff with
	// jitter from RetryInitial up to RetryMaxInterval, for at most
	// RetryMaxElapsed (0: no retry, nak at once). Defaults 500ms, 30s, 2m.
	RetryInitial     time.Duration
	RetryMaxInterval time.Duration
	RetryMaxElapsed  time.Duration
	// ProbeInterval is how often a paused worker (401/403/404 from
	// Customer.io) tries again; default RetryMaxInterval.
	ProbeInterval time.Duration
	// Direct calls: a nil App, Track or Delivery leaves its subjects unconsumed.
	App               Triggerer
	Track             Suppressor
	Delivery          DeliveryReporter      // unsubscribes and metrics attributed to a delivery; need no credentials
	BroadcastInterval time.Duration         // Customer.io's pacing per broadcast; default trigger.Interval (10s)
	TriggerTimeout    time.Duration         // a trigger request is cut off after this (the App client's own timeout); sizes the turn a dead replica leaves (see turns.go); default 30s
	DirectConcurrency int                   // Track API calls in flight at once per consumer (the ordered ones have 1 anyway); default 4
	ShutdownTimeout   time.Duration         // time to finish in-flight sends after ctx is done; default 25s
	Version           string                // recorded on dead letters
	Logger            *slog.Logger          // default: discard
	Registerer        prometheus.Registerer // default: none
}

// DefaultRetryMaxElapsed is RetryMaxElapsed's default; set RetryMaxElapsed
// to NoRetry for none.
const (
	DefaultRetryMaxElapsed = 2 * time.Minute
	NoRetry                = time.Duration(-1)
)

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.Stream == "" {
		o.Stream = "CIO"
	}
	if o.Consumer == "" {
		o.Consumer = "cio-relay"
	}
	if o.DLQStream == "" {
		o.DLQStream = "CIO_DLQ"
	}
	def(&o.DLQMaxAge, 30*24*time.Hour)
	if o.StreamReplicas == 0 {
		o.StreamReplicas = 1
	}
	def(&o.AckWait, 30*time.Second)
	if o.MaxAckPending == 0 {
		o.MaxAckPending = 20000
	}
	if o.MaxDeliver == 0 {
		o.MaxDeliver = 20
	}
	if o.BatchMaxBytes == 0 {
		o.BatchMaxBytes = batcher.MaxBatchBytes
	}
	if o.BatchMaxCalls == 0 {
		o.BatchMaxCalls = 2000
	}
	def(&o.FlushInterval, time.Second)
	if o.SendConcurrency == 0 {
		o.SendConcurrency = 4
	}
	def(&o.NakDelay, 30*time.Second)
	def(&o.RetryInitial, 500*time.Millisecond)
	def(&o.RetryMaxInterval, 30*time.Second)
	def(&o.RetryMaxElapsed, DefaultRetryMaxElapsed)
	def(&o.ProbeInterval, o.RetryMaxInterval)
	def(&o.ShutdownTimeout, 25*time.Second)
	def(&o.BroadcastInterval, trigger.Interval)
	if o.DirectConcurrency == 0 {
		o.DirectConcurrency = 4
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func (o *Options) validate() error {
	var errs []error
	for _, name := range []string{o.Stream, o.DLQStream} {
		if strings.ContainsAny(name, "\"\\ \t\r\n.*>") {
			errs = append(errs, fmt.Errorf("stream name %q contains a character JetStream or a messageId cannot carry", name))
		}
	}
	if o.Stream == o.DLQStream {
		errs = append(errs, fmt.Errorf("stream and dead-letter stream are both %q", o.Stream))
	}
	if o.FlushInterval > o.AckWait/2 {
		errs = append(errs, fmt.Errorf("flush interval %v must be at most half the ack wait %v", o.FlushInterval, o.AckWait))
	}
	if o.SendConcurrency < 1 {
		errs = append(errs, fmt.Errorf("send concurrency %d must be at least 1", o.SendConcurrency))
	}
	if o.AckWait < 3*time.Millisecond {
		errs = append(errs, fmt.Errorf("ack wait %v too short", o.AckWait))
	}
	if o.BroadcastInterval < 0 || o.DirectConcurrency < 1 {
		errs = append(errs, fmt.Errorf("broadcast interval %v and direct concurrency %d must be positive", o.BroadcastInterval, o.DirectConcurrency))
	}
	if o.MaxDeliver < 1 {
		errs = append(errs, fmt.Errorf("max deliver %d must be at least 1", o.MaxDeliver))
	}
	if o.StreamReplicas < 1 || o.StreamReplicas > MaxStreamReplicas {
		errs = append(errs, fmt.Errorf("stream replicas %d must be from 1 to %d", o.StreamReplicas, MaxStreamReplicas))
	}
	return errors.Join(errs...)
}

// Worker consumes calls from JetStream and delivers them in batches.
type Worker struct {
	js     jetstream.JetStream
	sender Sender
	opts   Options
	log    *slog.Logger
	m      *metrics
	// One pause per API: a bad App API key must not stop CDP delivery.
	pause, appPause, trackPause pauseState
	ready                       atomic.Bool // consumer bound and consuming
	marks                       *sentMarks  // broadcast triggers sent or being sent; nil without App
	turns                       *turns      // whose turn it is to trigger each broadcast; nil without App
	health                      *jsHealth   // whether JetStream answers (health.go)
	ord                         *ordered    // the ordered batch path; nil when Ordering is off
}

// New returns a Worker; it does not touch JetStream until Run.
func New(js jetstream.JetStream, sender Sender, opts Options) (*Worker, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	if _, err := batcher.NewPacker[*held](opts.BatchMaxBytes, opts.BatchMaxCalls); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	w := &Worker{js: js, sender: sender, opts: opts, log: opts.Logger, m: newMetrics(opts.Registerer), health: newJSHealth(opts.Registerer)}
	w.pause.init("cdp", "CIO_CDP_API_KEY, CIO_CDP_URL", w.m, w.log, opts.ProbeInterval)
	w.appPause.init("app", "CIO_APP_API_KEY, CIO_APP_URL", w.m, w.log, opts.ProbeInterval)
	w.trackPause.init("track", "CIO_SITE_ID, CIO_TRACK_API_KEY, CIO_TRACK_URL", w.m, w.log, opts.ProbeInterval)
	return w, nil
}

// Ready reports whether the worker is bound to its consumer and consuming,
// and not paused on a configuration error from Customer.io. With the reason
// when it is not.
func (w *Worker) Ready() (bool, string) {
	if !w.ready.Load() {
		return false, "consumer not bound"
	}
	if ok, why := w.health.ready(time.Now()); !ok {
		return false, why
	}
	for _, p := range []*pauseState{&w.pause, &w.appPause, &w.trackPause} {
		if paused, why := p.paused(); paused {
			return false, why
		}
	}
	return true, ""
}

// held is one message in the worker's hands, from receipt until settled.
type held struct {
	msg        jetstream.Msg
	call       []byte     // wire bytes
	typ        event.Type // Unknown for a message that never became a call
	id         event.ID   // the messageId it gets when its body has none
	seq        uint64     // stream sequence
	deliveries uint64
	published  time.Time
	received   time.Time
	identifier string           // suppressions
	trigger    *trigger.Request // broadcast triggers
	// The ordered batch path's (see ordered); the fields after key are
	// guarded by its lock.
	ordered bool   // a batch call travelling the ordered path
	key     uint64 // event.Preparer.KeyHash
	cseq    uint64 // consumer sequence of this delivery
	drained bool   // batcher.Call.Drained
	parked  bool   // in a lane's queue, the gate or a wait list, not in a batch being sent
}

// InProgress extends the message's ack deadline.
func (h *held) InProgress() error { return h.msg.InProgress() }
