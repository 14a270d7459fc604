package dlqcli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/worker"
)

// Env is what a command runs against.
type Env struct {
	JS        jetstream.JetStream
	DLQStream string // the dead-letter stream; default worker.DefaultDLQStream
	Stream    string // the stream a replay must land in; default worker.DefaultStream
	Stdin     io.Reader
	Stdout    io.Writer // the command's result
	Stderr    io.Writer // errors, the purge prompt
	// Progress is where a progress line is redrawn while a long command
	// runs: standard error when it is a terminal; nil shows none.
	Progress io.Writer
	Now      func() time.Time // default time.Now
	// Interactive says a person answers on Stdin (it is a terminal):
	// replay asks before it replays an ambiguous trigger, and resolve asks
	// before each purge or replay. Without it neither asks: replay keeps
	// ambiguous triggers, resolve only reports unless told --yes.
	Interactive bool
	// Triggers reads a broadcast's triggers from Customer.io, for
	// resolve; nil when no App API key is configured.
	Triggers TriggerLister

	answers *bufio.Reader // Stdin, read a line per question

	// afterPublish, set by tests, runs when a replayed message has its
	// PubAck and before its delete. An error abandons the message right
	// there, as a crash would, and ends the replay with that error.
	afterPublish func(seq uint64) error
}

func (e *Env) setDefaults() {
	if e.DLQStream == "" {
		e.DLQStream = worker.DefaultDLQStream
	}
	if e.Stream == "" {
		e.Stream = worker.DefaultStream
	}
	if e.Stdin == nil {
		e.Stdin = strings.NewReader("")
	}
	if e.Stdout == nil {
		e.Stdout = io.Discard
	}
	if e.Stderr == nil {
		e.Stderr = io.Discard
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	e.answers = bufio.NewReader(e.Stdin)
}

// ask puts a yes/no question on Stderr and reads the answer from Stdin: a
// line of y or yes is yes, anything else (end of input included) no.
func (e *Env) ask(question string) bool {
	if e.Progress != nil {
		fmt.Fprint(e.Progress, "\r\x1b[K")
	}
	fmt.Fprint(e.Stderr, question)
	answer, _ := e.answers.ReadString('\n')
	a := strings.ToLower(strings.TrimSpace(answer))
	return a == "y" || a == "yes"
}

// Run runs c and returns the process exit code: 0 on success, 1 when the
// command failed, in part (a replay with failures) or whole.
func (c *Command) Run(ctx context.Context, env Env) int {
	env.setDefaults()
	err := c.run(ctx, &env)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errReported):
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		// The command's own context, not a JetStream request's timeout.
		fmt.Fprintf(env.Stderr, "cio-relay dlq %s: interrupted\n", c.Name)
	default:
		fmt.Fprintf(env.Stderr, "cio-relay dlq %s: %v\n", c.Name, err)
	}
	return 1
}

// errReported is returned by a command that has already said what went
// wrong, to make the exit code 1 without saying it again.
var errReported = errors.New("reported")

func (c *Command) run(ctx context.Context, env *Env) error {
	// Retried through a leader election (the stream's, or the meta
	// leader's): a request then times out or finds no responders.
	var stream jetstream.Stream
	err := retrying(ctx, func(ctx context.Context) (err error) {
		stream, err = env.JS.Stream(ctx, env.DLQStream)
		return err
	})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("dead-letter stream %s not found: nothing has been dead-lettered yet, or RELAY_DLQ_STREAM names another stream", env.DLQStream)
	}
	if err != nil {
		return fmt.Errorf("looking up dead-letter stream %s: %w", env.DLQStream, err)
	}
	switch c.Name {
	case CmdList:
		return c.list(ctx, env, stream)
	case CmdShow:
		return c.show(ctx, env, stream)
	case CmdStats:
		return c.stats(ctx, env, stream)
	case CmdReplay:
		return c.replay(ctx, env, stream)
	case CmdPurge:
		return c.purge(ctx, env, stream)
	case CmdResolve:
		return c.resolve(ctx, env, stream)
	}
	return fmt.Errorf("unknown command %q", c.Name)
}

// progressEvery is how often the progress line is redrawn: often enough to
// look alive, seldom enough to cost nothing next to a round trip.
const progressEvery = 100 * time.Millisecond

// progress redraws one line on a terminal; with no terminal it does
// nothing.
type progress struct {
	w     io.Writer
	last  time.Time
	shown bool
}

// show redraws the line, at most every progressEvery.
func (p *progress) show(format string, args ...any) {
	if p.w == nil || time.Since(p.last) < progressEvery {
		return
	}
	p.last = time.Now()
	p.shown = true
	fmt.Fprintf(p.w, "\r\x1b[K"+format, args...)
}

// clear erases the line, before other output or at the end.
func (p *progress) clear() {
	if p.w == nil || !p.shown {
		return
	}
	fmt.Fprint(p.w, "\r\x1b[K")
	p.shown = false
	p.last = time.Time{}
}
