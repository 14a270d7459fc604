package deadletter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MessageTimeout bounds the replay of one dead letter: its intent, publish
// and deletes. The letter in hand is finished even after the caller's
// context is done, so this, not the interruption, is what ends a stuck one.
const MessageTimeout = 30 * time.Second

// publishWithin is how long after its intent a replay can have been stored:
// the publish had MessageTimeout, and the servers that stored the intent
// and the replay may disagree a little on the time.
const publishWithin = MessageTimeout + time.Minute

// deleteBackoff is how long to wait before each attempt to delete a dead
// letter: a delete that fails now (a leader election, a timeout) often
// goes through a moment later, and a replayed letter left undone costs the
// next run a lookup.
var deleteBackoff = []time.Duration{0, 100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second}

// attemptTimeout bounds one lookup or delete of a dead letter. During a
// leader election a request that reached the old leader is never
// answered; cut off and sent again (deleteBackoff), it finds the new one,
// where waiting would spend the letter's whole MessageTimeout.
const attemptTimeout = 5 * time.Second

// retryable reports whether a lookup or delete may go through if sent
// again: cut off, unanswered, or refused for now during an election.
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || (errors.As(err, &apiErr) && apiErr.Code == 503)
}

// ErrGone is returned when a dead letter to delete was deleted already, by
// someone else.
var ErrGone = errors.New("already deleted")

// Letter is one message of the dead-letter stream.
type Letter struct {
	Seq     uint64    // sequence in the dead-letter stream
	Subject string    // dead-letter subject: dlq.cio.track
	Stored  time.Time // when the dead-letter stream stored it
	Header  nats.Header
	Body    []byte
	// Record is read from the headers; its Reason is "" when the message
	// is not a dead letter, and a malformed field is left zero.
	Record Record
}

// LetterOf reads a message got from the dead-letter stream.
func LetterOf(m *jetstream.RawStreamMsg) *Letter {
	rec, _ := ParseRecord(m.Header)
	return &Letter{Seq: m.Sequence, Subject: m.Subject, Stored: m.Time, Header: m.Header, Body: m.Data, Record: rec}
}

// OriginalSubject is the subject the message was first published on.
func (l *Letter) OriginalSubject() string { return OriginalSubject(l.Subject) }

// Outcome is what Replay did with a dead letter.
type Outcome int

const (
	Replayed  Outcome = iota // published, and deleted from the dead-letter stream
	Duplicate                // published before, by a replay that did not finish; now deleted
	Gone                     // deleted by someone else meanwhile
	Failed                   // left in the dead-letter stream; a later replay may do better
	Unknown                  // left: an earlier replay may have published it, and that cannot be told
)

// Result is what Replay did with a dead letter, and why.
type Result struct {
	Outcome Outcome
	Err     error  // for Failed and Unknown: why
	Note    string // something the operator should know besides
}

// Replayer replays the dead letters of one dead-letter stream to one
// target stream, one at a time: a replay intent written to the dead-letter
// stream, the replay published and its PubAck awaited, the dead letter
// deleted (tried again when that fails), then the intent deleted.
//
// The intent is what makes a replay that was published but not deleted
// (the delete failed, the process died) recognisable to a later run,
// however much later: the target stream's duplicate window covers only a
// run repeated at once, and an hourly CronJob is not. Meeting a dead letter
// whose intent is still there, Replay looks for the replay in the target
// stream ([FindReplay]), among the messages on its subject after the
// sequence the intent recorded and stored within 90 seconds of it, and
// deletes the dead letter when the replay is there instead of publishing
// it again. When the target stream no longer holds messages that old,
// whether the replay was published cannot be told: the letter is kept
// (Unknown) unless the caller forces it.
//
// Each letter costs five round trips (a check that it is still there,
// intent, publish, delete, intent delete) instead of two; the lookup costs only for a replay that did not
// finish. Two replayers running at once publish with the same Nats-Msg-Id,
// which the target stream's duplicate window makes one. A letter one of
// them holds for longer than that (a slow --rate) is checked before it is
// published: gone when the other has replayed it meanwhile, and with the
// other's intent (an intent is written only where there is none) when the
// other published it and stopped before deleting it.
type Replayer struct {
	js      jetstream.JetStream
	dlq     jetstream.Stream
	dlqName string
	target  string
	// after is a sequence of the target stream no later than its last
	// before the next publish: its last when the replayer was made, then
	// the sequence of each replay's PubAck. It goes in each intent.
	after uint64
	// intents are the dead letters that had a replay intent when the
	// replayer was made, true until met.
	intents map[uint64]bool

	// AfterPublish, when set, runs when a replay has its PubAck and before
	// its dead letter is deleted. An error abandons the letter right
	// there, as a crash would, and Replay returns it. For tests.
	AfterPublish func(seq uint64) error
}

// NewReplayer returns a Replayer from dlq to the stream named target. It
// reads where target is and which dead letters have a replay intent.
func NewReplayer(ctx context.Context, js jetstream.JetStream, dlq jetstream.Stream, target string) (*Replayer, error) {
	r := &Replayer{js: js, dlq: dlq, dlqName: dlq.CachedInfo().Config.Name, target: target, intents: map[uint64]bool{}}
	if s, err := js.Stream(ctx, target); err == nil {
		r.after = s.CachedInfo().State.LastSeq
	} // otherwise each publish says what is wrong, and 0 is a safe start
	info, err := dlq.Info(ctx, jetstream.WithSubjectFilter(IntentSubjects))
	if err != nil {
		return nil, fmt.Errorf("reading the replay intents in %s: %w", r.dlqName, err)
	}
	for subject := range info.State.Subjects {
		if seq, ok := IntentLetter(subject); ok {
			r.intents[seq] = true
		}
	}
	return r, nil
}

// Replay replays l, which must be a dead letter with its body. With force
// it publishes l also when an earlier replay may have published it and
// that cannot be told. ctx ending does not stop a replay begun: l is
// finished within MessageTimeout, so no message is left in both streams.
// Only an AfterPublish error is returned as an error.
func (r *Replayer) Replay(ctx context.Context, l *Letter, force bool) (Result, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), MessageTimeout)
	defer cancel()
	id := ReplayID(r.dlqName, l.Seq, l.Stored)

	intent, res, stop := r.begin(ctx, l, id, force)
	if stop {
		return res, nil
	}

	ack, err := r.js.PublishMsg(ctx, ReplayMsg(l.Subject, l.Header, l.Body, l.Record, l.Seq, id), jetstream.WithExpectStream(r.target))
	if err != nil {
		res := Result{Outcome: Failed, Err: fmt.Errorf("publishing to %s (stream %s): %w", l.OriginalSubject(), r.target, err)}
		if notStored(err) {
			r.deleteIntent(ctx, intent, &res)
		}
		return res, nil
	}
	r.after = max(r.after, ack.Sequence)
	if r.AfterPublish != nil {
		if err := r.AfterPublish(l.Seq); err != nil {
			return Result{Outcome: Failed, Err: err}, err
		}
	}
	res = Result{Outcome: Replayed}
	if ack.Duplicate {
		res.Outcome = Duplicate
	}
	if res2 := r.deleteLetter(ctx, l.Seq); res2.Outcome != Replayed {
		return res2, nil // the intent stays: the next run finds the replay
	}
	r.deleteIntent(ctx, intent, &res)
	return res, nil
}

// begin prepares the replay of l: it settles an earlier replay's leftovers
// (see earlier), checks l is still there (see stillThere) and writes the
// replay intent, or reuses the earlier one. It returns the intent's
// sequence, or stop with the result when l is not to be published.
//
// The intents r knows of are those there when it was made. Another replay
// may have begun on l since (two operators at once), and died after
// publishing it: so the intent is written only if l has none
// (compare-and-set on its subject), and when it has one after all, it is
// looked at as an earlier replay's before anything is published.
func (r *Replayer) begin(ctx context.Context, l *Letter, id string, force bool) (intent uint64, res Result, stop bool) {
	for try := 0; ; try++ {
		intent, res = r.earlier(ctx, l, id, force)
		switch res.Outcome {
		case Duplicate:
			if res2 := r.deleteLetter(ctx, l.Seq); res2.Outcome != Replayed {
				return 0, res2, true
			}
			r.deleteIntent(ctx, intent, &res)
			return 0, res, true
		case Failed, Unknown:
			return 0, res, true
		}
		if res := r.stillThere(ctx, l.Seq); res.Outcome != Replayed {
			return 0, res, true
		}
		if intent != 0 {
			return intent, res, false
		}
		opts := []jetstream.PublishOpt{jetstream.WithExpectStream(r.dlqName)}
		if try == 0 {
			// None known: there must be none. (On the second try the
			// one there is another letter's, which ours supersedes.)
			opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
		}
		ack, err := r.js.PublishMsg(ctx, IntentMsg(l.Seq, id, r.target, r.after), opts...)
		if try == 0 && wrongLastSequence(err) {
			r.intents[l.Seq] = true
			continue
		}
		if err != nil {
			return 0, Result{Outcome: Failed, Err: fmt.Errorf("writing its replay intent to %s: %w", r.dlqName, err)}, true
		}
		return ack.Sequence, Result{Outcome: Replayed}, false
	}
}

// wrongLastSequence reports whether a publish was refused because its
// subject's last sequence was not the one expected.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// earlier looks for an earlier replay of l, when one left its intent:
// Duplicate when the replay is in the target stream, Replayed (meaning: go
// on, reusing the intent returned) when it is not, Unknown when that
// cannot be told and force is not set, Failed when the lookup failed.
func (r *Replayer) earlier(ctx context.Context, l *Letter, id string, force bool) (intent uint64, res Result) {
	if !r.intents[l.Seq] {
		return 0, Result{Outcome: Replayed}
	}
	r.intents[l.Seq] = false
	m, err := r.dlq.GetLastMsgForSubject(ctx, IntentSubject(l.Seq))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, Result{Outcome: Replayed}
	case err != nil:
		return 0, Result{Outcome: Failed, Err: fmt.Errorf("reading its replay intent from %s: %w", r.dlqName, err)}
	}
	in, err := ParseIntent(m)
	if err != nil || in.ID != id {
		return 0, Result{Outcome: Replayed} // not this letter's: a new intent supersedes it
	}
	seq, err := FindReplay(ctx, r.js, in, l.OriginalSubject(), publishWithin)
	switch {
	case errors.Is(err, ErrReplayUnknown) && force:
		return in.Seq, Result{Outcome: Replayed}
	case errors.Is(err, ErrReplayUnknown):
		return in.Seq, Result{Outcome: Unknown, Err: fmt.Errorf("a replay that began at %s may have published it and stopped before deleting it, and %w; "+
			"look in %s for a message with %s: %s", in.Stored.UTC().Format(time.RFC3339), err, in.Stream, HeaderReplayOf, id)}
	case err != nil:
		return in.Seq, Result{Outcome: Failed, Err: fmt.Errorf("looking in %s for an earlier replay of it: %w", in.Stream, err)}
	case seq > 0:
		return in.Seq, Result{Outcome: Duplicate, Note: fmt.Sprintf("already replayed by an earlier run (%s sequence %d); deleting it", in.Stream, seq)}
	}
	return in.Seq, Result{Outcome: Replayed}
}

// stillThere checks that dead letter seq has not been deleted since it was
// read: Replayed (meaning: go on) when it is still there, Gone when it is
// not. A walk holds the letters it has fetched for as long as its pacing
// takes (256 at --rate 1 is four minutes), and another replay running
// meanwhile may have published and deleted one of them longer ago than
// the target stream's duplicate window: publishing it again would be
// stored as a second message. From here to the publish takes at most
// MessageTimeout, well within the window, so a replay that deletes the
// letter after this check has published it within the window and the
// two publishes are one.
func (r *Replayer) stillThere(ctx context.Context, seq uint64) Result {
	var err error
	for _, wait := range deleteBackoff {
		if !pause(ctx, wait) {
			break
		}
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		_, err = r.dlq.GetMsg(actx, seq)
		cancel()
		switch {
		case err == nil:
			return Result{Outcome: Replayed}
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return Result{Outcome: Gone}
		}
		if ctx.Err() != nil || !retryable(err) {
			break
		}
	}
	return Result{Outcome: Failed, Err: fmt.Errorf("checking it is still in %s: %w", r.dlqName, cmp.Or(err, ctx.Err()))}
}

// pause waits d, or until ctx is done; it reports whether d passed.
func pause(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// deleteLetter deletes dead letter seq: Replayed when done.
func (r *Replayer) deleteLetter(ctx context.Context, seq uint64) Result {
	switch err := Delete(ctx, r.dlq, seq); {
	case errors.Is(err, ErrGone):
		return Result{Outcome: Gone}
	case err != nil:
		return Result{Outcome: Failed, Err: err}
	}
	return Result{Outcome: Replayed}
}

// deleteIntent deletes replay intent seq. One left behind does no harm:
// it names a dead letter that is gone, and Sweep removes it.
func (r *Replayer) deleteIntent(ctx context.Context, seq uint64, res *Result) {
	if seq == 0 {
		return
	}
	if err := r.dlq.DeleteMsg(ctx, seq); err != nil {
		if _, gerr := r.dlq.GetMsg(ctx, seq); !errors.Is(gerr, jetstream.ErrMsgNotFound) {
			note := fmt.Sprintf("its replay intent (%s sequence %d) could not be deleted: %v; a later replay removes it", r.dlqName, seq, err)
			if res.Note != "" {
				note = res.Note + "; " + note
			}
			res.Note = note
		}
	}
}

// Sweep removes the replay intents found when the replayer was made whose
// dead letter is gone (replayed and deleted, but the intent's delete
// failed; or purged) and that Replay did not meet.
func (r *Replayer) Sweep(ctx context.Context) {
	for seq, pending := range r.intents {
		if !pending {
			continue
		}
		if _, err := r.dlq.GetMsg(ctx, seq); !errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // still there (not asked for), or unknown
		}
		if m, err := r.dlq.GetLastMsgForSubject(ctx, IntentSubject(seq)); err == nil {
			var res Result
			r.deleteIntent(ctx, m.Sequence, &res)
		}
	}
}

// notStored reports whether a publish error means the message was not
// stored: refused by the client or by JetStream, or no stream to take it.
// A timeout is not among them: the message may be stored all the same.
func notStored(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrMaxPayload)
}

// Delete deletes dead letter seq from stream, trying again a few times
// when that fails. It returns ErrGone when the letter was deleted already.
func Delete(ctx context.Context, stream jetstream.Stream, seq uint64) error {
	var err error
	for _, wait := range deleteBackoff {
		if !pause(ctx, wait) {
			return fmt.Errorf("deleting from %s: %w", stream.CachedInfo().Config.Name, cmp.Or(err, ctx.Err()))
		}
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err = stream.DeleteMsg(actx, seq)
		if err == nil {
			cancel()
			return nil
		}
		// The delete error does not carry the server's code; asking for
		// the message tells "already gone" from a real failure.
		_, gerr := stream.GetMsg(actx, seq)
		cancel()
		if errors.Is(gerr, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("%w from %s", ErrGone, stream.CachedInfo().Config.Name)
		}
	}
	return fmt.Errorf("deleting from %s (%d attempts): %w", stream.CachedInfo().Config.Name, len(deleteBackoff), err)
}

// ReadOmitted fills in the body and original headers of a dead letter
// written without its body ([Stub]) from the original stream (the
// record's, or stream when it names none), where the original stays until
// its retention ends. It checks the message there is the same one
// (subject, size, publish time), as the stream may have been created again
// with another message at that sequence. It does nothing to a dead letter
// with its body. The error says why the body cannot be had.
func ReadOmitted(ctx context.Context, js jetstream.JetStream, l *Letter, stream string) error {
	size, ok := OmittedSize(l.Header)
	if !ok {
		return nil
	}
	rec := l.Record
	name := cmp.Or(rec.Stream, stream)
	if rec.StreamSeq == 0 {
		return errors.New("it records no original sequence to read the body from")
	}
	s, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("stream %s, where it would be, cannot be read: %w", name, err)
	}
	m, err := s.GetMsg(ctx, rec.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("stream %s no longer holds it at sequence %d", name, rec.StreamSeq)
	}
	if err != nil {
		return fmt.Errorf("reading it from stream %s at sequence %d: %w", name, rec.StreamSeq, err)
	}
	published := PublishedAt(m.Header, m.Time)
	if m.Subject != l.OriginalSubject() || (size >= 0 && len(m.Data) != size) || (!rec.FirstSeen.IsZero() && !published.Equal(rec.FirstSeen)) {
		return fmt.Errorf("stream %s holds another message at sequence %d (%s, %d bytes, published %s)",
			name, rec.StreamSeq, m.Subject, len(m.Data), published.UTC().Format(time.RFC3339Nano))
	}
	if l.Header == nil {
		l.Header = nats.Header{}
	}
	for k, vs := range m.Header {
		if _, ok := l.Header[k]; !ok && !hasPrefixFold(k, "Nats-") && !hasPrefixFold(k, headerPrefix) {
			l.Header[k] = vs
		}
	}
	l.Body = m.Data
	return nil
}

// IsDeadLetter reports whether l is a dead letter cio-relay wrote: under
// SubjectPrefix, not a replay intent, with a reason.
func (l *Letter) IsDeadLetter() bool {
	return strings.HasPrefix(l.Subject, SubjectPrefix) && !IsIntent(l.Subject) && l.Record.Reason != ""
}
