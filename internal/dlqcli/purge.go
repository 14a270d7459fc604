package dlqcli

import (
	"bufio"
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

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
