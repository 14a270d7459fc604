package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/cio-relay/cio-relay/internal/bench"
	"github.com/cio-relay/cio-relay/worker"
)

const benchUsage = `Usage: cio-relay bench [flags]

Measures cio-relay end to end on this machine: publishes a backlog to a
JetStream stream (an in-process nats-server with file storage unless
--nats-url is given), drains it with a bare pull consumer that only acks
(the limit), then with the worker delivering to a local Customer.io
stand-in, then measures publish→delivery latency at a fixed rate.

A table goes to stdout (JSON with --json), progress to stderr.

Flags:
`

// runBench is the bench subcommand. It reads no environment variable
// (getenv is unused), so it cannot be pointed at a production NATS by a
// stray NATS_URL: only --nats-url does that.
func runBench(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	_ = getenv
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fs.PrintDefaults()
	}
	var (
		cfg          bench.Config
		asJSON       bool
		cpuProfile   string
		traceFile    string
		memProfile   string
		logLevel     string
		latencyOff   bool
		sendConc     int
		maxAck       int
		maxCalls     int
		flushEvery   time.Duration
		stallTimeout time.Duration
	)
	fs.IntVar(&cfg.Events, "events", 1_000_000, "backlog `size` in events")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "generator seed")
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "use this NATS server instead of starting one in-process; the stream must not exist and is deleted at the end")
	fs.StringVar(&cfg.StoreDir, "store-dir", "", "JetStream store of the in-process server (default: a temporary directory, removed at the end)")
	fs.StringVar(&cfg.Stream, "stream", "CIO", "stream `name`")
	fs.IntVar(&cfg.PublishInFlight, "publish-inflight", 4_000, "async publishes awaiting a PubAck at once")
	fs.IntVar(&cfg.BarePullMax, "bare-pull-max", 1_000, "PullMaxMessages of the bare consumer (the worker's default is 1000)")
	fs.BoolVar(&cfg.SkipBare, "skip-bare", false, "skip the bare-consumer phase")
	fs.IntVar(&cfg.LatencyRate, "latency-rate", 5_000, "events per second in the latency phase")
	fs.DurationVar(&cfg.LatencyDuration, "latency-duration", 10*time.Second, "length of the latency phase")
	fs.BoolVar(&latencyOff, "skip-latency", false, "skip the latency phase")
	fs.IntVar(&sendConc, "send-concurrency", 0, "worker option: batches in flight (0: the worker's default)")
	fs.IntVar(&maxAck, "max-ack-pending", 0, "worker option: consumer MaxAckPending (0: the worker's default)")
	fs.IntVar(&maxCalls, "batch-max-calls", 0, "worker option: calls per batch (0: the worker's default)")
	fs.DurationVar(&flushEvery, "flush-interval", 0, "worker option: flush interval (0: the worker's default)")
	fs.DurationVar(&stallTimeout, "stall-timeout", 60*time.Second, "fail when a phase makes no progress for this long")
	fs.BoolVar(&asJSON, "json", false, "write the result as JSON instead of a table")
	fs.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the worker phase to `file`")
	fs.StringVar(&traceFile, "trace", "", "write an execution trace of the worker phase to `file` (go tool trace)")
	fs.StringVar(&memProfile, "memprofile", "", "write an allocation profile after the worker phase to `file`, and one from just before it to file.base (go tool pprof -sample_index=alloc_objects -base file.base file)")
	fs.StringVar(&logLevel, "log-level", "warn", "the worker's log level, to stderr: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cio-relay bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "cio-relay bench: --log-level: %v\n", err)
		return 2
	}
	if latencyOff {
		cfg.LatencyDuration = -1
	}
	cfg.StallTimeout = stallTimeout
	cfg.Worker = worker.Options{
		SendConcurrency: sendConc,
		MaxAckPending:   maxAck,
		BatchMaxCalls:   maxCalls,
		FlushInterval:   flushEvery,
	}
	cfg.Progress = stderr
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	create := func(name string) (*os.File, error) {
		f, err := os.Create(name)
		if err != nil {
			return nil, err
		}
		closers = append(closers, f.Close)
		return f, nil
	}
	if cpuProfile != "" {
		f, err := create(cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "cio-relay bench: --cpuprofile: %v\n", err)
			return 2
		}
		cfg.CPUProfile = f
	}
	if traceFile != "" {
		f, err := create(traceFile)
		if err != nil {
			fmt.Fprintf(stderr, "cio-relay bench: --trace: %v\n", err)
			return 2
		}
		cfg.Trace = f
	}
	if memProfile != "" {
		f, err := create(memProfile)
		if err != nil {
			fmt.Fprintf(stderr, "cio-relay bench: --memprofile: %v\n", err)
			return 2
		}
		base, err := create(memProfile + ".base")
		if err != nil {
			fmt.Fprintf(stderr, "cio-relay bench: --memprofile: %v\n", err)
			return 2
		}
		cfg.MemProfile, cfg.MemProfileBase = f, base
	}

	res, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay bench: %v\n", err)
		return 1
	}
	if asJSON {
		err = res.WriteJSON(stdout)
	} else {
		err = res.WriteTable(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay bench: %v\n", err)
		return 1
	}
	return 0
}
