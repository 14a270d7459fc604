package dlqcli

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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
// delivered while messages are pending, or no answer), before a walk gives
// up with an error instead of spinning. It also bounds the attempts of the
// ordered consumer at making its next consumer (MaxResetAttempts).
const maxStalls = 5

// reopenFloor and reopenCeiling bound the wait before a walk fetches again
// after a fetch that made no progress, doubling from one to the other:
// right after a stream leader step-down a new consumer's pulls answer "no
// responders" for a moment (the consumer has no leader yet), and fetching
// again at once would use up maxStalls within milliseconds. Five stalls
// wait about 3s in all, longer than an election.
const (
	reopenFloor   = 200 * time.Millisecond
	reopenCeiling = 2 * time.Second
)

// requestTimeout bounds one JetStream request that retrying repeats.
const requestTimeout = 5 * time.Second

// errStopWalk, returned by a walk's callback, ends the walk without error.
var errStopWalk = errors.New("stop walk")

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
//
// It reads through nats.go's ordered consumer, which makes a new
// server-side consumer for every fetch, starting after the last message
// received: a consumer the server removed (inactiveThreshold, when the
// output is piped to a pager nobody scrolls), or messages delivered where
// nobody read them (a fetch the client gave up on, answered later), cost
// nothing. What the walk adds is the end (upTo, or nothing pending) and
// patience with a cluster electing a leader.
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
	w := &walker{stream: stream, subjects: f.dlqSubjects(), headersOnly: opts.headersOnly, prefix: "cio-relay-dlq-" + rand.Text(), next: 1}
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
		if err != nil && !fetchAgain(err) {
			return upTo, fmt.Errorf("fetching from stream %s: %w", w.name(), err)
		}
		n, gap := 0, false
		if err == nil {
			var delivered uint64 // consumer sequence of the last message of this fetch
			for m := range batch.Messages() {
				if gap {
					continue // drained: the ordered consumer fetches only once a fetch is done
				}
				meta, err := m.Metadata()
				if err != nil {
					return upTo, fmt.Errorf("reading message metadata: %w", err)
				}
				// Each fetch has a consumer of its own, which nobody
				// else should read: a gap is messages someone else
				// took, and the walk goes on from the last it handled.
				if meta.Sequence.Consumer != delivered+1 {
					gap = true
					continue
				}
				n++
				delivered = meta.Sequence.Consumer
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
			err = batch.Error()
		}
		if n > 0 {
			stalls = 0
		}
		switch {
		case gap:
			if err := w.open(ctx); err != nil {
				return upTo, err
			}
			continue
		case err != nil && !fetchAgain(err):
			return upTo, fmt.Errorf("fetching from stream %s: %w", w.name(), err)
		case err == nil && n > 0:
			continue
		case err == nil:
			// An empty fetch is the end, unless the stream still holds a
			// message to walk: the fetch gave up before the server
			// answered (it waits a second), or a consumer just made on a
			// new leader answered before it knew its messages.
			more, err := w.left(ctx, upTo)
			if err != nil && !transient(err) {
				return upTo, fmt.Errorf("reading stream %s: %w", w.name(), err)
			}
			if err == nil && !more {
				return upTo, nil
			}
		}
		// No answer, or no progress: a cluster electing a leader, say.
		if stalls++; stalls > maxStalls {
			return upTo, fmt.Errorf("stream %s: reading makes no progress at sequence %d: %w", w.name(), w.next, cmp.Or(err, errNoProgress))
		}
		if err := pause(ctx, reopenWait(stalls)); err != nil {
			return upTo, err
		}
	}
}

// left reports whether the stream holds a message the walk has still to
// meet: one of its subjects, from w.next to upTo. The stream is the
// truth; a consumer's pending count is only its view of it.
func (w *walker) left(ctx context.Context, upTo uint64) (bool, error) {
	subjects := w.subjects
	if len(subjects) == 0 {
		subjects = []string{">"}
	}
	for _, subject := range subjects {
		m, err := w.stream.GetMsg(ctx, w.next, jetstream.WithGetMsgSubject(subject))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return false, err
		case m.Sequence <= upTo:
			return true, nil
		}
	}
	return false, nil
}

// errNoProgress is why a walk gave up when no error said why: messages
// pending that fetches do not deliver.
var errNoProgress = errors.New("messages pending but not delivered")

// walker is the ordered consumer a walk reads through, and where it has
// got to.
type walker struct {
	stream      jetstream.Stream
	subjects    []string // dead-letter subjects; nil is all
	headersOnly bool
	prefix      string // of the names of the consumers it makes
	cons        jetstream.Consumer
	next        uint64 // stream sequence to start a new ordered consumer at
}

func (w *walker) name() string { return w.stream.CachedInfo().Config.Name }

// reopenWait is the wait before the stalls-th fetch in a row that makes no
// progress.
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

// fetchAgain reports whether a fetch that failed with err is worth another:
// a transient failure, or the consumer gone (removed by the server, or by
// someone else) under it, which the next fetch makes again.
func fetchAgain(err error) bool {
	return transient(err) || errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound)
}

// transient reports whether a request failed only for now: during a
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

// open makes a new ordered consumer starting at w.next, replacing the
// current one, trying again while the failure is transient.
func (w *walker) open(ctx context.Context) error {
	w.close(ctx)
	return retrying(ctx, func(ctx context.Context) error {
		cons, err := w.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects:    w.subjects,
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       w.next,
			HeadersOnly:       w.headersOnly,
			InactiveThreshold: inactiveThreshold,
			MaxResetAttempts:  maxStalls + 1,
			NamePrefix:        w.prefix,
		})
		if err != nil {
			return fmt.Errorf("reading stream %s (subjects %q): %w", w.name(), w.subjects, err)
		}
		w.cons = cons
		return nil
	})
}

// close removes every consumer the walk made: the current one, the one
// before it (the ordered consumer deletes a consumer it replaces in the
// background, and that delete may still be in flight), and any other
// still listed under the walk's prefix. Failing that, the server removes
// them after inactiveThreshold.
func (w *walker) close(ctx context.Context) {
	if w.cons == nil {
		return
	}
	current := w.cons.CachedInfo()
	w.cons = nil
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var names []string
	if current != nil {
		names = append(names, current.Name)
		if i := strings.LastIndexByte(current.Name, '_'); i >= 0 {
			if serial, err := strconv.Atoi(current.Name[i+1:]); err == nil && serial > 1 {
				names = append(names, current.Name[:i+1]+strconv.Itoa(serial-1))
			}
		}
	}
	for _, name := range names {
		_ = w.stream.DeleteConsumer(ctx, name)
	}
	lister := w.stream.ConsumerNames(ctx)
	var rest []string
	for name := range lister.Name() {
		if strings.HasPrefix(name, w.prefix+"_") && !slices.Contains(names, name) {
			rest = append(rest, name)
		}
	}
	for _, name := range rest {
		_ = w.stream.DeleteConsumer(ctx, name)
	}
}
