package dlqcli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
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
	Failed     int // left in the dead-letter stream
	Skipped    int // not dead letters, or deleted by someone else meanwhile
}

// replayMsg is the message a dead letter is replayed as: its original
// subject, body and headers, with the messageId the worker had for it, where
// it was replayed from, and an id that makes JetStream drop a second copy.
func replayMsg(l *Letter, dlqStream string) *nats.Msg {
	m := nats.NewMsg(l.OriginalSubject())
	for k, vs := range l.Header {
		// Nats-* steered the dead-letter publish (its Nats-Msg-Id would
		// make the replay a duplicate of it); Cio-Relay-* described the
		// dead letter, and a replayed message is not one.
		if hasPrefixFold(k, "Nats-") || (hasPrefixFold(k, headerPrefix) && !strings.EqualFold(k, deadletter.HeaderMessageID)) {
			continue
		}
		for _, v := range vs {
			m.Header.Add(k, v)
		}
	}
	m.Header.Set(deadletter.HeaderReplayedFrom, strconv.FormatUint(l.Seq, 10))
	m.Header.Set(jetstream.MsgIDHeader, ReplayMsgID(dlqStream, l.Seq, l.Stored))
	m.Data = l.Body
	return m
}

// ReplayMsgID is the Nats-Msg-Id of the replay of dead letter seq, stored at
// stored: the same on every run, so a message published by a replay that
// stopped before deleting it is dropped by JetStream when the replay runs
// again. The stored time keeps it unique when the dead-letter stream is
// recreated and its sequences start again at 1.
func ReplayMsgID(dlqStream string, seq uint64, stored time.Time) string {
	return "replay-" + dlqStream + "-" + strconv.FormatUint(seq, 10) + "-" + strconv.FormatInt(stored.UnixNano(), 36)
}

// outcome is what became of one message.
type outcome int

const (
	done outcome = iota
	duplicate
	failed
	skipped
)

func (c *Command) replay(ctx context.Context, env *Env, stream jetstream.Stream) error {
	var res replayCounts
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
	streak := 0
	_, err := walk(ctx, stream, c.Filter, now, walkOpts{}, func(l *Letter) error {
		if c.Max > 0 && res.Matched == c.Max {
			return errStopWalk
		}
		if err := pace.wait(ctx); err != nil { // interrupted: l is left for the next run
			return err
		}
		res.Matched++
		if c.DryRun {
			t.row(l)
			return nil
		}
		o, err := c.replayOne(ctx, env, stream, l)
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
		case failed:
			res.Failed++
			if streak++; streak == maxConsecutiveFailures {
				return fmt.Errorf("giving up after %d failures in a row", streak)
			}
		}
		p.show("replaying: %d replayed, %d failed, %d skipped (seq %d)", res.Replayed, res.Failed, res.Skipped, l.Seq)
		return nil
	})
	p.clear()

	w := env.Stdout
	if c.DryRun {
		fmt.Fprintf(w, "dry run: %d would be replayed to %s; nothing changed\n", res.Matched, env.Stream)
		return err
	}
	dups := ""
	if res.Duplicates > 0 {
		dups = fmt.Sprintf(" (%d already in %s)", res.Duplicates, env.Stream)
	}
	fmt.Fprintf(w, "matched %d, replayed %d%s, failed %d, skipped %d\n", res.Matched, res.Replayed, dups, res.Failed, res.Skipped)
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintln(env.Stderr, "cio-relay dlq replay: interrupted; run the same command again to replay the rest")
		return errReported
	case err != nil:
		return err
	case res.Failed > 0:
		fmt.Fprintf(env.Stderr, "cio-relay dlq replay: %d failed and are still in %s; run the same command again to retry them\n", res.Failed, env.DLQStream)
		return errReported
	}
	return nil
}

// replayOne publishes l to its original subject, waits for the PubAck, and
// then deletes it from the dead-letter stream. It reports a failure on
// stderr and returns an error only to end the replay.
func (c *Command) replayOne(ctx context.Context, env *Env, stream jetstream.Stream, l *Letter) (outcome, error) {
	if !strings.HasPrefix(l.Subject, deadletter.SubjectPrefix) || l.Record.Reason == "" {
		c.report(env, l.Seq, "skipped: not a dead letter (no %s header, or subject %q not under %s)", deadletter.HeaderReason, l.Subject, deadletter.SubjectPrefix)
		return skipped, nil
	}
	// The message in hand is finished even if ctx is cancelled meanwhile,
	// so an interrupted replay leaves no message in both streams.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), messageTimeout)
	defer cancel()
	ack, err := env.JS.PublishMsg(mctx, replayMsg(l, env.DLQStream), jetstream.WithExpectStream(env.Stream))
	if err != nil {
		c.report(env, l.Seq, "publishing to %s (stream %s): %v", l.OriginalSubject(), env.Stream, err)
		return failed, nil
	}
	if env.afterPublish != nil {
		if err := env.afterPublish(l.Seq); err != nil {
			return failed, err
		}
	}
	o := done
	if ack.Duplicate {
		o = duplicate
	}
	if o2 := c.deleteOne(mctx, env, stream, l.Seq); o2 != done {
		return o2, nil
	}
	return o, nil
}

// deleteOne deletes dead letter seq: done, skipped when it was already gone,
// or failed.
func (c *Command) deleteOne(ctx context.Context, env *Env, stream jetstream.Stream, seq uint64) outcome {
	err := stream.DeleteMsg(ctx, seq)
	if err == nil {
		return done
	}
	// The delete error does not carry the server's code; asking for the
	// message tells "already gone" from a real failure.
	if _, gerr := stream.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		c.report(env, seq, "skipped: already deleted from %s", env.DLQStream)
		return skipped
	}
	c.report(env, seq, "deleting from %s: %v", env.DLQStream, err)
	return failed
}

// report says what happened to one message, on stderr.
func (c *Command) report(env *Env, seq uint64, format string, args ...any) {
	if env.Progress != nil {
		fmt.Fprint(env.Progress, "\r\x1b[K")
	}
	fmt.Fprintf(env.Stderr, "seq %d: "+format+"\n", append([]any{seq}, args...)...)
}

func (c *Command) purge(ctx context.Context, env *Env, stream jetstream.Stream) error {
	now := env.Now()
	p := &progress{w: env.Progress}
	n := 0
	upTo, err := walk(ctx, stream, c.Filter, now, walkOpts{headersOnly: true}, func(l *Letter) error {
		n++
		p.show("counting: %d dead letters (seq %d)", n, l.Seq)
		return nil
	})
	p.clear()
	if err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(env.Stdout, "no dead letters match; nothing deleted")
		return nil
	}
	if !c.Yes {
		fmt.Fprintf(env.Stderr, "Delete %d messages from %s? [y/N] ", n, env.DLQStream)
		answer, _ := bufio.NewReader(env.Stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			fmt.Fprintln(env.Stderr, "nothing deleted")
			return errReported
		}
	}

	// The same walk again, up to the same sequence: what was counted is
	// what is deleted, not what arrived while the question was asked.
	var deleted, failures, gone, streak int
	_, err = walk(ctx, stream, c.Filter, now, walkOpts{headersOnly: true, upTo: upTo}, func(l *Letter) error {
		switch c.deleteOne(ctx, env, stream, l.Seq) {
		case done:
			deleted++
			streak = 0
		case skipped:
			gone++
		default:
			failures++
			if streak++; streak == maxConsecutiveFailures {
				return fmt.Errorf("giving up after %d failures in a row", streak)
			}
		}
		p.show("deleting: %d of %d", deleted, n)
		return nil
	})
	p.clear()
	fmt.Fprintf(env.Stdout, "deleted %d of %d matching dead letters from %s", deleted, n, env.DLQStream)
	if gone > 0 {
		fmt.Fprintf(env.Stdout, " (%d were already gone)", gone)
	}
	fmt.Fprintln(env.Stdout)
	switch {
	case err != nil:
		return err
	case failures > 0:
		fmt.Fprintf(env.Stderr, "cio-relay dlq purge: %d could not be deleted\n", failures)
		return errReported
	}
	return nil
}

// pacer spaces calls to wait at most rate a second; rate 0 does not wait.
type pacer struct {
	every time.Duration
	next  time.Time
}

func newPacer(rate int) *pacer {
	if rate <= 0 {
		return &pacer{}
	}
	return &pacer{every: time.Second / time.Duration(rate)}
}

// wait returns when the next call may go, or with ctx's error.
func (p *pacer) wait(ctx context.Context) error {
	if p.every == 0 {
		return nil
	}
	if d := time.Until(p.next); d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
	p.next = time.Now().Add(p.every)
	return nil
}
