package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/trigger"
)

// Sender delivers one CDP batch body. A nil error means Customer.io accepted
// it (2xx); other errors are classified with sink.Classify. SendBatch must
// not use body after it returns: the worker recycles its memory.
type Sender interface {
	SendBatch(ctx context.Context, body []byte) error
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
	ready                       atomic.Bool    // consumer bound and consuming
	health                      *jsHealth      // whether JetStream answers (health.go)
	ord                         *ordered       // the ordered batch path; nil when Ordering is off
	slabs                       *slabs         // the reader's recycled call buffers (slab.go)
	*settler                                   // acks, naks and dead letters (settle.go)
	*retrier                                   // requests with retries and pauses (attempt.go)
	track                       *trackRunner   // Track API calls (track.go)
	triggers                    *triggerRunner // broadcast triggers (broadcast.go)
}

// New returns a Worker; it does not touch JetStream until Run.
func New(js jetstream.JetStream, sender Sender, opts Options) (*Worker, error) {
	opts.setDefaults()
	if err := opts.check(); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	if _, err := batcher.NewPacker[*held](opts.BatchMaxBytes, opts.BatchMaxCalls); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	w := &Worker{js: js, sender: sender, opts: opts, log: opts.Logger, m: newMetrics(opts.Registerer), health: newJSHealth(opts.Registerer),
		slabs: newSlabs()}
	w.retrier = newRetrier(opts, w.log, w.m)
	w.settler = &settler{js: js, stream: opts.Stream, version: opts.Version, retryDLQ: opts.NakDelay,
		blockKey: w.blockKey, mayTerm: w.mayTerm, log: w.log, m: w.m, health: w.health}
	w.track = &trackRunner{retrier: w.retrier, settler: w.settler, pause: &w.trackPause, track: opts.Track, delivery: opts.Delivery,
		maxDeliver: opts.MaxDeliver, nakDelay: opts.NakDelay, m: w.m, log: w.log}
	w.triggers = &triggerRunner{retrier: w.retrier, settler: w.settler, pause: &w.appPause, app: opts.App,
		interval: opts.BroadcastInterval, maxDeliver: opts.MaxDeliver, nakDelay: opts.NakDelay, health: w.health, m: w.m, log: w.log}
	w.pause.init(sink.APICDP, "CIO_CDP_API_KEY, CIO_CDP_URL", w.m, w.log, opts.ProbeInterval)
	w.appPause.init(sink.APIApp, "CIO_APP_API_KEY, CIO_APP_URL", w.m, w.log, opts.ProbeInterval)
	w.trackPause.init(sink.APITrack, "CIO_SITE_ID, CIO_TRACK_API_KEY, CIO_TRACK_URL", w.m, w.log, opts.ProbeInterval)
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
	slab       *slab      // holds call's bytes until released (releaseCalls)
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

// callOf is a held call's wire bytes, for batcher.BodyOf and Halves.
func callOf(h *held) []byte { return h.call }

// InProgress extends the message's ack deadline.
func (h *held) InProgress() error { return h.msg.InProgress() }
