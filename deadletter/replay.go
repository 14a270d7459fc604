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
)

// The replay protocol. A dead letter is replayed by publishing its original
// body to its original subject ([ReplayMsg]), waiting for the PubAck, and
// only then deleting it from the dead-letter stream. Three things keep that
// from looping or repeating:
//
//   - HeaderReplays counts the replays of a call. The worker copies it onto
//     the dead letter it writes when a replayed call fails again, so a tool
//     can stop replaying a call that fails every time ([DefaultMaxReplays]).
//   - Only delivery failures are replayed by default ([Replayable]): a call
//     refused for its own bytes would be refused again.
//   - A replay intent, written to the dead-letter stream before the publish,
//     makes a replay that was published but not deleted (the delete failed,
//     or the process died) recognisable by a later run, also after the
//     target stream's duplicate window has passed and Nats-Msg-Id no longer
//     protects it. See [IntentMsg] and [FindReplay].
//
// HeaderPublished carries the call's first publish time through replays:
// the worker takes it as the message's publish time ([PublishedAt]), so a
// call stamped with its publish time keeps the time it happened however
// often it is replayed.
const (
	// HeaderReplays is how many times the call has been replayed from the
	// dead-letter stream: on a replayed message, and on a dead letter of one.
	HeaderReplays = "Cio-Relay-Replays"
	// HeaderPublished is when the call was first published, RFC 3339 with
	// nanoseconds, set on a replayed message from the dead letter's
	// First-Seen. The worker prefers it over the replay's own publish time.
	HeaderPublished = "Cio-Relay-Published"
	// HeaderReplayOf names the dead letter a message replays ([ReplayID]):
	// on the replayed message, and on the replay intent written before it.
	HeaderReplayOf = "Cio-Relay-Replay-Of"
	// HeaderReplayStream and HeaderReplayAfter, on a replay intent: the
	// stream the replay is published to, and a sequence of that stream no
	// later than the last one before the replay, where a search for it
	// starts.
	HeaderReplayStream = "Cio-Relay-Replay-Stream"
	HeaderReplayAfter  = "Cio-Relay-Replay-After"
)

// DefaultMaxReplays is how many times a call is replayed before a replay
// keeps it, unless told otherwise: enough for a call caught by two or three
// outages, few enough that a call failing for its own sake stops cycling
// through the hourly replay within hours.
const DefaultMaxReplays = 3

// Replayable reports whether a dead letter with this reason may be
// delivered if sent again unchanged: a delivery that failed (Customer.io
// down, or refusing the call for a reason that can change) rather than a
// verdict on the call's own bytes. Every reason but these is a validation
// failure, which a replay would meet again the same way within seconds.
func Replayable(reason Reason) bool {
	switch reason {
	case ReasonRetriesExhausted, ReasonRejected, ReasonAmbiguous:
		return true
	}
	return false
}

// ReplayID names dead letter seq of dlqStream, stored at stored, uniquely:
// the stored time tells it from the letter of the same sequence in a
// dead-letter stream deleted and created again.
func ReplayID(dlqStream string, seq uint64, stored time.Time) string {
	return dlqStream + "-" + strconv.FormatUint(seq, 10) + "-" + strconv.FormatInt(stored.UnixNano(), 36)
}

// ReplayMsgID is the Nats-Msg-Id of the replay of id: the same on every
// run, so within the target stream's duplicate window JetStream drops a
// second copy on its own.
func ReplayMsgID(id string) string { return "replay-" + id }

// ReplayMsg is the message dead letter seq (with headers h, body and
// record r) is replayed as: its original subject, body and headers, the
// messageId the worker had for it, the replay count one up, the original
// publish time, where it was replayed from, and the ids that make a second
// copy recognisable.
func ReplayMsg(dlqSubject string, h nats.Header, body []byte, r Record, seq uint64, id string) *nats.Msg {
	m := nats.NewMsg(OriginalSubject(dlqSubject))
	for k, vs := range h {
		// Nats-* steered the dead-letter publish (its Nats-Msg-Id would
		// make the replay a duplicate of it); Cio-Relay-* described the
		// dead letter, and a replayed message is not one.
		if hasPrefixFold(k, "Nats-") || (hasPrefixFold(k, headerPrefix) && !strings.EqualFold(k, HeaderMessageID)) {
			continue
		}
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	m.Header.Set(HeaderReplayedFrom, strconv.FormatUint(seq, 10))
	m.Header.Set(HeaderReplayOf, id)
	m.Header.Set(HeaderReplays, strconv.Itoa(r.Replays+1))
	if !r.FirstSeen.IsZero() {
		m.Header.Set(HeaderPublished, r.FirstSeen.UTC().Format(time.RFC3339Nano))
	}
	m.Header.Set(jetstream.MsgIDHeader, ReplayMsgID(id))
	m.Data = body
	return m
}

// headerPrefix marks cio-relay's own headers.
const headerPrefix = "Cio-Relay-"

// hasPrefixFold reports whether s begins with prefix, ignoring case: NATS
// headers are case-sensitive, but a publisher may spell ours differently.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// PublishedAt returns when the call in a message was first published: its
// HeaderPublished when that is a valid time (a replay), otherwise stored,
// the time its stream stored it.
func PublishedAt(h nats.Header, stored time.Time) time.Time {
	if v := h.Get(HeaderPublished); v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t
		}
	}
	return stored
}

// ReplaysOf returns a message's HeaderReplays: 0 when absent or not a
// count.
func ReplaysOf(h nats.Header) int {
	n, err := strconv.Atoi(h.Get(HeaderReplays))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// OmittedSize returns the size of the body a stub ([Stub]) left out, and
// whether h is a stub's.
func OmittedSize(h nats.Header) (int, bool) {
	v := h.Get(HeaderBodyOmitted)
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(strings.Fields(v + " ")[0], ","))
	if err != nil {
		return -1, true
	}
	return n, true
}

// intentPrefix is the subject of replay intents: under the subjects the
// dead-letter stream captures, so a stream made before intents existed
// keeps them too, and under a token no call subject has ("_replay").
const intentPrefix = SubjectPrefix + "cio._replay."

// IntentSubject is the subject of the replay intent of dead letter seq.
func IntentSubject(seq uint64) string { return intentPrefix + strconv.FormatUint(seq, 10) }

// IntentSubjects matches every replay intent.
const IntentSubjects = intentPrefix + ">"

// IsIntent reports whether a dead-letter stream subject is a replay
// intent's rather than a dead letter's.
func IsIntent(subject string) bool { return strings.HasPrefix(subject, intentPrefix) }

// IntentLetter returns the dead-letter sequence an intent subject names.
func IntentLetter(subject string) (uint64, bool) {
	v, ok := strings.CutPrefix(subject, intentPrefix)
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(v, 10, 64)
	return seq, err == nil
}

// Intent says that a replay of a dead letter was about to be published.
type Intent struct {
	Letter uint64    // the dead letter's sequence
	ID     string    // its ReplayID
	Stream string    // the stream the replay goes to
	After  uint64    // the replay's sequence there is above this
	Seq    uint64    // the intent's own sequence in the dead-letter stream
	Stored time.Time // when the dead-letter stream stored the intent
}

// IntentMsg is the replay intent of dead letter seq, replayed as id to
// stream, whose last sequence is known to be at least after. It is written
// to the dead-letter stream, and its PubAck awaited, before the replay is
// published; it is deleted after the dead letter is. A later run that meets
// the dead letter with its intent still there knows a replay may have been
// published and looks for it ([FindReplay]) instead of publishing another.
// A dead letter has one intent subject, so the last message on it is the
// intent that counts.
func IntentMsg(seq uint64, id, stream string, after uint64) *nats.Msg {
	m := nats.NewMsg(IntentSubject(seq))
	m.Header.Set(HeaderReplayOf, id)
	m.Header.Set(HeaderReplayStream, stream)
	m.Header.Set(HeaderReplayAfter, strconv.FormatUint(after, 10))
	m.Header.Set(jetstream.MsgIDHeader, "intent-"+id)
	return m
}

// ParseIntent reads a replay intent back.
func ParseIntent(m *jetstream.RawStreamMsg) (Intent, error) {
	seq, ok := IntentLetter(m.Subject)
	if !ok {
		return Intent{}, fmt.Errorf("not a replay intent: subject %q", m.Subject)
	}
	after, err := strconv.ParseUint(m.Header.Get(HeaderReplayAfter), 10, 64)
	in := Intent{Letter: seq, ID: m.Header.Get(HeaderReplayOf), Stream: m.Header.Get(HeaderReplayStream), After: after, Seq: m.Sequence, Stored: m.Time}
	if err != nil || in.ID == "" || in.Stream == "" {
		return in, fmt.Errorf("malformed replay intent at sequence %d", m.Sequence)
	}
	return in, nil
}

// ErrReplayUnknown is returned by FindReplay when the target stream no
// longer holds every message the replay could be: whether it was published
// cannot be told.
var ErrReplayUnknown = errors.New("cannot tell whether it was replayed")

// FindReplay looks in the intent's stream for the replay it announced, on
// subject: among the messages after in.After stored at most within after
// the intent (the time the publish had). It returns the replay's sequence,
// or 0 when it is not there. The lookup reads headers only and stops at the
// end of that time span, so its cost is bounded by the traffic on one
// subject over that span, and it runs only for a replay that did not
// finish.
func FindReplay(ctx context.Context, js jetstream.JetStream, in Intent, subject string, within time.Duration) (uint64, error) {
	s, err := js.Stream(ctx, in.Stream)
	if err != nil {
		return 0, fmt.Errorf("looking up stream %s: %w", in.Stream, err)
	}
	info := s.CachedInfo()
	switch {
	case info.Created.After(in.Stored):
		return 0, fmt.Errorf("%w: stream %s was created again since the replay began", ErrReplayUnknown, in.Stream)
	case info.State.LastSeq <= in.After:
		return 0, nil // nothing stored since
	case info.State.FirstSeq > in.After+1:
		return 0, fmt.Errorf("%w: stream %s no longer holds its messages from then (sequences %d to %d are gone)",
			ErrReplayUnknown, in.Stream, in.After+1, info.State.FirstSeq-1)
	}
	end := in.Stored.Add(within)
	// The replay follows its intent at once, so it is nearly always the
	// first message on the subject after in.After.
	first, err := s.GetMsg(ctx, in.After+1, jetstream.WithGetMsgSubject(subject))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("reading stream %s: %w", in.Stream, err)
	case first.Header.Get(HeaderReplayOf) == in.ID:
		return first.Sequence, nil
	case first.Time.After(end):
		return 0, nil
	}
	cons, err := js.OrderedConsumer(ctx, in.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{subject},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       first.Sequence, // there is one: the first Next cannot wait for nothing
		HeadersOnly:       true,
		InactiveThreshold: time.Minute,
	})
	if err != nil {
		return 0, fmt.Errorf("reading stream %s: %w", in.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return 0, fmt.Errorf("reading stream %s: %w", in.Stream, err)
	}
	defer it.Stop()
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("reading stream %s: %w", in.Stream, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return 0, fmt.Errorf("reading stream %s: %w", in.Stream, err)
		}
		if m.Headers().Get(HeaderReplayOf) == in.ID {
			return meta.Sequence.Stream, nil
		}
		// Next is called again only while messages are pending, so it
		// never waits for one that is not coming.
		if meta.Timestamp.After(end) || meta.NumPending == 0 {
			return 0, nil
		}
	}
}
