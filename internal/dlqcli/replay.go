package dlqcli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/cio-relay/cio-relay/deadletter"
)

// maxConsecutiveFailures ends a replay or purge that fails message after
// message: the cause (NATS gone, no stream for the subject, no permission)
// is not going to change on the next one.
const maxConsecutiveFailures = 10

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
	perSecond := c.Rate
	if c.DryRun {
		perSecond = 0 // nothing is sent, so nothing to pace
	}
	pace := newPace(perSecond)
	var r *deadletter.Replayer
	if !c.DryRun {
		var err error
		if err = retrying(ctx, func(ctx context.Context) (err error) {
			r, err = deadletter.NewReplayer(ctx, env.JS, stream, env.Stream)
			return err
		}); err != nil {
			return err
		}
		r.AfterPublish = env.afterPublish
	}
	streak := 0
	_, err := walk(ctx, stream, c.Filter, now, walkOpts{}, func(l *Letter) error {
		// --max counts what is sent, so that letters kept on every run
		// never crowd out the others.
		if c.Max > 0 && res.Matched-res.Kept == c.Max {
			return errStopWalk
		}
		switch o := c.vet(ctx, env, l, &res); o {
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
		if err := waitTurn(ctx, pace); err != nil { // interrupted: l is left for the next run
			return err
		}
		res.Matched++
		if c.DryRun {
			t.row(l)
			return nil
		}
		o, err := c.replayOne(ctx, env, r, l)
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
		r.Sweep(ctx)
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

// vet decides whether l is to be replayed (done) and, for a dead letter
// written without its body, reads the body back from the original stream.
// It reports on stderr what it does not replay, except validation failures,
// which the summary counts by reason.
func (c *Command) vet(ctx context.Context, env *Env, l *Letter, res *replayCounts) outcome {
	if !l.IsDeadLetter() {
		c.report(env, l.Seq, "skipped: not a dead letter (no %s header, or subject %q not under %s)", deadletter.HeaderReason, l.Subject, deadletter.SubjectPrefix)
		return skipped
	}
	if !c.Force {
		if !deadletter.Replayable(l.Record.Reason) {
			res.invalid[string(l.Record.Reason)]++
			return kept
		}
		if n := l.Record.Replays; n >= c.MaxReplays {
			c.report(env, l.Seq, "kept: replayed %d times already (--max-replays %d) and dead-lettered again after each; "+
				"see why with \"cio-relay dlq show %d\", or replay it anyway with --force", n, c.MaxReplays, l.Seq)
			return kept
		}
		if c.Name == CmdReplay && l.Record.Reason == deadletter.ReasonAmbiguous && !c.replayUnchecked(env, l) {
			return kept
		}
	}
	if err := deadletter.ReadOmitted(ctx, env.JS, &l.Letter, env.Stream); err != nil {
		c.report(env, l.Seq, "kept: its body was left out of the dead letter (%s says why), and %v; nothing was published",
			deadletter.HeaderBodyOmitted, err)
		return stuck
	}
	l.Size = len(l.Body)
	return done
}

// replayUnchecked decides about an ambiguous trigger, whose request may
// have reached Customer.io, so that a replay could message its audience a
// second time: on a terminal it asks, otherwise it keeps the letter and
// points to resolve, which checks the broadcast's triggers first.
func (c *Command) replayUnchecked(env *Env, l *Letter) bool {
	const why = "an ambiguous broadcast trigger: its request may have reached Customer.io, and a replay would then message its audience twice"
	if env.Interactive && !c.DryRun {
		if env.ask(fmt.Sprintf("seq %d: %s; \"cio-relay dlq resolve %d\" checks the broadcast's triggers first. Replay it unchecked? [y/N] ", l.Seq, why, l.Seq)) {
			return true
		}
		c.report(env, l.Seq, "kept: not replayed; check it with \"cio-relay dlq resolve %d\"", l.Seq)
		return false
	}
	c.report(env, l.Seq, "kept: %s; check it with \"cio-relay dlq resolve %d\" (it looks up the broadcast's triggers), or replay it anyway with --force", why, l.Seq)
	return false
}

// replayOne replays l, reporting on stderr what did not go as planned. It
// returns an error only to end the replay.
func (c *Command) replayOne(ctx context.Context, env *Env, r *deadletter.Replayer, l *Letter) (outcome, error) {
	res, err := r.Replay(ctx, &l.Letter, c.Force)
	if res.Note != "" {
		c.report(env, l.Seq, "%s", res.Note)
	}
	switch res.Outcome {
	case deadletter.Replayed:
		return done, err
	case deadletter.Duplicate:
		return duplicate, err
	case deadletter.Gone:
		c.report(env, l.Seq, "skipped: already deleted from %s", env.DLQStream)
		return skipped, err
	case deadletter.Unknown:
		c.report(env, l.Seq, "kept: %v, then purge this dead letter, or replay it anyway with --force", res.Err)
		return stuck, err
	}
	if err == nil {
		c.report(env, l.Seq, "%v", res.Err)
	}
	return failed, err
}

// deleteOne deletes dead letter seq: done, skipped when it was already gone,
// or failed.
func (c *Command) deleteOne(ctx context.Context, env *Env, stream jetstream.Stream, seq uint64) outcome {
	switch err := deadletter.Delete(ctx, stream, seq); {
	case errors.Is(err, deadletter.ErrGone):
		c.report(env, seq, "skipped: %v", err)
		return skipped
	case err != nil:
		c.report(env, seq, "%v", err)
		return failed
	}
	return done
}

// report says what happened to one message, on stderr.
func (c *Command) report(env *Env, seq uint64, format string, args ...any) {
	if env.Progress != nil {
		fmt.Fprint(env.Progress, "\r\x1b[K")
	}
	fmt.Fprintf(env.Stderr, "seq %d: "+format+"\n", append([]any{seq}, args...)...)
}

// newPace is the limiter of --rate: at most r replays a second, evenly
// spaced (a burst of one); 0 is no limit.
func newPace(r int) *rate.Limiter {
	if r <= 0 {
		return rate.NewLimiter(rate.Inf, 0)
	}
	return rate.NewLimiter(rate.Limit(r), 1)
}

// waitTurn waits for the next replay's turn under pace. It ends with ctx's
// error when ctx ends first, and with context.DeadlineExceeded at once when
// the turn would come after ctx's deadline, so that a replay cut short
// either way says it was interrupted.
func waitTurn(ctx context.Context, pace *rate.Limiter) error {
	err := pace.Wait(ctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("%w: the next turn of --rate comes after it (%v)", context.DeadlineExceeded, err)
}
