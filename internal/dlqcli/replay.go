package dlqcli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
)

// messageTimeout bounds the publish and delete of one message. The message
// in hand is finished even after the command is interrupted, so this, not
// the interruption, is what ends a stuck one.
const messageTimeout = 30 * time.Second

// publishWithin is how long after its intent a replay can have been stored:
// the publish had messageTimeout, and the servers that stored the intent
// and the replay may disagree a little on the time.
const publishWithin = messageTimeout + time.Minute

// deleteBackoff is how long to wait before each attempt to delete a dead
// letter that has been replayed: a delete that fails now (a leader
// election, a timeout) often goes through a moment later, and one left
// undone needs the next run to look for the replay.
var deleteBackoff = []time.Duration{0, 100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second}

// maxConsecutiveFailures ends a replay or purge that fails message after
// message: the cause (NATS gone, no stream for the subject, no permission)
// is not going to change on the next one.
const maxConsecutiveFailures = 10

// headerPrefix marks cio-relay's own headers.
const headerPrefix = "Cio-Relay-"

// replayCounts counts what a replay did.
type replayCounts struct {
	Matched    int // dead letters that matched the filters (up to --max)
	Replayed   int // published and deleted from the dead-letter stream
	Duplicates int // of Replayed: already published by an earlier, interrupted replay
	Failed     int // left in the dead-letter stream; a later run may do better
	Skipped    int // not dead letters, or deleted by someone else meanwhile
	Kept       int // left in the dead-letter stream on purpose, each with a reason said
	Stuck      int // of Kept: cannot be replayed as they are, and need an operator

	invalid map[string]int // of Kept: validation failures, by reason
}

// outcome is what became of one message.
type outcome int

const (
	done outcome = iota
	duplicate
	failed
	skipped
	kept  // by policy: --force replays it
	stuck // cannot be replayed safely as it is
)

func (c *Command) replay(ctx context.Context, env *Env, stream jetstream.Stream) error {
	res := replayCounts{invalid: map[string]int{}}
	now := env.Now()
	p := &progress{w: env.Progress}
	t := table{w: env.Stdout, now: now}
	if c.DryRun {
		t.header()
	}
	rate := c.Rate
	if c.DryRun {
		rate = 0 // nothing is sent, so nothing to pace
	}
	pace := newPacer(rate)
	r := &replayer{c: c, env: env, dlq: stream}
	if !c.DryRun {
		if err := r.begin(ctx); err != nil {
			return err
		}
	}
	streak := 0
	_, err := walk(ctx, stream, c.Filter, now, walkOpts{}, func(l *Letter) error {
		// --max counts what is sent, so that letters kept on every run
		// never crowd out the others.
		if c.Max > 0 && res.Matched-res.Kept == c.Max {
			return errStopWalk
		}
		switch o := r.vet(ctx, l, &res); o {
		case skipped:
			res.Matched++
			res.Skipped++
			return nil
		case kept, stuck:
			res.Matched++
			res.Kept++
			if o == stuck {
				res.Stuck++
			}
			return nil
		}
		if err := pace.wait(ctx); err != nil { // interrupted: l is left for the next run
			return err
		}
		res.Matched++
		if c.DryRun {
			t.row(l)
			return nil
		}
		o, err := r.replayOne(ctx, l)
		if err != nil {
			return err
		}
		switch o {
		case done, duplicate:
			res.Replayed++
			if o == duplicate {
				res.Duplicates++
			}
			streak = 0
		case skipped:
			res.Skipped++
		case stuck:
			res.Kept++
			res.Stuck++
		case failed:
			res.Failed++
			if streak++; streak == maxConsecutiveFailures {
				return fmt.Errorf("giving up after %d failures in a row", streak)
			}
		}
		p.show("replaying: %d replayed, %d failed, %d kept (seq %d)", res.Replayed, res.Failed, res.Kept, l.Seq)
		return nil
	})
	p.clear()
	if !c.DryRun && err == nil {
		r.sweep(ctx)
	}

	w := env.Stdout
	if c.DryRun {
		keptNote := ""
		if res.Kept > 0 {
			keptNote = fmt.Sprintf(", %d kept (see above)", res.Kept)
		}
		fmt.Fprintf(w, "dry run: %d would be replayed to %s%s; nothing changed\n", res.Matched-res.Kept-res.Skipped, env.Stream, keptNote)
	} else {
		dups := ""
		if res.Duplicates > 0 {
			dups = fmt.Sprintf(" (%d already in %s)", res.Duplicates, env.Stream)
		}
		fmt.Fprintf(w, "matched %d, replayed %d%s, failed %d, skipped %d, kept %d\n", res.Matched, res.Replayed, dups, res.Failed, res.Skipped, res.Kept)
	}
	for _, reason := range slices.Sorted(maps.Keys(res.invalid)) {
		fmt.Fprintf(env.Stderr, "kept %d with reason %s: %s is a validation failure: cio-relay refused the call for its own bytes, "+
			"and a replay would send the same bytes to be dead-lettered again the same way. Fix the producer and publish "+
			"corrected calls, then purge these; or replay them anyway with --force.\n", res.invalid[reason], reason, reason)
	}
	switch {
	case c.DryRun:
		return err
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintln(env.Stderr, "cio-relay dlq replay: interrupted; run the same command again to replay the rest")
		return errReported
	case err != nil:
		return err
	case res.Failed > 0:
		fmt.Fprintf(env.Stderr, "cio-relay dlq replay: %d failed and are still in %s; run the same command again to retry them\n", res.Failed, env.DLQStream)
		return errReported
	case res.Stuck > 0:
		fmt.Fprintf(env.Stderr, "cio-relay dlq replay: %d cannot be replayed as they are and are still in %s; see above\n", res.Stuck, env.DLQStream)
		return errReported
	}
	return nil
}

// replayer replays dead letters one at a time, with a replay intent
// written to the dead-letter stream before each publish and deleted after
// the dead letter (see package deadletter). The intent is what makes a
// replay that was published but not deleted (the delete failed, the
// process died) recognisable to a later run, however much later: the
// target stream's duplicate window (2 minutes) covers only a run repeated
// at once, and an hourly CronJob is not. Meeting a dead letter whose intent
// is still there, a run looks for the replay in the target stream, among
// the messages on its subject after the sequence the intent recorded and
// stored within publishWithin of it, and deletes the dead letter when the
// replay is there instead of publishing it again.
//
// Each message costs four round trips (intent, publish, delete, intent
// delete) instead of two; the lookup costs only for a replay that did not
// finish.
type replayer struct {
	c   *Command
	env *Env
	dlq jetstream.Stream
	// after is a sequence of the target stream no later than its last
	// before the next publish: its last when the run began, then the
	// sequence of each replay's PubAck. It goes in each intent.
	after uint64
	// intents are the dead letters with a replay intent when the run
	// began, true until met.
	intents map[uint64]bool
}

// begin reads where the target stream is and which dead letters have a
// replay intent.
func (r *replayer) begin(ctx context.Context) error {
	if s, err := r.env.JS.Stream(ctx, r.env.Stream); err == nil {
		r.after = s.CachedInfo().State.LastSeq
	} // otherwise each publish says what is wrong, and 0 is a safe start
	info, err := r.dlq.Info(ctx, jetstream.WithSubjectFilter(deadletter.IntentSubjects))
	if err != nil {
		return fmt.Errorf("reading the replay intents in %s: %w", r.env.DLQStream, err)
	}
	r.intents = map[uint64]bool{}
	for subject := range info.State.Subjects {
		if seq, ok := deadletter.IntentLetter(subject); ok {
			r.intents[seq] = true
		}
	}
	return nil
}

// vet decides whether l is to be replayed (done) and, for a dead letter
// written without its body, reads the body back from the original stream.
// It reports on stderr what it does not replay, except validation failures,
// which the summary counts by reason.
func (r *replayer) vet(ctx context.Context, l *Letter, res *replayCounts) outcome {
	c := r.c
	if !strings.HasPrefix(l.Subject, deadletter.SubjectPrefix) || l.Record.Reason == "" {
		c.report(r.env, l.Seq, "skipped: not a dead letter (no %s header, or subject %q not under %s)", deadletter.HeaderReason, l.Subject, deadletter.SubjectPrefix)
		return skipped
	}
	if !c.Force {
		if !deadletter.Replayable(l.Record.Reason) {
			res.invalid[l.Record.Reason]++
			return kept
		}
		if n := l.Record.Replays; n >= c.MaxReplays {
			c.report(r.env, l.Seq, "kept: replayed %d times already (--max-replays %d) and dead-lettered again after each; "+
				"see why with \"cio-relay dlq show %d\", or replay it anyway with --force", n, c.MaxReplays, l.Seq)
			return kept
		}
	}
	if size, ok := deadletter.OmittedSize(l.Header); ok {
		if why := r.readBody(ctx, l, size); why != "" {
			c.report(r.env, l.Seq, "kept: its body was left out of the dead letter (%s says why), and %s; nothing was published",
				deadletter.HeaderBodyOmitted, why)
			return stuck
		}
	}
	return done
}

// readBody fills in the body of a dead letter written without it, and the
// original headers, from the original stream, where the original stays
// until its retention ends. It returns why it could not, or "".
func (r *replayer) readBody(ctx context.Context, l *Letter, size int) string {
	rec := l.Record
	name := cmp.Or(rec.Stream, r.env.Stream)
	if rec.StreamSeq == 0 {
		return "it records no original sequence to read the body from"
	}
	s, err := r.env.JS.Stream(ctx, name)
	if err != nil {
		return fmt.Sprintf("stream %s, where it would be, cannot be read: %v", name, err)
	}
	m, err := s.GetMsg(ctx, rec.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Sprintf("stream %s no longer holds it at sequence %d", name, rec.StreamSeq)
	}
	if err != nil {
		return fmt.Sprintf("reading it from stream %s at sequence %d: %v", name, rec.StreamSeq, err)
	}
	// The stream may have been created again since, with another message
	// at that sequence.
	published := deadletter.PublishedAt(m.Header, m.Time)
	if m.Subject != l.OriginalSubject() || (size >= 0 && len(m.Data) != size) || (!rec.FirstSeen.IsZero() && !published.Equal(rec.FirstSeen)) {
		return fmt.Sprintf("stream %s holds another message at sequence %d (%s, %d bytes, published %s)",
			name, rec.StreamSeq, m.Subject, len(m.Data), published.UTC().Format(time.RFC3339Nano))
	}
	for k, vs := range m.Header {
		if _, ok := l.Header[k]; !ok && !hasPrefixFold(k, "Nats-") && !hasPrefixFold(k, headerPrefix) {
			l.Header[k] = vs
		}
	}
	l.Body, l.Size = m.Data, len(m.Data)
	return ""
}

// replayOne publishes l to its original subject, waits for the PubAck, and
// then deletes it from the dead-letter stream, with a replay intent around
// the two. It reports a failure on stderr and returns an error only to end
// the replay.
func (r *replayer) replayOne(ctx context.Context, l *Letter) (outcome, error) {
	env := r.env
	// The message in hand is finished even if ctx is cancelled meanwhile,
	// so an interrupted replay leaves no message in both streams.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), messageTimeout)
	defer cancel()
	id := deadletter.ReplayID(env.DLQStream, l.Seq, l.Stored)

	intent, o := r.earlier(mctx, l, id)
	switch o {
	case duplicate:
		if o2 := r.c.deleteOne(mctx, env, r.dlq, l.Seq); o2 != done {
			return o2, nil
		}
		r.deleteIntent(mctx, l.Seq, intent)
		return duplicate, nil
	case failed, stuck:
		return o, nil
	}
	if intent == 0 {
		ack, err := env.JS.PublishMsg(mctx, deadletter.IntentMsg(l.Seq, id, env.Stream, r.after), jetstream.WithExpectStream(env.DLQStream))
		if err != nil {
			r.c.report(env, l.Seq, "writing its replay intent to %s: %v", env.DLQStream, err)
			return failed, nil
		}
		intent = ack.Sequence
	}

	msg := deadletter.ReplayMsg(l.Subject, l.Header, l.Body, l.Record, l.Seq, id)
	ack, err := env.JS.PublishMsg(mctx, msg, jetstream.WithExpectStream(env.Stream))
	if err != nil {
		r.c.report(env, l.Seq, "publishing to %s (stream %s): %v", l.OriginalSubject(), env.Stream, err)
		if notStored(err) {
			r.deleteIntent(mctx, l.Seq, intent)
		}
		return failed, nil
	}
	r.after = max(r.after, ack.Sequence)
	if env.afterPublish != nil {
		if err := env.afterPublish(l.Seq); err != nil {
			return failed, err
		}
	}
	o = done
	if ack.Duplicate {
		o = duplicate
	}
	if o2 := r.c.deleteOne(mctx, env, r.dlq, l.Seq); o2 != done {
		return o2, nil // the intent stays: the next run finds the replay
	}
	r.deleteIntent(mctx, l.Seq, intent)
	return o, nil
}

// earlier looks for an earlier run's replay of l, when that run left its
// intent: duplicate when the replay is in the target stream, done (with
// the intent's sequence, to reuse) when it is not, stuck when that cannot
// be told and --force is not set, failed when the lookup failed.
func (r *replayer) earlier(ctx context.Context, l *Letter, id string) (intent uint64, o outcome) {
	if !r.intents[l.Seq] {
		return 0, done
	}
	r.intents[l.Seq] = false
	env := r.env
	m, err := r.dlq.GetLastMsgForSubject(ctx, deadletter.IntentSubject(l.Seq))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, done
	case err != nil:
		r.c.report(env, l.Seq, "reading its replay intent from %s: %v", env.DLQStream, err)
		return 0, failed
	}
	in, err := deadletter.ParseIntent(m)
	if err != nil || in.ID != id {
		return 0, done // not this letter's: a new intent supersedes it
	}
	seq, err := deadletter.FindReplay(ctx, env.JS, in, l.OriginalSubject(), publishWithin)
	switch {
	case errors.Is(err, deadletter.ErrReplayUnknown) && r.c.Force:
		return in.Seq, done
	case errors.Is(err, deadletter.ErrReplayUnknown):
		r.c.report(env, l.Seq, "kept: a replay that began at %s may have published it and stopped before deleting it, and %v; "+
			"look in %s for a message with %s: %s, then purge this dead letter, or replay it anyway with --force",
			in.Stored.UTC().Format(time.RFC3339), err, in.Stream, deadletter.HeaderReplayOf, id)
		return in.Seq, stuck
	case err != nil:
		r.c.report(env, l.Seq, "looking in %s for an earlier replay of it: %v", in.Stream, err)
		return in.Seq, failed
	case seq > 0:
		r.c.report(env, l.Seq, "already replayed by an earlier run (%s sequence %d); deleting it", in.Stream, seq)
		return in.Seq, duplicate
	}
	return in.Seq, done
}

// deleteIntent deletes replay intent seq of dead letter letter. One left
// behind does no harm: it names a dead letter that is gone, and sweep
// removes it.
func (r *replayer) deleteIntent(ctx context.Context, letter, seq uint64) {
	if seq == 0 {
		return
	}
	if err := r.dlq.DeleteMsg(ctx, seq); err != nil {
		if _, gerr := r.dlq.GetMsg(ctx, seq); !errors.Is(gerr, jetstream.ErrMsgNotFound) {
			r.c.report(r.env, letter, "replayed, but its replay intent (%s sequence %d) could not be deleted: %v; a later replay removes it", r.env.DLQStream, seq, err)
		}
	}
}

// sweep removes the replay intents found at the start whose dead letter is
// gone (replayed and deleted, but the intent's delete failed; or purged).
func (r *replayer) sweep(ctx context.Context) {
	for seq, pending := range r.intents {
		if !pending {
			continue
		}
		if _, err := r.dlq.GetMsg(ctx, seq); !errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // still there (not met by this run's filters), or unknown
		}
		if m, err := r.dlq.GetLastMsgForSubject(ctx, deadletter.IntentSubject(seq)); err == nil {
			r.deleteIntent(ctx, seq, m.Sequence)
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

// deleteOne deletes dead letter seq: done, skipped when it was already gone,
// or failed. A failed delete is tried again a few times first.
func (c *Command) deleteOne(ctx context.Context, env *Env, stream jetstream.Stream, seq uint64) outcome {
	var err error
	for _, wait := range deleteBackoff {
		if wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				c.report(env, seq, "deleting from %s: %v", env.DLQStream, cmp.Or(err, ctx.Err()))
				return failed
			case <-timer.C:
			}
		}
		if err = stream.DeleteMsg(ctx, seq); err == nil {
			return done
		}
		// The delete error does not carry the server's code; asking for
		// the message tells "already gone" from a real failure.
		if _, gerr := stream.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
			c.report(env, seq, "skipped: already deleted from %s", env.DLQStream)
			return skipped
		}
	}
	c.report(env, seq, "deleting from %s (%d attempts): %v", env.DLQStream, len(deleteBackoff), err)
	return failed
}

// report says what happened to one message, on stderr.
func (c *Command) report(env *Env, seq uint64, format string, args ...any) {
	if env.Progress != nil {
		fmt.Fprint(env.Progress, "\r\x1b[K")
	}
	fmt.Fprintf(env.Stderr, "seq %d: "+format+"\n", append([]any{seq}, args...)...)
}
