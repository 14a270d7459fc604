package publish

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/event"
)

// DefaultMaxPending is the default of [Options.MaxPending]: enough calls in
// flight to keep a connection busy across a round trip, few enough that
// they hold little memory (256 calls of at most 32 KB is 8 MB).
const DefaultMaxPending = 256

// maxMsgIDHeader bounds a messageId used as it is for Nats-Msg-Id; a longer
// one, or one with control characters, is hashed.
const maxMsgIDHeader = 256

// stallWait is how long PublishMsgAsync may wait when the JetStream
// context's own limit (jetstream.WithPublishAsyncMaxPending, shared by all
// its users) is reached. The Publisher's own bound applies first; this only
// keeps a context shared with other publishers from failing a call after
// the library's default 200ms.
const stallWait = 30 * time.Second

// DefaultAckTimeout is the default of [Options.AckTimeout]: nats.go's own
// timeout of a JetStream request. A stored call is acknowledged in
// milliseconds; one that waits this long was lost with a node or an
// election.
const DefaultAckTimeout = 5 * time.Second

// DefaultRetryMaxElapsed is the default of [Options.RetryMaxElapsed]: a
// JetStream leader election takes a few seconds, the loss of a node with
// the meta leader on it some more; 30 seconds rides out several, and stays
// well inside cio-relay's 2-minute duplicate window (see
// [Options.RetryMaxElapsed]).
const DefaultRetryMaxElapsed = 30 * time.Second

// NoRetry, as [Options.RetryMaxElapsed], fails a call at its first
// failure.
const NoRetry = time.Duration(-1)

// Backoff between attempts of one call: from retryInitial, doubling up to
// retryMaxInterval, with jitter so that the calls failed by one election
// are not sent again all at once.
const (
	retryInitial     = 100 * time.Millisecond
	retryMaxInterval = 2 * time.Second
)

// Options configures a Publisher. Zero values take the defaults noted.
type Options struct {
	// MaxPending bounds the calls awaiting their PubAck; Publish waits for
	// the oldest when it is reached. Default DefaultMaxPending.
	MaxPending int
	// Stream, if set, is the stream calls must be stored in (the
	// Nats-Expected-Stream header): a call that no stream, or another
	// stream, would store fails instead. cio-relay's is "CIO"
	// (RELAY_STREAM).
	Stream string
	// IDPrefix starts the messageId made for a call without one; a counter
	// follows. Letters, digits and . _ : - only. Default: 32 random hex
	// digits and "-", new for each Publisher.
	IDPrefix string
	// AckTimeout is how long a call waits for its PubAck before it is sent
	// again (the PubAck of a call the stream leader took as it died never
	// comes). Default DefaultAckTimeout. nats.go keeps waiting for such a
	// PubAck unless the JetStream context was made with
	// jetstream.WithPublishAsyncTimeout, which lets it forget one.
	AckTimeout time.Duration
	// RetryMaxElapsed bounds how long a call is sent again, with the same
	// Nats-Msg-Id, after a PubAck timeout, "no responders" (no stream
	// leader) or a stream that is between leaders; after that it fails.
	// Keep it below the stream's duplicate window, which is what drops the
	// copy of a call stored before its PubAck was lost. Default
	// DefaultRetryMaxElapsed; NoRetry for none.
	RetryMaxElapsed time.Duration
	// OnFailure, if set, is called with each call that was sent but not
	// stored (retries spent, or rejected), as its failure is known, from
	// within the Publisher's methods: it must not call them.
	// [Publisher.Wait] returns only the first. A call that cannot be sent
	// at all is Publish's own error.
	OnFailure func(*PublishError)
}

func (o *Options) setDefaults() error {
	if o.MaxPending == 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.RetryMaxElapsed == 0 {
		o.RetryMaxElapsed = DefaultRetryMaxElapsed
	}
	if o.IDPrefix == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("making a messageId prefix: %w", err)
		}
		o.IDPrefix = hex.EncodeToString(b[:]) + "-"
	}
	return nil
}

func (o *Options) validate() error {
	var errs []error
	if o.MaxPending < 1 {
		errs = append(errs, fmt.Errorf("MaxPending must be at least 1, got %d", o.MaxPending))
	}
	if err := CheckIDPrefix(o.IDPrefix); err != nil {
		errs = append(errs, err)
	}
	if o.AckTimeout < 0 {
		errs = append(errs, fmt.Errorf("AckTimeout must not be negative, got %v", o.AckTimeout))
	}
	if o.RetryMaxElapsed < 0 && o.RetryMaxElapsed != NoRetry {
		errs = append(errs, fmt.Errorf("RetryMaxElapsed must not be negative (NoRetry aside), got %v", o.RetryMaxElapsed))
	}
	return errors.Join(errs...)
}

// CheckIDPrefix reports whether p can start messageIds: the prefix is
// inserted into the call's JSON as it is, so it must need no escaping; the
// rest keeps ids easy to quote and grep.
func CheckIDPrefix(p string) error {
	if strings.ContainsFunc(p, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:-", r))
	}) {
		return fmt.Errorf("IDPrefix %q may hold only letters, digits and . _ : -", p)
	}
	return nil
}

// Publisher publishes calls to JetStream. It is safe for concurrent use;
// publishes are sent one at a time, in the order Publish is called (a call
// sent again after a failure may be stored after later ones).
type Publisher struct {
	js   jetstream.JetStream
	opts Options

	mu      sync.Mutex
	prep    event.Preparer
	seq     uint64    // of the last generated messageId
	pending []pending // awaiting a PubAck, oldest first
	failure error     // the first since the last Wait
	stats   Stats
}

// pending is a call awaiting its PubAck.
type pending struct {
	fut      jetstream.PubAckFuture
	msg      *nats.Msg // to send again, with the same Nats-Msg-Id
	id       string
	subject  string
	size     int
	deadline time.Time                   // for the PubAck of the last attempt
	err      error                       // of the last attempt, taken from fut, not yet acted on
	attempts int                         // sent so far
	retry    *backoff.ExponentialBackOff // from the first failure; nil before
}

// Stats counts the calls whose PubAck, or failure, has come back.
type Stats struct {
	Published  int64 // stored, or already stored (duplicates included)
	Duplicates int64 // of Published: dropped by JetStream as a repeat of an earlier Nats-Msg-Id
	Failed     int64 // not stored
	Retries    int64 // times a call was sent again after a PubAck timeout, no responders or a leader change
	Bytes      int64 // of the wire forms of the Published calls
}

// PublishError is a call that was not stored.
type PublishError struct {
	MessageID string
	Subject   string
	Err       error
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("publishing call %s to %s: %v", e.MessageID, e.Subject, e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }

// New returns a Publisher that publishes through js.
func New(js jetstream.JetStream, opts Options) (*Publisher, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("publish options: %w", err)
	}
	return &Publisher{js: js, opts: opts}, nil
}

// Publish validates call, a JSON object whose "type" field names its type,
// and publishes it on cio.<type>. It returns the call's messageId once the
// call is sent; [Publisher.Wait] says whether it was stored. An invalid call
// is not published and its error is an [*event.InvalidError].
func (p *Publisher) Publish(ctx context.Context, call []byte) (messageID string, err error) {
	return p.PublishType(ctx, event.Unknown, call)
}

// PublishType is [Publisher.Publish] for a call of type t, whose body need
// not say its type (if it does, it must be t). t Unknown takes the type
// from the body, as Publish does.
func (p *Publisher) PublishType(ctx context.Context, t event.Type, body []byte) (messageID string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, wire, id, err := p.prepare(t, body)
	if err != nil {
		return "", err
	}
	p.reap()
	for len(p.pending) >= p.opts.MaxPending {
		if err := p.settleOldest(ctx); err != nil {
			return "", err
		}
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m := &nats.Msg{Subject: t.Subject(), Data: wire, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, headerID(id))
	c := pending{msg: m, id: id, subject: m.Subject, size: len(wire)}
	if err := p.send(&c); err != nil && !Retryable(err) {
		// Not sent, and sending again would not help (a closed connection,
		// say): the caller learns it now.
		p.stats.Failed++
		return "", &PublishError{MessageID: id, Subject: m.Subject, Err: err}
	}
	// A call whose send failed transiently is queued with its error, and
	// sent again when it is the oldest.
	p.pending = append(p.pending, c)
	return id, nil
}

// send sends one attempt of c.
func (p *Publisher) send(c *pending) error {
	opts := []jetstream.PublishOpt{jetstream.WithStallWait(stallWait)}
	if p.opts.Stream != "" {
		opts = append(opts, jetstream.WithExpectStream(p.opts.Stream))
	}
	c.attempts++
	c.deadline = time.Now().Add(p.opts.AckTimeout)
	// A message of its own per attempt: PublishMsgAsync sets headers on the
	// message it is given, and nats.go may still hold an earlier attempt's,
	// re-publishing it after "no responders" from a timer of its own.
	m := &nats.Msg{Subject: c.msg.Subject, Data: c.msg.Data, Header: cloneHeader(c.msg.Header)}
	fut, err := p.js.PublishMsgAsync(m, opts...)
	c.fut, c.err = fut, err
	return err
}

// cloneHeader copies h, values too.
func cloneHeader(h nats.Header) nats.Header {
	c := make(nats.Header, len(h))
	for k, v := range h {
		c[k] = slices.Clone(v)
	}
	return c
}

// prepare validates body as the worker will and returns its type, wire
// form and messageId.
func (p *Publisher) prepare(t event.Type, body []byte) (event.Type, []byte, string, error) {
	var fields map[string]json.RawMessage
	var err error
	if t == event.Unknown {
		if fields, err = members(body); err != nil {
			return t, nil, "", err
		}
		if t, err = typeOf(fields); err != nil {
			return t, nil, "", err
		}
	}
	gen := event.ID{Prefix: p.opts.IDPrefix, Seq: p.seq + 1}
	wire, err := p.prep.Prepare(nil, t, body, gen)
	if err != nil {
		return t, nil, "", err
	}
	if fields == nil {
		if fields, err = members(body); err != nil { // Prepare accepted it: cannot happen
			return t, nil, "", err
		}
	}
	raw, ok := fields["messageId"]
	if !ok {
		p.seq++
		return t, wire, gen.Prefix + strconv.FormatUint(gen.Seq, 10), nil
	}
	var id string
	if err := json.Unmarshal(raw, &id); err != nil { // Prepare checked it is a string: cannot happen
		return t, nil, "", &event.InvalidError{Reason: event.ReasonInvalidField, Detail: "messageId: " + err.Error()}
	}
	return t, wire, id, nil
}

// typeOf returns the type a call's "type" member names.
func typeOf(fields map[string]json.RawMessage) (event.Type, error) {
	raw, ok := fields["type"]
	if !ok {
		return event.Unknown, &event.InvalidError{Reason: event.ReasonUnknownType,
			Detail: `no "type" field: give the call's type (identify, track, page, screen, group or alias)`}
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		return event.Unknown, &event.InvalidError{Reason: event.ReasonInvalidField, Detail: "type must be a string"}
	}
	t := event.ParseType(name)
	if t == event.Unknown {
		return event.Unknown, &event.InvalidError{Reason: event.ReasonUnknownType,
			Detail: fmt.Sprintf("type %q is not one of identify, track, page, screen, group, alias", truncate(name))}
	}
	return t, nil
}

// members returns the top-level members of a call, keys decoded, with the
// errors the worker would give a body that is not a JSON object.
func members(body []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(body) {
		return nil, &event.InvalidError{Reason: event.ReasonInvalidUTF8, Detail: "body is not valid UTF-8"}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		detail := "body must be a JSON object"
		var se *json.SyntaxError
		if errors.As(err, &se) {
			detail = se.Error()
		}
		return nil, &event.InvalidError{Reason: event.ReasonInvalidJSON, Detail: detail}
	}
	return fields, nil
}

// headerID is the Nats-Msg-Id for a messageId: the id itself when a header
// can carry it, otherwise a hash of it, which de-duplicates just as well.
func headerID(id string) string {
	if len(id) <= maxMsgIDHeader && !strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256-" + hex.EncodeToString(sum[:])
}

func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// reap settles the calls at the head of the queue whose PubAck has come,
// without waiting. It stops at a call that must be sent again, which
// waits for its backoff in settleOldest.
func (p *Publisher) reap() {
	for len(p.pending) > 0 {
		c := &p.pending[0]
		if c.err == nil {
			select {
			case ack := <-c.fut.Ok():
				p.settle(ack, nil)
				continue
			case err := <-c.fut.Err():
				c.err = err
			default:
				if !time.Now().After(c.deadline) {
					return
				}
				c.err = ErrAckTimeout
			}
		}
		if Retryable(c.err) && p.opts.RetryMaxElapsed != NoRetry {
			return
		}
		p.settle(nil, c.err)
	}
}

// settleOldest waits until the oldest call is stored or has failed for
// good, sending it again while its failure is transient and its retry
// budget lasts, or until ctx is done.
func (p *Publisher) settleOldest(ctx context.Context) error {
	c := &p.pending[0]
	for {
		if c.err == nil {
			stored, err := p.await(ctx, c)
			if err != nil || stored {
				return err
			}
		}
		if !Retryable(c.err) || p.opts.RetryMaxElapsed == NoRetry {
			p.settle(nil, c.err)
			return nil
		}
		if c.retry == nil {
			c.retry = newRetry(p.opts.RetryMaxElapsed)
		}
		wait := c.retry.NextBackOff()
		if wait == backoff.Stop {
			p.settle(nil, fmt.Errorf("%w (gave up after %d attempts in %v)", c.err, c.attempts, c.retry.GetElapsedTime().Round(time.Millisecond)))
			return nil
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err() // c keeps its error: the next wait sends it again
		}
		p.stats.Retries++
		p.send(c) // its error, if any, is acted on at the top
	}
}

// await waits for the PubAck of the oldest call's last attempt, c: it
// settles a stored call, and records a failure (a PubAck timeout
// included) in c.err.
func (p *Publisher) await(ctx context.Context, c *pending) (stored bool, err error) {
	// An answer already in takes precedence over a deadline already past,
	// which the select below would pick at random.
	select {
	case ack := <-c.fut.Ok():
		p.settle(ack, nil)
		return true, nil
	case err := <-c.fut.Err():
		c.err = err
		return false, nil
	default:
	}
	timer := time.NewTimer(time.Until(c.deadline))
	defer timer.Stop()
	select {
	case ack := <-c.fut.Ok():
		p.settle(ack, nil)
		return true, nil
	case err := <-c.fut.Err():
		c.err = err
	case <-timer.C:
		c.err = ErrAckTimeout
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return false, nil
}

func newRetry(maxElapsed time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = retryInitial
	b.MaxInterval = retryMaxInterval
	b.MaxElapsedTime = maxElapsed
	b.Reset()
	return b
}

// settle records the outcome of the oldest call and drops it.
func (p *Publisher) settle(ack *jetstream.PubAck, err error) {
	c := p.pending[0]
	p.pending[0] = pending{}
	p.pending = p.pending[1:]
	if err != nil {
		p.stats.Failed++
		pe := &PublishError{MessageID: c.id, Subject: c.subject, Err: err}
		if p.failure == nil {
			p.failure = pe
		}
		if p.opts.OnFailure != nil {
			p.opts.OnFailure(pe)
		}
		return
	}
	p.stats.Published++
	p.stats.Bytes += int64(c.size)
	if ack.Duplicate {
		p.stats.Duplicates++
	}
}

// Wait waits for the PubAck of every call published so far and returns the
// first failure since the previous Wait (a [*PublishError]), or ctx's error
// if ctx is done first.
func (p *Publisher) Wait(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.pending) > 0 {
		if err := p.settleOldest(ctx); err != nil {
			return err
		}
	}
	err := p.failure
	p.failure = nil
	return err
}

// Stats returns the counts of the calls settled so far.
func (p *Publisher) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reap()
	return p.stats
}
