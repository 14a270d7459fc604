package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/trigger"
)

// Subjects of the direct calls: Customer.io operations that are not CDP calls
// and cannot be batched.
const (
	SubjectBroadcast  = "cio.broadcast"
	SubjectSuppress   = "cio.suppress"
	SubjectUnsuppress = "cio.unsuppress"
)

// Triggerer sends one API-triggered broadcast request (App API).
type Triggerer interface {
	Trigger(ctx context.Context, broadcastID int64, body []byte) (triggerID int64, err error)
}

// Suppressor suppresses and unsuppresses people (Track API).
type Suppressor interface {
	Suppress(ctx context.Context, identifier string) error
	Unsuppress(ctx context.Context, identifier string) error
}

// directConsumer is one durable consumer of direct calls.
type directConsumer struct {
	name     string
	subjects []string
	ordered  bool // its calls must reach Customer.io in stream order (see orderedMaxAckPending)
	optional bool // needs no credentials: not created by an operator is not an error (see boundDirectConsumers)
	triggers bool // broadcast triggers: they wait in a pacer (see intakeCapacity)
}

// Received ahead of the pipeline, per direct consumer (see intakeCapacity).
const (
	directIntake  = 100
	triggerIntake = 2
)

// intakeCapacity is how many of dc's messages the intake receives ahead of
// the pipeline. Direct calls are few and slow, so little. Triggers least:
// the pacer bounds what they hold by memory, every copy counted
// (trigger.PacerOptions.MaxPendingBytes), and a trigger received while it
// is full waits outside that bound, body and all (up to NATS's max_payload
// each). With 2 (a pull of 1), a full pacer has at most three such
// triggers beside it: two in the queue and one at the reader, waiting for
// room. With 100, every one of 38 triggers of 869 KB published beyond a
// full 64 MB bound was received and held (TestFullPacerHoldsLittleOutsideItsBound).
// A pull of 1 costs a round trip per trigger: thousands a second, against
// one request per broadcast per 10 seconds.
func (dc directConsumer) intakeCapacity() int {
	if dc.triggers {
		return triggerIntake
	}
	return directIntake
}

// directConsumers are the consumers of direct calls, one per API that has
// credentials: RELAY_CONSUMER with "-broadcast" or "-suppress" appended,
// and "-unsubscribe" and "-metric" for the Track API calls that need none
// (see trackConsumers).
// Separate from the batch consumer, a broadcast waiting for its 10-second
// turn never holds up batches; separate from each other, replicas configured
// with different credentials never rewrite each other's filters. An API without
// credentials has no consumer: its messages stay in the stream, unconsumed,
// until a worker with credentials runs. Nothing is dropped for want of a key.
func (w *Worker) directConsumers() []directConsumer {
	var cs []directConsumer
	if w.opts.App != nil {
		cs = append(cs, directConsumer{name: w.opts.Consumer + "-broadcast", subjects: []string{SubjectBroadcast}, triggers: true})
	}
	return append(cs, w.trackConsumers()...)
}

// runDirect handles direct calls until the intake has stopped and handed
// out what it received: Track API calls go to a small pool of senders (in
// stream order where it matters, as the server hands out one at a time: see
// orderedMaxAckPending); triggers go through the pacer, which releases at
// most one request per broadcast per trigger.Interval and coalesces what
// waits. While they are all busy (or the pacer is full) it takes nothing
// more, and the intake stops pulling.
func (w *Worker) runDirect(ctx context.Context, in *intake, pacer *trigger.Pacer[*held], leases *leases[*held]) {
	var wg sync.WaitGroup
	trackCalls := make(chan trackCall)
	for range w.opts.DirectConcurrency {
		wg.Go(func() {
			for c := range trackCalls {
				w.track.send(ctx, c)
				leases.remove(c.h)
			}
		})
	}
	work := make(chan struct{}, 1) // the pacer may have something to release
	room := make(chan struct{}, 1) // the pacer may have room again
	readerDone := make(chan struct{})
	wg.Go(func() { w.triggers.pace(ctx, pacer, work, room, readerDone, leases) })

	for h, ok := in.next(); ok; h, ok = in.next() {
		msg := h.msg
		switch msg.Subject() {
		case SubjectSuppress, SubjectUnsuppress, SubjectUnsubscribe, SubjectMetric:
			c, err := parseTrackCall(h)
			if err != nil {
				w.rejectInput(ctx, h, err, leases)
				continue
			}
			trackCalls <- c
		case SubjectBroadcast:
			req, err := trigger.Parse(msg.Data())
			if err != nil {
				w.rejectInput(ctx, h, err, leases)
				continue
			}
			h.trigger = req
			for {
				err := pacer.Add(req, h)
				if !errors.Is(err, trigger.ErrFull) {
					break
				}
				// Full: wait for an answer to free room. The lease keeps
				// this message alive meanwhile.
				select {
				case <-room:
				case <-ctx.Done():
				}
				if ctx.Err() != nil {
					w.nakNow([]*held{h})
					leases.remove(h)
					break
				}
			}
			signal(work)
		default:
			w.rejectInput(ctx, h, &event.InvalidError{Reason: event.ReasonUnknownType, Detail: "no direct call on subject " + msg.Subject()}, leases)
		}
	}
	close(trackCalls)
	close(readerDone)
	wg.Wait()
}

// signal wakes whoever waits on c, without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
