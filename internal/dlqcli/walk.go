package dlqcli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
)

// msgSizeHeader is what a headers-only consumer sends in place of the
// body: its size.
const msgSizeHeader = "Nats-Msg-Size"

// fetchBatch is how many messages a walk asks for at once, and so the most
// it holds: 256 calls of at most 32 KB is 8 MB. It is also few enough that
// a replay at --rate 1 fetches again well within inactiveThreshold.
const fetchBatch = 256

// inactiveThreshold is how long the server keeps a walk's consumer between
// fetches. It removes the consumer of a walk killed before it could; a walk
// paused for longer (its output piped to a pager nobody scrolls) makes a
// new one and goes on.
const inactiveThreshold = 10 * time.Minute

// maxStalls bounds the fetches in a row that make no progress (nothing
// delivered while messages are pending, or a consumer to make again),
// before a walk gives up with an error instead of spinning.
const maxStalls = 5

// reopenFloor and reopenCeiling bound the wait before a walk makes its
// consumer again, doubling from one to the other: right after a stream
// leader step-down a new consumer's pulls answer "no responders" for a
// moment (the consumer has no leader yet), and making it again at once
// would use up maxStalls within milliseconds. Five stalls wait about 3s in
// all, longer than an election.
const (
	reopenFloor   = 200 * time.Millisecond
	reopenCeiling = 2 * time.Second
)

// requestTimeout bounds one JetStream request that retrying repeats.
const requestTimeout = 5 * time.Second

// errStopWalk, returned by a walk's callback, ends the walk without error.
var errStopWalk = errors.New("stop walk")

// errMissed is why a walk made a new consumer when no error said why:
// messages were delivered that it did not receive.
var errMissed = errors.New("messages delivered but not received")

// walkOpts tunes a walk.
type walkOpts struct {
	headersOnly bool   // read no bodies: Letter.Body is nil
	upTo        uint64 // last sequence to walk; 0 is the stream's last when the walk begins
}

// walk calls fn with each message of the dead-letter stream that f
// matches, in sequence order, up to the last sequence it returns: opts.upTo
// or the stream's last sequence when the walk began, so messages stored
// while it runs (a replayed call dead-lettered again) are not met. It stops
// with ctx's error when ctx is done, before the next message.
func walk(ctx context.Context, stream jetstream.Stream, f Filter, now time.Time, opts walkOpts, fn func(*Letter) error) (upTo uint64, err error) {
	upTo = opts.upTo
	if upTo == 0 {
		var info *jetstream.StreamInfo
		err := retrying(ctx, func(ctx context.Context) (err error) {
			info, err = stream.Info(ctx)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("reading the state of stream %s: %w", stream.CachedInfo().Config.Name, err)
		}
		if info.State.Msgs == 0 {
			return info.State.LastSeq, nil
		}
		upTo = info.State.LastSeq
	}
	w := &walker{stream: stream, subjects: f.dlqSubjects(), headersOnly: opts.headersOnly, next: 1}
	if err := w.open(ctx); err != nil {
		return upTo, err
	}
	defer w.close(ctx)

	stalls := 0
	for {
		if err := ctx.Err(); err != nil {
			return upTo, err
		}
		batch, err := w.cons.FetchNoWait(fetchBatch)
		if err != nil {
			return upTo, fmt.Errorf("fetching from stream %s: %w", w.name(), err)
		}
		n, gap := 0, false
		for m := range batch.Messages() {
			meta, err := m.Metadata()
			if err != nil {
				return upTo, fmt.Errorf("reading message metadata: %w", err)
			}
			// Without acks nothing is redelivered, so a gap in the
			// consumer's sequence is messages lost on the way: a fetch
			// the client gave up on that the server answered later.
			// The walk goes on from the last message it handled.
			if meta.Sequence.Consumer != w.delivered+1 {
				gap = true
				break
			}
			n++
			w.delivered = meta.Sequence.Consumer
			seq := meta.Sequence.Stream
			if seq > upTo {
				return upTo, nil
			}
			w.next = seq + 1
			// Replay intents are the replay's bookkeeping, not dead
			// letters: no command lists, counts or purges them.
			if l := letterOf(m, meta); !deadletter.IsIntent(l.Subject) && l.matches(f, now) {
				if err := ctx.Err(); err != nil {
					return upTo, err
				}
				if err := fn(l); err != nil {
					if errors.Is(err, errStopWalk) {
						return upTo, nil
					}
					return upTo, err
				}
			}
			if seq >= upTo {
				return upTo, nil
			}
		}
		if n > 0 {
			stalls = 0
		}
		err = batch.Error()
		switch {
		case gap, errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, nats.ErrNoResponders):
			// The consumer is gone (the server removed it, or nobody
			// answers its pull requests) or missed messages: a new one
			// goes on from where the walk is.
		case err != nil:
			return upTo, fmt.Errorf("fetching from stream %s: %w", w.name(), err)
		case n > 0:
			continue
		default:
			// An empty batch is the end, unless the consumer is gone.
			info, err := w.cons.Info(ctx)
			switch {
			case errors.Is(err, jetstream.ErrConsumerNotFound):
			case err != nil:
				return upTo, fmt.Errorf("reading the walk's consumer on stream %s: %w", w.name(), err)
			case info.Delivered.Consumer > w.delivered:
				// Delivered where the walk did not read: a fetch the
				// client gave up on, answered later.
			case info.NumPending == 0:
				return upTo, nil
			default:
				// Messages pending but none delivered: the fetch gave up
				// before the server answered; try it again.
				if stalls++; stalls > maxStalls {
					return upTo, fmt.Errorf("stream %s: reading makes no progress at sequence %d (%d messages pending)", w.name(), w.next, info.NumPending)
				}
				continue
			}
		}
		if stalls++; stalls > maxStalls {
			return upTo, fmt.Errorf("stream %s: reading makes no progress at sequence %d: %w", w.name(), w.next, cmp.Or(err, errMissed))
		}
		if err := pause(ctx, reopenWait(stalls)); err != nil {
			return upTo, err
		}
		if err := w.open(ctx); err != nil {
			return upTo, err
		}
	}
}

// walker is the consumer a walk reads through, and where it has got to.
type walker struct {
	stream      jetstream.Stream
	subjects    []string // dead-letter subjects; nil is all
	headersOnly bool
	cons        jetstream.Consumer
	next        uint64 // stream sequence to start a new consumer at
	delivered   uint64 // consumer sequence of the last message received
}

func (w *walker) name() string { return w.stream.CachedInfo().Config.Name }

// reopenWait is the wait before the stalls-th new consumer in a row.
func reopenWait(stalls int) time.Duration {
	d := reopenFloor
	for i := 1; i < stalls && d < reopenCeiling; i++ {
		d *= 2
	}
	return min(d, reopenCeiling)
}

// pause waits d, or until ctx is done.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// transient reports whether making a consumer failed only for now: during a
// leader election requests time out or find no responders, and JetStream
// may answer that it is temporarily unavailable.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		(errors.As(err, &apiErr) && apiErr.Code == 503)
}

// retrying calls fn, each call bounded by requestTimeout, until it
// succeeds, fails for good, or has failed transiently maxStalls+1 times in
// a row, waiting the reopen back-off between calls.
func retrying(ctx context.Context, fn func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, requestTimeout)
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !transient(err) || attempt > maxStalls {
			return err
		}
		if err := pause(ctx, reopenWait(attempt)); err != nil {
			return err
		}
	}
}

// open makes a new consumer starting at w.next, replacing the current one,
// trying again while the failure is transient.
func (w *walker) open(ctx context.Context) error {
	w.close(ctx)
	return retrying(ctx, w.create)
}

// create makes the walk's consumer.
func (w *walker) create(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		Description:       "cio-relay dlq: reading the dead-letter stream",
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       w.next,
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       w.headersOnly,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: inactiveThreshold,
	}
	if len(w.subjects) == 1 {
		cfg.FilterSubject = w.subjects[0] // also for servers before 2.10
	} else {
		cfg.FilterSubjects = w.subjects
	}
	cons, err := w.stream.CreateConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("reading stream %s (subjects %q): %w", w.name(), w.subjects, err)
	}
	w.cons, w.delivered = cons, 0
	return nil
}

// close removes the consumer. Failing that, the server removes it after
// inactiveThreshold.
func (w *walker) close(ctx context.Context) {
	if w.cons == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = w.stream.DeleteConsumer(ctx, w.cons.CachedInfo().Name)
	w.cons = nil
}
