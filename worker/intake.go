package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// intake pulls messages from one consumer into a bounded queue that the
// pipeline reads, and leases each message the moment it arrives. It asks
// JetStream for messages only when the queue has room for a whole pull, so
// nothing ever waits un-leased in a client buffer: when the pipeline blocks
// (Customer.io slow or paused, a long retry, a full pacer) the queue fills
// and the fetching stops, while every message already received keeps its
// lease until it is settled.
type intake struct {
	cons  jetstream.Consumer
	fetch func(ctx context.Context, n int) (jetstream.MessageBatch, error) // one pull request, ended by ctx
	name  string                                                           // the consumer, for logs and errors
	take  func(jetstream.Msg) (*held, bool)                                // leases a message; false: not one to handle
	queue chan *held                                                       // received, leased, not yet taken by the pipeline
	freed chan struct{}                                                    // the pipeline took something while the intake waited for room
	wants atomic.Bool                                                      // the intake waits for room: next signals freed
	pull  int                                                              // messages asked for by one pull request: half the queue
	log   *slog.Logger

	// health is told of failed pulls and of messages received; nil in tests.
	health *jsHealth
	// The batch consumer's priority group, when it has one: every pull
	// names it (the server answers 400 to one that does not), and asks
	// again within orderedPullExpiry so the pin is kept (see PinnedTTL).
	group  string
	expiry time.Duration
	// shortPulls makes every pull expire within orderedPullExpiry, group
	// or not: the ordered path lets its delivery lease go only once its
	// last pull has ended (see letGo), and an idle stream's 30s pull would
	// hold the handover that long.
	shortPulls bool
	// pinLost is called when a pull is refused for a pin another replica
	// holds now; repair when one is refused as a bad request, which for
	// the batch consumer means its priority groups changed (an older
	// version rewrote it, or a replica put them on): it returns the
	// consumer as it is now.
	pinLost func()
	repair  func(context.Context) (jetstream.Consumer, error)
	// allowed, when set, says whether to ask for messages now (the
	// ordered path: only while this replica holds the delivery lease);
	// whoever makes it true signals freed. A pull already open runs to
	// its end. pulling is whether one is open.
	allowed func() bool
	pulling atomic.Bool
}

const (
	// pullExpiry is how long one pull request waits on an idle stream.
	// Long enough that an idle replica asks rarely; a stop waits for it at
	// most stopGrace.
	pullExpiry = 30 * time.Second
	// pullHeartbeat is how often the server confirms an open pull is alive,
	// so a node that died or a route that broke is noticed within two of
	// them and the pull is asked again.
	pullHeartbeat = 5 * time.Second
	// stopGrace is how long a stop lets the open pull finish delivering
	// what the server has sent before cancelling it.
	stopGrace = time.Second
	// retryFloor and retryCeiling bound the wait before asking again after
	// a failed pull; it doubles from one to the other.
	retryFloor   = 100 * time.Millisecond
	retryCeiling = 5 * time.Second
)

// newIntake returns an intake for cons that holds at most capacity messages
// received and not yet taken by the pipeline; take leases each one.
func newIntake(cons jetstream.Consumer, capacity int, take func(jetstream.Msg) (*held, bool), log *slog.Logger) *intake {
	capacity = max(capacity, 1)
	in := &intake{
		name: cons.CachedInfo().Name, take: take,
		queue: make(chan *held, capacity), freed: make(chan struct{}, 1),
		pull: max(capacity/2, 1), log: log,
	}
	// nats.go's Fetch allocates a timer per message (a time.After in the
	// loop that hands a pull's messages out: about 2.7 of the relay's 8.4
	// allocations per event). FetchNoWait, FetchBytes and Next run the
	// same loop (Next is a pull of one), so no other use of them avoids it;
	// Consume and Messages would, at the price of messages waiting
	// un-leased in the client's buffer.
	in.fetch = func(ctx context.Context, n int) (jetstream.MessageBatch, error) {
		hb := jetstream.FetchHeartbeat(min(pullHeartbeat, in.expiry/3))
		if in.group != "" {
			return in.cons.Fetch(n, jetstream.FetchContext(ctx), hb, jetstream.FetchPriorityGroup(in.group))
		}
		return in.cons.Fetch(n, jetstream.FetchContext(ctx), hb)
	}
	in.use(cons)
	return in
}

// use pulls from cons from now on, with its priority group if it has one.
func (in *intake) use(cons jetstream.Consumer) {
	in.cons, in.group, in.expiry = cons, "", pullExpiry
	if groups := cons.CachedInfo().Config.PriorityGroups; len(groups) > 0 {
		in.group, in.expiry = groups[0], orderedPullExpiry
		if slices.Contains(groups, PriorityGroup) {
			in.group = PriorityGroup
		}
	}
	if in.shortPulls {
		in.expiry = orderedPullExpiry
	}
}

// next returns the next received message; false once the intake has
// stopped and everything it received has been taken.
func (in *intake) next() (*held, bool) {
	h, ok := <-in.queue
	if ok && in.wants.Load() {
		signal(in.freed)
	}
	return h, ok
}

// empty reports whether nothing received waits in the queue.
func (in *intake) empty() bool { return len(in.queue) == 0 }

// roomForPull reports whether the queue has room for a whole pull. When it
// has not, it asks next to signal freed, and checks again, so a message
// taken meanwhile is not missed.
func (in *intake) roomForPull() bool {
	if cap(in.queue)-len(in.queue) >= in.pull {
		in.wants.Store(false)
		return true
	}
	in.wants.Store(true)
	return cap(in.queue)-len(in.queue) >= in.pull
}

// openPull is the pull request in flight.
type openPull struct {
	batch  jetstream.MessageBatch
	msgs   <-chan jetstream.Msg
	cancel context.CancelFunc
	left   int // messages it may still bring
}

// run pulls until ctx is done, then cancels its open pull, queues what it
// had already received and closes the queue. A failed pull (a missing
// heartbeat, a leader change, NATS unreachable) is logged and asked again
// after a back-off: only a consumer that no longer exists ends run early,
// with an error.
//
// One pull is open at a time: JetStream hands the messages of several open
// requests out in turn, which would mix up stream order. A pull asks for
// half the queue, so the next one is on its way while the previous one's
// messages are still being handed out.
func (in *intake) run(ctx context.Context) error {
	defer close(in.queue)
	defer in.pulling.Store(false)
	var (
		cur     *openPull
		retry   = retryFloor
		retryAt time.Time
		timer   = time.NewTimer(time.Hour)
		done    = ctx.Done()
	)
	defer timer.Stop()
	defer func() {
		if cur != nil {
			cur.cancel()
		}
	}()
	for {
		if cur == nil && done != nil && !time.Now().Before(retryAt) && in.roomForPull() && (in.allowed == nil || in.allowed()) {
			// Its deadline sets the request's expiry; a stop ends it
			// sooner (below).
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.expiry)
			b, err := in.fetch(pctx, in.pull)
			if err != nil {
				cancel()
				if err := in.failed(ctx, err); err != nil {
					return err
				}
				retryAt, retry = time.Now().Add(retry), min(2*retry, retryCeiling)
				timer.Reset(time.Until(retryAt))
			} else {
				cur = &openPull{batch: b, msgs: b.Messages(), cancel: cancel, left: in.pull}
				in.pulling.Store(true)
			}
		}
		if cur == nil {
			in.pulling.Store(false)
		}
		if cur == nil && done == nil {
			return nil
		}
		var msgs <-chan jetstream.Msg
		if cur != nil {
			msgs = cur.msgs
		}
		select {
		case msg, ok := <-msgs:
			if ok {
				cur.left--
				retry = retryFloor
				in.health.answered()
				if h, ok := in.take(msg); ok {
					in.queue <- h // never blocks: room was there for the whole pull
				}
				continue
			}
			// The pull has ended: complete, expired, cancelled or failed.
			p := cur
			cur = nil
			p.cancel()
			err := p.batch.Error()
			if err == nil || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			if err := in.failed(ctx, err); err != nil {
				return err
			}
			retryAt, retry = time.Now().Add(retry), min(2*retry, retryCeiling)
			timer.Reset(time.Until(retryAt))
		case <-in.freed:
		case <-timer.C:
		case <-done:
			// Stop pulling. The open pull may still be bringing what the
			// server has already sent (a backlog fills it at once): give
			// it a moment to end by itself, so nothing received is left
			// to its ack wait, then cancel it (an idle stream, or NATS
			// unreachable).
			done = nil
			if cur != nil {
				time.AfterFunc(stopGrace, cur.cancel)
			}
		}
	}
}

// failed decides what a failed pull means: nothing lasting, unless the
// consumer is gone (deleted by an operator, say), which is returned so Run
// ends and the process restarts and binds again instead of idling as ready.
func (in *intake) failed(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		in.health.failed(opPull, err, time.Now())
	}
	if errors.Is(err, jetstream.ErrConsumerDeleted) {
		return fmt.Errorf("pulling from consumer %s: %w", in.name, err)
	}
	if errors.Is(err, jetstream.ErrPinIDMismatch) {
		if in.pinLost != nil {
			in.pinLost()
		}
		return nil
	}
	if errors.Is(err, jetstream.ErrBadRequest) && in.repair != nil {
		cons, rerr := in.repair(ctx)
		if rerr != nil {
			in.log.Warn("pull refused as a bad request, and checking the consumer's priority groups failed; pulling again",
				"consumer", in.name, "err", err, "check_err", rerr)
			return nil
		}
		in.use(cons)
		in.log.Warn("pull refused as a bad request: the consumer's priority groups changed; pulling with them",
			"consumer", in.name, "group", in.group)
		return nil
	}
	if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConsumerLeadershipChanged) {
		in.log.Warn("pull interrupted; pulling again", "consumer", in.name, "err", err)
		return nil
	}
	// Anything else (no responders, a closed connection, a bad request)
	// may mean the consumer is gone: ask.
	infoCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, ierr := in.cons.Info(infoCtx); errors.Is(ierr, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("pulling from consumer %s: %w (%w)", in.name, ierr, err)
	}
	if ctx.Err() == nil {
		in.log.Warn("pull failed; pulling again", "consumer", in.name, "err", err)
	}
	return nil
}
