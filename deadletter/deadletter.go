// Package deadletter defines the dead-letter stream: what a dead-lettered
// message looks like, how the worker writes one and how operators' tools read
// one back.
//
// A dead-lettered message keeps its original body byte for byte. Its subject
// is the original one under "dlq." (cio.track → dlq.cio.track), and its
// headers say why it was given up on and where it came from (see the Header
// constants). The original messageId travels in HeaderMessageID so a replay
// is de-duplicated by Customer.io even when the id was derived from the
// original stream sequence.
//
// Replaying a dead letter (publishing it back to its original subject) is
// this package's too: the headers a replay carries, the replay count that
// stops a call failing every time from cycling, the original publish time
// the worker keeps, and [Replayer], which publishes each letter once
// however often a replay is interrupted and run again.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/event"
)

// SubjectPrefix is prepended to a message's subject when it is dead-lettered.
const SubjectPrefix = "dlq."

// StreamSubjects is what the dead-letter stream captures.
const StreamSubjects = "dlq.cio.>"

// Headers of a dead-lettered message.
const (
	HeaderReason       = "Cio-Relay-Reason"        // why: invalid_json, rejected, retries_exhausted, …
	HeaderStatus       = "Cio-Relay-Status"        // HTTP status Customer.io answered, when there was one
	HeaderError        = "Cio-Relay-Error"         // trimmed detail: validation error or response body
	HeaderDeliveries   = "Cio-Relay-Deliveries"    // how many times JetStream delivered it
	HeaderStream       = "Cio-Relay-Stream"        // original stream
	HeaderStreamSeq    = "Cio-Relay-Stream-Seq"    // original stream sequence
	HeaderFirstSeen    = "Cio-Relay-First-Seen"    // when it was published to the original stream (RFC 3339)
	HeaderDeadLettered = "Cio-Relay-Dead-Lettered" // when it was dead-lettered (RFC 3339)
	HeaderVersion      = "Cio-Relay-Version"       // worker version that dead-lettered it
	HeaderMessageID    = "Cio-Relay-Message-Id"    // the call's messageId, given or derived
	// HeaderRequestedAt is, on an ambiguous broadcast trigger, when the
	// request that may have reached Customer.io was sent (RFC 3339): where
	// an operator's tool looks for the trigger it may have created.
	HeaderRequestedAt = "Cio-Relay-Requested-At"
	// HeaderReplayedFrom is set on a message replayed from the dead-letter
	// stream: the dead-letter sequence it came from.
	HeaderReplayedFrom = "Cio-Relay-Replayed-From"
)

// maxDetail bounds HeaderError: enough to act on, small enough for a header.
const maxDetail = 1024

// Reason is why a message was dead-lettered: the one set of reasons, which
// package event declares (the lowest package that refuses messages, so
// that sink reaches no NATS through it) and Reasons lists.
type Reason = event.Reason

// The reasons a delivery ends with, named here for the worker and the dlq
// tools; the validation reasons are event's (event.ReasonInvalidJSON, …).
const (
	ReasonRejected         = event.ReasonRejected         // Customer.io rejected the call on its own (4xx)
	ReasonRetriesExhausted = event.ReasonRetriesExhausted // transient failures on every one of RELAY_MAX_DELIVER deliveries
	ReasonAmbiguous        = event.ReasonAmbiguous        // a broadcast trigger that may have been sent: never retried blindly
)

// Reasons returns every reason a dead letter can carry, in the order of
// README's table of them.
func Reasons() []Reason { return event.Reasons() }

// Record is what the worker knows when it gives up on a message.
type Record struct {
	Reason     Reason
	Status     int // 0 when no HTTP answer is involved
	Detail     string
	Deliveries uint64
	Stream     string
	StreamSeq  uint64
	FirstSeen  time.Time
	MessageID  string
	// Origin names the original message uniquely, even across a stream
	// deleted and created again: {stream}-{creation time}-{sequence}. It
	// makes the dead letter's Nats-Msg-Id; empty falls back to stream and
	// sequence.
	Origin       string
	Version      string
	DeadLettered time.Time
	// Replays is how many times the call has been replayed from the
	// dead-letter stream (HeaderReplays): the worker passes on the count of
	// a replayed message it gives up on, so replays of a call that fails
	// every time can be stopped.
	Replays int
	// RequestedAt is when the request that may have delivered the message
	// was sent (HeaderRequestedAt): set for ambiguous triggers, zero
	// otherwise.
	RequestedAt time.Time
}

// Subject returns the dead-letter subject for an original subject.
func Subject(original string) string { return SubjectPrefix + original }

// OriginalSubject returns the subject a dead-lettered message came from.
func OriginalSubject(dlqSubject string) string {
	return strings.TrimPrefix(dlqSubject, SubjectPrefix)
}

// Msg builds the dead-letter message for an original message's subject,
// headers and body. Original headers are kept, except JetStream's own
// (Nats-*), which would steer the dead-letter publish.
func Msg(subject string, header nats.Header, body []byte, r Record) *nats.Msg {
	m := nats.NewMsg(Subject(subject))
	for k, vs := range header {
		if strings.HasPrefix(k, "Nats-") {
			continue
		}
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	m.Data = body
	m.Header.Set(HeaderReason, string(r.Reason))
	if r.Status != 0 {
		m.Header.Set(HeaderStatus, strconv.Itoa(r.Status))
	}
	if r.Detail != "" {
		m.Header.Set(HeaderError, headerSafe(r.Detail))
	}
	m.Header.Set(HeaderDeliveries, strconv.FormatUint(r.Deliveries, 10))
	m.Header.Set(HeaderStream, r.Stream)
	m.Header.Set(HeaderStreamSeq, strconv.FormatUint(r.StreamSeq, 10))
	if !r.FirstSeen.IsZero() {
		m.Header.Set(HeaderFirstSeen, r.FirstSeen.UTC().Format(time.RFC3339Nano))
	}
	dl := r.DeadLettered
	if dl.IsZero() {
		dl = time.Now()
	}
	m.Header.Set(HeaderDeadLettered, dl.UTC().Format(time.RFC3339Nano))
	if r.Version != "" {
		m.Header.Set(HeaderVersion, r.Version)
	}
	if r.MessageID != "" {
		m.Header.Set(HeaderMessageID, r.MessageID)
	}
	// Only this dead letter's request counts, never one copied from the
	// original's headers.
	if !r.RequestedAt.IsZero() {
		m.Header.Set(HeaderRequestedAt, r.RequestedAt.UTC().Format(time.RFC3339Nano))
	} else {
		m.Header.Del(HeaderRequestedAt)
	}
	// The record, not a header copied from the original, says how often
	// the call was replayed.
	if r.Replays > 0 {
		m.Header.Set(HeaderReplays, strconv.Itoa(r.Replays))
	} else {
		m.Header.Del(HeaderReplays)
	}
	// A crash between this publish and the original's ack redelivers the
	// original, which is dead-lettered again: the same id within the
	// stream's duplicate window makes JetStream drop the second copy.
	origin := r.Origin
	if origin == "" {
		origin = fmt.Sprintf("%s-%d", r.Stream, r.StreamSeq)
	}
	m.Header.Set(jetstream.MsgIDHeader, "dlq-"+origin)
	return m
}

// HeaderBodyOmitted marks a dead letter whose body (and original headers)
// would not fit in a NATS message next to the dead-letter headers: the body
// stays in the original stream at Cio-Relay-Stream-Seq until its retention
// ends, and the value says how large it was.
const HeaderBodyOmitted = "Cio-Relay-Body-Omitted"

// Stub returns m without the original headers and body, for when m is too
// large to publish: what cannot fit is named, never silently dropped.
func Stub(m *nats.Msg) *nats.Msg {
	s := nats.NewMsg(m.Subject)
	for k, vs := range m.Header {
		if strings.HasPrefix(k, "Cio-Relay-") || k == jetstream.MsgIDHeader {
			s.Header[k] = vs
		}
	}
	s.Header.Set(HeaderBodyOmitted, fmt.Sprintf("%d bytes; read it from the original stream at the sequence above", len(m.Data)))
	return s
}

// headerSafe makes s fit in a NATS header value: one line, bounded.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r < 0x20 {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > maxDetail {
		cut := maxDetail
		for cut > 0 && s[cut]&0xC0 == 0x80 {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// Publish writes the dead-letter message and waits for JetStream's PubAck.
// Only then may the original be acked: a crash in between leaves a
// duplicate in the dead-letter stream, never a loss.
func Publish(ctx context.Context, js jetstream.JetStream, m *nats.Msg) error {
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publishing to dead-letter subject %s: %w", m.Subject, err)
	}
	return nil
}

// Write dead-letters an original message (its subject, headers and body)
// with record r, and returns once JetStream has its PubAck: the one way the
// worker writes a dead letter, so that what it writes is what ParseRecord,
// LetterOf and ReplayMsg read. A dead letter that would not fit in a NATS
// message, the body near max_payload and the dead-letter headers on top
// (nats.ErrMaxPayload), is written without its body and original headers
// ([Stub]) rather than retried forever: the original stays in its stream at
// r.StreamSeq, where [ReadOmitted] finds it. omitted says which was
// written.
func Write(ctx context.Context, js jetstream.JetStream, subject string, header nats.Header, body []byte, r Record) (omitted bool, err error) {
	m := Msg(subject, header, body, r)
	err = Publish(ctx, js, m)
	if !errors.Is(err, nats.ErrMaxPayload) {
		return false, err
	}
	return true, Publish(ctx, js, Stub(m))
}

// ParseRecord reads the dead-letter headers back.
func ParseRecord(h nats.Header) (Record, error) {
	var r Record
	r.Reason = Reason(h.Get(HeaderReason))
	if r.Reason == "" {
		return r, errors.New("not a dead-lettered message: no " + HeaderReason + " header")
	}
	r.Detail = h.Get(HeaderError)
	r.Stream = h.Get(HeaderStream)
	r.MessageID = h.Get(HeaderMessageID)
	r.Version = h.Get(HeaderVersion)
	var errs []error
	if v := h.Get(HeaderStatus); v != "" {
		n, err := strconv.Atoi(v)
		errs = append(errs, err)
		r.Status = n
	}
	if v := h.Get(HeaderDeliveries); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		errs = append(errs, err)
		r.Deliveries = n
	}
	if v := h.Get(HeaderStreamSeq); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		errs = append(errs, err)
		r.StreamSeq = n
	}
	if v := h.Get(HeaderFirstSeen); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		errs = append(errs, err)
		r.FirstSeen = t
	}
	if v := h.Get(HeaderDeadLettered); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		errs = append(errs, err)
		r.DeadLettered = t
	}
	if v := h.Get(HeaderRequestedAt); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		errs = append(errs, err)
		r.RequestedAt = t
	}
	if v := h.Get(HeaderReplays); v != "" {
		n, err := strconv.Atoi(v)
		if err == nil && n < 0 {
			err = fmt.Errorf("%s %d is negative", HeaderReplays, n)
		}
		errs = append(errs, err)
		r.Replays = max(n, 0)
	}
	// Origin is read from the Nats-Msg-Id it made; the fallback Msg uses
	// for an empty Origin reads back as empty.
	if origin, ok := strings.CutPrefix(h.Get(jetstream.MsgIDHeader), "dlq-"); ok && origin != fmt.Sprintf("%s-%d", r.Stream, r.StreamSeq) {
		r.Origin = origin
	}
	if err := errors.Join(errs...); err != nil {
		return r, fmt.Errorf("malformed dead-letter headers: %w", err)
	}
	return r, nil
}

// StreamConfig is the dead-letter stream cio-relay creates when it manages
// streams: file storage, kept 30 days, large, and a duplicate window that
// covers a worker restart between a dead-letter publish and its ack.
func StreamConfig(name string, maxAge time.Duration, maxBytes int64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        name,
		Description: "cio-relay dead letters: calls that cannot be delivered, with the reason",
		Subjects:    []string{StreamSubjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      maxAge,
		MaxBytes:    maxBytes,
		Discard:     jetstream.DiscardOld,
		Duplicates:  10 * time.Minute,
	}
}
