package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/dlqcli"
	"github.com/cio-relay/cio-relay/publish"
)

const publishUsage = `Usage: cio-relay publish [flags] [FILE] [NATS settings]

Publish calls to the queue cio-relay delivers from: one JSON object a line
(NDJSON), read from FILE, or from standard input when FILE is absent or "-".
Blank lines are skipped.

Each call is checked as the worker checks it and published on cio.<type>,
compacted, with "type" and "messageId" added when absent, and with
Nats-Msg-Id set to its messageId, so JetStream drops a call published twice
within the stream's duplicate window. A call without a messageId gets one
made for this run, or, with --id-prefix, one that is the same on every run
of the same file. An invalid line is reported with its number and reason
and skipped; the exit code is then 1.

A call whose PubAck does not come within 5s, or that finds no stream
leader (a JetStream cluster electing one), is sent again with the same
Nats-Msg-Id for up to 30s, so a leader election stores it once; a call
still not stored then is reported with its messageId, and the exit code
is 1.

Flags:
  --type T          the type of every call: identify, track, page, screen,
                    group or alias (a line's own "type" must agree); without
                    it each line's "type" field gives its type
  --strict          stop at the first invalid line
  --max-pending N   calls awaiting their PubAck at once (default 256)
  --id-prefix P     messageIds made for calls without one are P-1, P-2, …
                    in file order, so publishing the same file again (after
                    an interruption, say) repeats them: JetStream and
                    Customer.io drop the duplicates. Use a new P per file.

NATS settings are those of the worker: the NATS_* environment variables or
their flags (-nats-url ...; "cio-relay run -h" lists them), and RELAY_STREAM,
the stream the calls must land in. With NATS_URL unset, the command
publishes to the worker's embedded server at RELAY_EMBEDDED_LISTEN, or, when
nothing answers there, into RELAY_DATA_DIR with an in-process server, for the
worker to deliver when it starts.
`

// maxLine bounds a line read: far above the 32000 bytes a call may have on
// the wire, so a pretty-printed call still fits, and small enough that a
// file that is not NDJSON cannot exhaust memory.
const maxLine = 1 << 20

// publishWaitLimit bounds the wait for the last PubAcks: one call's whole
// retry budget and a margin.
const publishWaitLimit = publish.DefaultRetryMaxElapsed + publish.DefaultAckTimeout + 10*time.Second

// publishProgressEvery is how often the progress line is redrawn.
const publishProgressEvery = 100 * time.Millisecond

// runPublish is the publish subcommand: publish NDJSON calls.
func runPublish(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cio-relay publish", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	typeName := fs.String("type", "", "")
	strict := fs.Bool("strict", false, "")
	maxPending := fs.Int("max-pending", publish.DefaultMaxPending, "")
	idPrefix := fs.String("id-prefix", "", "")
	usageErr := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "cio-relay publish: "+format+"\nRun \"cio-relay publish -h\" for usage.\n", args...)
		return 2
	}
	own, positional, connArgs, err := dlqcli.SplitFlags(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, publishUsage)
		return 0
	}
	if err == nil {
		err = fs.Parse(own)
	}
	if err != nil {
		return usageErr("%v", err)
	}
	if len(positional) > 1 {
		return usageErr("want at most one FILE, got %q", positional)
	}
	t := event.Unknown
	if *typeName != "" {
		if t = event.ParseType(*typeName); t == event.Unknown {
			return usageErr("--type: want identify, track, page, screen, group or alias, got %q", *typeName)
		}
	}
	if err := publish.CheckIDPrefix(*idPrefix); err != nil {
		return usageErr("--id-prefix: %v", err)
	}
	if *maxPending < 1 {
		return usageErr("--max-pending: must be at least 1, got %d", *maxPending)
	}
	in, name := stdin, "standard input"
	if len(positional) == 1 && positional[0] != "-" {
		f, err := os.Open(positional[0])
		if err != nil {
			fmt.Fprintf(stderr, "cio-relay publish: %v\n", err)
			return 1
		}
		defer f.Close()
		in, name = f, positional[0]
	}

	cfg, ok := loadCLIConfig("publish", connArgs, getenv, stderr)
	if !ok {
		return 2
	}
	log := newLogger(cfg.Ops, stderr)
	js, disconnect, err := connectCLI(cfg, log, "publish")
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay publish: %v\n", err)
		return 1
	}
	defer disconnect()
	var pub *publisher
	opts := publish.Options{Stream: cfg.Queue.Stream, MaxPending: *maxPending,
		OnFailure: func(pe *publish.PublishError) { pub.failed(pe) }}
	if *idPrefix != "" {
		opts.IDPrefix = *idPrefix + "-"
	}
	p, err := publish.New(js, opts)
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay publish: %v\n", err)
		return 1
	}
	var progress io.Writer
	if isTerminal(stderr) {
		progress = stderr
	}
	pub = &publisher{p: p, t: t, strict: *strict, stderr: stderr, progress: progress}
	return pub.run(ctx, in, name, stdout)
}

// publisher publishes the lines of one input.
type publisher struct {
	p        *publish.Publisher
	t        event.Type // event.Unknown: each line's "type"
	strict   bool
	stderr   io.Writer
	progress io.Writer // nil: no progress line

	lines, invalid int
	drawn          time.Time
}

func (pub *publisher) run(ctx context.Context, in io.Reader, name string, stdout io.Writer) int {
	start := time.Now()
	stopErr := pub.readAll(ctx, in)
	if pub.progress != nil && !pub.drawn.IsZero() {
		fmt.Fprint(pub.progress, "\r\x1b[K")
	}
	// Wait for the PubAcks of what was sent, also when interrupted, so the
	// summary says what was stored; bounded, as the server may be gone,
	// but long enough for the last call's retries.
	waitCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishWaitLimit)
	defer cancel()
	waitErr := pub.p.Wait(waitCtx)
	elapsed := time.Since(start)

	s := pub.p.Stats()
	dups := ""
	if s.Duplicates > 0 {
		dups = fmt.Sprintf(" (%d already stored)", s.Duplicates)
	}
	if s.Retries > 0 {
		dups += fmt.Sprintf(" (%d sends repeated after a PubAck timeout or a leader change)", s.Retries)
	}
	fmt.Fprintf(stdout, "published %d%s, invalid %d, failed %d, %d bytes in %v (%.0f calls/s)\n",
		s.Published, dups, pub.invalid, s.Failed, s.Bytes, elapsed.Round(time.Millisecond), float64(s.Published)/max(elapsed.Seconds(), 1e-3))

	code := 0
	if stopErr != nil {
		fmt.Fprintf(pub.stderr, "cio-relay publish: %s: %v\n", name, stopErr)
		code = 1
	}
	if waitErr != nil {
		if s.Failed > 0 {
			fmt.Fprintf(pub.stderr, "cio-relay publish: %d calls not stored (each reported above)\n", s.Failed)
		} else {
			fmt.Fprintf(pub.stderr, "cio-relay publish: %v\n", waitErr)
		}
		code = 1
	}
	if pub.invalid > 0 {
		code = 1
	}
	return code
}

// errStrict stops a --strict run at its first invalid line.
var errStrict = errors.New("stopped at the first invalid line (--strict)")

// readAll publishes every line of in. Its error says why it stopped early.
// Lines are read by a goroutine of their own, so an interruption is
// noticed while a read blocks, as on a terminal; the process ends soon
// after.
func (pub *publisher) readAll(ctx context.Context, in io.Reader) error {
	lines := make(chan inputLine, 64)
	done := make(chan struct{})
	defer close(done)
	go readLines(in, lines, done)
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted after line %d", pub.lines)
		case l, ok := <-lines:
			switch {
			case !ok:
				return nil
			case l.err != nil:
				return fmt.Errorf("reading line %d: %w", pub.lines+1, l.err)
			}
			pub.lines++
			if err := pub.line(ctx, l.text, l.tooLong); err != nil {
				return err
			}
		}
	}
}

// inputLine is one line read, trimmed, or the error that ended reading.
type inputLine struct {
	text    []byte
	tooLong bool // longer than maxLine: text is nil
	err     error
}

// readLines sends the lines of in on out until the end of in, an error,
// or done, and then closes out.
func readLines(in io.Reader, out chan<- inputLine, done <-chan struct{}) {
	defer close(out)
	send := func(l inputLine) bool {
		select {
		case out <- l:
			return true
		case <-done:
			return false
		}
	}
	r := bufio.NewReaderSize(in, maxLine)
	for {
		line, err := r.ReadSlice('\n')
		l := inputLine{text: bytes.Clone(bytes.TrimSpace(line))}
		if errors.Is(err, bufio.ErrBufferFull) {
			l = inputLine{tooLong: true}
			for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of the line
				_, err = r.ReadSlice('\n')
			}
		}
		if len(line) > 0 && !send(l) {
			return
		}
		switch {
		case errors.Is(err, io.EOF):
			return
		case err != nil:
			send(inputLine{err: err})
			return
		}
	}
}

// line publishes one line; its error stops the run.
func (pub *publisher) line(ctx context.Context, line []byte, tooLong bool) error {
	if len(line) == 0 && !tooLong {
		return nil
	}
	var err error
	if tooLong {
		err = &event.InvalidError{Reason: event.ReasonTooLarge, Detail: fmt.Sprintf("line is longer than %d bytes", maxLine)}
	} else {
		_, err = pub.p.PublishType(ctx, pub.t, line)
	}
	var ie *event.InvalidError
	switch {
	case errors.As(err, &ie):
		pub.invalid++
		pub.clearProgress()
		fmt.Fprintf(pub.stderr, "line %d: %v\n", pub.lines, err)
		if pub.strict {
			return errStrict
		}
	case err != nil:
		return fmt.Errorf("line %d: %w", pub.lines, err)
	}
	pub.showProgress()
	return nil
}

// failed reports a call that was not stored (publish.Options.OnFailure).
func (pub *publisher) failed(pe *publish.PublishError) {
	pub.clearProgress()
	fmt.Fprintf(pub.stderr, "not stored: %v\n", pe)
}

func (pub *publisher) showProgress() {
	if pub.progress == nil || time.Since(pub.drawn) < publishProgressEvery {
		return
	}
	pub.drawn = time.Now()
	s := pub.p.Stats()
	fmt.Fprintf(pub.progress, "\r\x1b[Kpublishing: line %d, %d published, %d invalid", pub.lines, s.Published, pub.invalid)
}

func (pub *publisher) clearProgress() {
	if pub.progress != nil && !pub.drawn.IsZero() {
		fmt.Fprint(pub.progress, "\r\x1b[K")
		pub.drawn = time.Time{}
	}
}
