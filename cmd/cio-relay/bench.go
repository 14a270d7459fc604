package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cio-relay/cio-relay/internal/bench"
	"github.com/cio-relay/cio-relay/worker"
)

const benchUsage = `Usage: cio-relay bench [flags]

Measures cio-relay end to end on this machine: starts nats-server in its
own process with file storage (built from the version go.mod pins, or
--nats-server PATH; --nats-url uses a running one), publishes a backlog,
drains it with a bare pull consumer that only acks (the limit), then with
the worker delivering to a local Customer.io stand-in, then measures
publish→accepted latency at fixed rates for the bench's calls and for
~100-byte ones. --inprocess adds a second run with nats-server inside the
bench process.

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
		inprocess    bool
		rates        string
		corpora      string
		sendConc     int
		ordering     string
		maxAck       int
		replicas     int
		maxCalls     int
		flushEvery   time.Duration
		stallTimeout time.Duration
	)
	fs.IntVar(&cfg.Events, "events", bench.DefaultEvents, "backlog `size` in events")
	fs.Uint64Var(&cfg.Seed, "seed", bench.DefaultSeed, "generator seed")
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "use this running NATS server instead of starting one; the stream must not exist and is deleted at the end")
	fs.IntVar(&cfg.ServerPID, "nats-pid", 0, "with --nats-url: the server's `pid`, to report its CPU")
	fs.StringVar(&cfg.ServerBinary, "nats-server", "", "nats-server binary to start (default: built from the module go.mod pins, else nats-server on PATH)")
	fs.BoolVar(&inprocess, "inprocess", false, "then run again with nats-server inside the bench process (throughput only), as a second row")
	fs.StringVar(&cfg.StoreDir, "store-dir", "", "JetStream store of a server the bench starts (default: a temporary directory, removed at the end)")
	fs.StringVar(&cfg.Stream, "stream", worker.DefaultStream, "stream `name`")
	fs.IntVar(&cfg.PublishInFlight, "publish-inflight", bench.DefaultPublishInFlight, "async publishes awaiting a PubAck at once")
	fs.IntVar(&cfg.BarePullMax, "bare-pull-max", bench.DefaultBarePullMax, "PullMaxMessages of the bare consumer (the default is what the worker pulls with its defaults)")
	fs.BoolVar(&cfg.SkipBare, "skip-bare", false, "skip the bare-consumer phase")
	fs.StringVar(&rates, "latency-rates", "5000,50", "events per second of the latency scenarios, comma-separated")
	fs.StringVar(&corpora, "latency-corpora", "bench,small", "calls of the latency scenarios: bench (the backlog's mix), small (~100 bytes)")
	fs.DurationVar(&cfg.LatencyDuration, "latency-duration", bench.DefaultLatencyDuration, "length of each latency scenario")
	fs.BoolVar(&latencyOff, "skip-latency", false, "skip the latency phase")
	fs.StringVar(&ordering, "ordering", "off", "worker option RELAY_ORDERING: off, on, or both (drain the backlog unordered, then ordered, report the ratio, and run the latency scenarios ordered with a hot-key one added)")
	fs.IntVar(&sendConc, "send-concurrency", 0, "worker option: batches in flight (0: the worker's default)")
	fs.IntVar(&replicas, "stream-replicas", 0, "with --nats-url to a JetStream cluster: replicas of the streams (RELAY_STREAM_REPLICAS; 0: the worker's default, 1)")
	fs.IntVar(&maxAck, "max-ack-pending", 0, "worker option: consumer MaxAckPending (0: the worker's default)")
	fs.IntVar(&maxCalls, "batch-max-calls", 0, "worker option: calls per batch (0: the worker's default)")
	fs.DurationVar(&flushEvery, "flush-interval", 0, "worker option: flush interval (0: the worker's default)")
	fs.DurationVar(&stallTimeout, "stall-timeout", bench.DefaultStallTimeout, "fail when a phase makes no progress for this long")
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
	for f := range strings.SplitSeq(rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintf(stderr, "cio-relay bench: --latency-rates: %q is not a number\n", f)
			return 2
		}
		cfg.LatencyRates = append(cfg.LatencyRates, n)
	}
	for f := range strings.SplitSeq(corpora, ",") {
		cfg.LatencyCorpora = append(cfg.LatencyCorpora, bench.Corpus(strings.TrimSpace(f)))
	}
	cfg.StallTimeout = stallTimeout
	switch ordering {
	case "off", "on":
	case "both":
		cfg.CompareOrdering = true
	default:
		fmt.Fprintf(stderr, "cio-relay bench: --ordering: %q is not off, on or both\n", ordering)
		return 2
	}
	cfg.Worker = worker.Options{
		Ordering:        ordering == "on",
		SendConcurrency: sendConc,
		MaxAckPending:   maxAck,
		StreamReplicas:  replicas,
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
	if inprocess {
		ip := cfg
		ip.InProcess, ip.NATSURL, ip.ServerPID, ip.ServerBinary, ip.StoreDir = true, "", 0, "", ""
		ip.Worker.StreamReplicas = 0 // one server holds one replica
		ip.LatencyDuration = -1
		ip.CPUProfile, ip.Trace, ip.MemProfile, ip.MemProfileBase = nil, nil, nil, nil
		if res.InProcess, err = bench.Run(ctx, ip); err != nil {
			fmt.Fprintf(stderr, "cio-relay bench: in-process run: %v\n", err)
			return 1
		}
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
