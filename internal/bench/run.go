package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// The defaults of Config, exported for the bench command's flags.
const (
	DefaultEvents          = 1_000_000
	DefaultSeed            = 1
	DefaultPublishInFlight = 4_000 // nats.go's own
	DefaultBarePullMax     = 1_000 // what the worker pulls with its default options
	DefaultLatencyDuration = 10 * time.Second
	DefaultStallTimeout    = 60 * time.Second
)

// Config configures a run. Zero values take the defaults noted.
type Config struct {
	Events int    // backlog size; default 1,000,000
	Seed   uint64 // generator seed; default 1

	// Where NATS runs. By default the bench starts a nats-server binary in
	// its own process, as a user runs it: ServerBinary, else one built from
	// the module go.mod pins, else the nats-server on PATH. InProcess starts
	// it inside the bench process instead (then its CPU and memory count as
	// the bench's). NATSURL uses a running server; ServerPID, when given, is
	// its process, whose CPU the bench then reads.
	NATSURL      string
	ServerPID    int
	ServerBinary string
	InProcess    bool
	// StoreDir is the JetStream store of a server the bench starts; default
	// a temporary directory, removed at the end.
	StoreDir string
	// Stream is the stream published to; default worker.DefaultStream. It must not exist
	// yet: the run creates it (as the worker would) and deletes it at the
	// end when the server is external.
	Stream string

	PublishInFlight int // async publishes awaiting their PubAck at once; default 4,000 (nats.go's)
	// BarePullMax is the bare consumer's PullMaxMessages; default 1,000,
	// what the worker uses with its default options.
	BarePullMax int
	SkipBare    bool

	// The latency phase runs one scenario per rate and corpus, in that
	// order, each for LatencyDuration (default 10s; negative skips them).
	LatencyRates    []int    // events per second; default 5,000 and 50
	LatencyCorpora  []Corpus // default CorpusBench and CorpusSmall
	LatencyDuration time.Duration

	// Worker overrides the worker's options; zero fields keep the worker's
	// defaults. Stream and ManageStreams are always set by the run.
	Worker worker.Options
	// CompareOrdering drains the backlog twice: first unordered (the
	// headline, Worker.Ordering off), then ordered (Worker.Ordering on, its
	// own consumer), reporting the ratio; the latency scenarios then run on
	// the ordered worker, with a hot-key scenario (CorpusHotKey) added at
	// the first rate.
	CompareOrdering bool

	// StallTimeout fails the run when a phase makes no progress for this
	// long; default 60s.
	StallTimeout time.Duration

	CPUProfile     io.Writer // CPU profile of the worker phase
	Trace          io.Writer // execution trace of the worker phase (go tool trace)
	MemProfileBase io.Writer // allocs profile taken just before the worker phase
	MemProfile     io.Writer // allocs profile taken just after it (go tool pprof -base)

	Progress io.Writer    // a line as each step starts and ends; nil: none
	Logger   *slog.Logger // the worker's logger; default discard
}

func (c *Config) setDefaults() {
	if c.Events == 0 {
		c.Events = DefaultEvents
	}
	if c.Seed == 0 {
		c.Seed = DefaultSeed
	}
	if c.Stream == "" {
		c.Stream = worker.DefaultStream
	}
	if c.PublishInFlight == 0 {
		c.PublishInFlight = DefaultPublishInFlight
	}
	if c.BarePullMax == 0 {
		c.BarePullMax = DefaultBarePullMax
	}
	if c.LatencyRates == nil {
		c.LatencyRates = []int{5_000, 50}
	}
	if c.LatencyCorpora == nil {
		c.LatencyCorpora = []Corpus{CorpusBench, CorpusSmall}
	}
	if c.LatencyDuration == 0 {
		c.LatencyDuration = DefaultLatencyDuration
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Events < 1 {
		errs = append(errs, fmt.Errorf("events %d must be at least 1", c.Events))
	}
	if c.PublishInFlight < 1 {
		errs = append(errs, fmt.Errorf("publish in-flight %d must be at least 1", c.PublishInFlight))
	}
	if c.BarePullMax < 1 {
		errs = append(errs, fmt.Errorf("bare pull max %d must be at least 1", c.BarePullMax))
	}
	for _, rate := range c.LatencyRates {
		if rate < 1 {
			errs = append(errs, fmt.Errorf("latency rate %d must be at least 1", rate))
		}
	}
	for _, c := range c.LatencyCorpora {
		if c != CorpusBench && c != CorpusSmall {
			errs = append(errs, fmt.Errorf("corpus %q is neither %q nor %q", c, CorpusBench, CorpusSmall))
		}
	}
	if c.InProcess && (c.NATSURL != "" || c.ServerBinary != "") {
		errs = append(errs, errors.New("in-process and an external server (URL or binary) at once"))
	}
	if c.NATSURL != "" && c.ServerBinary != "" {
		errs = append(errs, errors.New("both a server URL and a server binary to start"))
	}
	if c.Worker.StreamReplicas > 1 && c.NATSURL == "" {
		errs = append(errs, fmt.Errorf("stream replicas %d need a JetStream cluster: a server URL (the bench starts a single server)", c.Worker.StreamReplicas))
	}
	return errors.Join(errs...)
}

// The messageIds of the two phases' calls.
const (
	backlogPrefix = "bench-backlog-"
	latencyPrefix = "bench-latency-"
	apiKey        = "bench-cdp-key"
	bareConsumer  = "bench-bare"
)

// Run runs a benchmark and returns what it measured. It fails when a call
// is not delivered (an over-limit request shows up that way: the stand-in
// answers it 200 and drops it, as Customer.io does) or a phase stalls.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Result{
		Events:          cfg.Events,
		Seed:            cfg.Seed,
		Stream:          cfg.Stream,
		NATSVersion:     server.VERSION,
		Machine:         describeMachine(),
		FlushInterval:   cfg.Worker.FlushInterval.Seconds(),
		LatencyDuration: cfg.LatencyDuration.Seconds(),
	}
	if r.FlushInterval == 0 {
		r.FlushInterval = time.Second.Seconds() // the worker's default
	}
	prog := func(format string, args ...any) {
		fmt.Fprintf(cfg.Progress, "bench: "+format+"\n", args...)
	}

	url, closeServer, err := r.openServer(ctx, &cfg, prog)
	if err != nil {
		return nil, err
	}
	defer closeServer()
	pid := r.NATSServerPID

	si := newStandIn(apiKey)
	defer si.Close()

	// Each role has its own connection, as it would in production.
	pubNC, err := nats.Connect(url, nats.Name("cio-relay bench publisher"))
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS: %w", err)
	}
	defer pubNC.Close()
	var pubErrs atomic.Int64
	var firstPubErr atomic.Value
	pubJS, err := jetstream.New(pubNC,
		jetstream.WithPublishAsyncMaxPending(cfg.PublishInFlight),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			pubErrs.Add(1)
			firstPubErr.CompareAndSwap(nil, err)
		}))
	if err != nil {
		return nil, err
	}

	streamCfg := worker.StreamConfig(cfg.Stream)
	// As the worker creates it: on a cluster, with Worker.StreamReplicas
	// replicas (the dead-letter stream, which the worker creates, too).
	streamCfg.Replicas = max(cfg.Worker.StreamReplicas, 1)
	if _, err := pubJS.Stream(ctx, cfg.Stream); err == nil {
		return nil, fmt.Errorf("stream %s already exists: the bench needs it empty; delete it or choose another with --stream", cfg.Stream)
	}
	if _, err := pubJS.CreateStream(ctx, streamCfg); err != nil {
		return nil, fmt.Errorf("creating stream %s: %w", cfg.Stream, err)
	}
	if cfg.NATSURL != "" {
		// A server the bench did not start outlives the run: leave it as found. The
		// dead-letter stream is deleted only if the worker created it.
		dlq := cfg.Worker.DLQStream
		if dlq == "" {
			dlq = worker.DefaultDLQStream
		}
		_, err := pubJS.Stream(ctx, dlq)
		dlqExisted := err == nil
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = pubJS.DeleteStream(dctx, cfg.Stream)
			if !dlqExisted {
				_ = pubJS.DeleteStream(dctx, dlq)
			}
		}()
	}

	// 1. Publish the backlog.
	prog("publishing %d events to stream %s…", cfg.Events, cfg.Stream)
	if r.Publish, r.PublishedBytes, err = publishBacklog(ctx, pubJS, cfg, pid); err != nil {
		return nil, err
	}
	if n := pubErrs.Load(); n > 0 {
		return nil, fmt.Errorf("publish: %d events failed, the first with: %v", n, firstPubErr.Load())
	}
	stream, err := pubJS.Stream(ctx, cfg.Stream)
	if err != nil {
		return nil, err
	}
	if got := stream.CachedInfo().State.Msgs; got != uint64(cfg.Events) {
		return nil, fmt.Errorf("stream %s holds %d messages after publishing %d", cfg.Stream, got, cfg.Events)
	}
	r.StreamBytes = stream.CachedInfo().State.Bytes
	r.SyncSeconds = timeSync()
	prog("published in %.2fs (%.0f events/s, %.1f MB/s)", r.Publish.Seconds, r.Publish.EventsPerSec, r.Publish.MBPerSec)

	// 2. The bare limit.
	if !cfg.SkipBare {
		prog("bare consumer: pull and ack %d events…", cfg.Events)
		r.Bare, err = runBare(ctx, url, cfg, pid, false)
		if err != nil {
			return nil, fmt.Errorf("bare consumer: %w", err)
		}
		prog("bare consumer: %.2fs (%.0f events/s)", r.Bare.Seconds, r.Bare.EventsPerSec)
		if cfg.CompareOrdering {
			prog("bare consumer, pinned: pull and ack %d events…", cfg.Events)
			bp, err := runBare(ctx, url, cfg, pid, true)
			if err != nil {
				return nil, fmt.Errorf("bare pinned consumer: %w", err)
			}
			r.BarePinned = &bp
			prog("bare consumer, pinned: %.2fs (%.0f events/s)", bp.Seconds, bp.EventsPerSec)
		}
	}

	// 3. cio-relay on the same backlog.
	r.SyncSeconds += timeSync()
	if cfg.CompareOrdering {
		cfg.Worker.Ordering = false
	}
	prog("cio-relay: deliver %d events (ordering %v)…", cfg.Events, cfg.Worker.Ordering)
	wr, err := startWorker(ctx, url, si, cfg)
	if err != nil {
		return nil, err
	}
	defer func() { _ = wr.stop() }() // after an error; the normal path stops it below
	if err := r.workerPhase(ctx, si, wr, cfg, pid); err != nil {
		return nil, fmt.Errorf("cio-relay: %w", err)
	}
	prog("cio-relay: %.2fs (%.0f events/s), %d requests, mean fill %.1f%%", r.Worker.Seconds, r.Worker.EventsPerSec,
		r.Batches.Requests, 100*r.Batches.MeanFill)
	if cfg.CompareOrdering {
		// The same backlog again, ordered, from a consumer of its own.
		if err := wr.stop(); err != nil {
			return nil, err
		}
		r.SyncSeconds += timeSync()
		ordered := cfg
		ordered.Worker.Ordering = true
		ordered.Worker.Consumer = "cio-relay-ordered"
		ordered.CPUProfile, ordered.Trace, ordered.MemProfile, ordered.MemProfileBase = nil, nil, nil, nil
		prog("cio-relay ordered: deliver %d events…", cfg.Events)
		if wr, err = startWorker(ctx, url, si, ordered); err != nil {
			return nil, err
		}
		var or Result
		or.PublishedBytes = r.PublishedBytes
		if err := or.workerPhase(ctx, si, wr, ordered, pid); err != nil {
			return nil, fmt.Errorf("cio-relay ordered: %w", err)
		}
		or.Worker.Name = "cio-relay ord"
		r.Ordered = &or.Worker
		r.OrderedBatches = &or.Batches
		prog("cio-relay ordered: %.2fs (%.0f events/s; first batch at %.0f ms, last full batch at %.2fs), %d requests, mean fill %.1f%%", or.Worker.Seconds, or.Worker.EventsPerSec, 1e3*or.WorkerFirstCallSeconds, or.WorkerBacklogSeconds,
			or.Batches.Requests, 100*or.Batches.MeanFill)
		if len(cfg.LatencyRates) > 0 && cfg.LatencyDuration > 0 && !slices.Contains(cfg.LatencyCorpora, CorpusHotKey) {
			cfg.LatencyCorpora = append(slices.Clone(cfg.LatencyCorpora), CorpusHotKey)
		}
	}

	// 4. Latency at fixed rates, the worker still running.
	for i, rate := range cfg.LatencyRates {
		for _, corpus := range cfg.LatencyCorpora {
			if cfg.LatencyDuration <= 0 {
				break
			}
			if corpus == CorpusHotKey && i > 0 {
				continue // one hot-key scenario, at the first rate
			}
			prog("latency: %d %s events/s for %v…", rate, corpus, cfg.LatencyDuration)
			l, err := runLatency(ctx, pubJS, si, wr, cfg, rate, corpus, pid)
			if err != nil {
				return nil, fmt.Errorf("latency at %d/s (%s): %w", rate, corpus, err)
			}
			if n := pubErrs.Load(); n > 0 {
				return nil, fmt.Errorf("latency: %d publishes failed, the first with: %v", n, firstPubErr.Load())
			}
			prog("latency: p50 %.0fms p99 %.0fms max %.0fms, %.1f requests/s", 1e3*l.P50, 1e3*l.P99, 1e3*l.Max, l.RequestsPerSec)
			r.Latency = append(r.Latency, l)
		}
	}
	if err := wr.stop(); err != nil {
		return nil, err
	}
	if n := si.stray.Load(); n > 0 {
		return nil, fmt.Errorf("the stand-in got %d requests outside any phase", n)
	}
	// getrusage's maxrss is the same high-water mark each phase resets:
	// the run's peak is the largest of the phases'.
	r.MaxRSSBytes = max(maxRSS(), r.Publish.PeakRSSBytes, r.Bare.PeakRSSBytes, r.Worker.PeakRSSBytes)
	for _, l := range r.Latency {
		r.MaxRSSBytes = max(r.MaxRSSBytes, l.Phase.PeakRSSBytes)
	}
	r.evaluate()
	return r, nil
}

// publishBacklog publishes cfg.Events calls with async publish, at most
// cfg.PublishInFlight awaiting their PubAck, and waits for every PubAck.
// Generating the calls is part of the timed phase: a publisher has to
// produce its calls too.
func publishBacklog(ctx context.Context, js jetstream.JetStream, cfg Config, server int) (Phase, int64, error) {
	gen := newGenerator(cfg.Seed, backlogPrefix)
	m := begin("publish", server, nil)
	var bytes int64
	for i := range cfg.Events {
		subject, body := gen.next(i)
		bytes += int64(len(body))
		if _, err := js.PublishAsync(subject, body, jetstream.WithStallWait(cfg.StallTimeout)); err != nil {
			return Phase{}, 0, fmt.Errorf("publishing event %d: %w", i, err)
		}
		if i&0xfff == 0 && ctx.Err() != nil {
			return Phase{}, 0, ctx.Err()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(cfg.StallTimeout):
		return Phase{}, 0, fmt.Errorf("publish: %d PubAcks outstanding after %v", js.PublishAsyncPending(), cfg.StallTimeout)
	case <-ctx.Done():
		return Phase{}, 0, ctx.Err()
	}
	return m.end(time.Now(), cfg.Events, bytes), bytes, nil
}

// workerPhase starts the worker on the backlog and measures it until the
// stand-in has accepted the last call (r.Worker) and the server has every
// ack (r.WorkerSettledSeconds). Profiles and the trace cover this phase
// only.
func (r *Result) workerPhase(ctx context.Context, si *standIn, wr *runningWorker, cfg Config, server int) error {
	backlog := newTracker(backlogPrefix, cfg.Events, false)
	si.track(backlog)
	if cfg.MemProfileBase != nil {
		runtime.GC() // the allocs profile is as of the latest GC
		if err := pprof.Lookup("allocs").WriteTo(cfg.MemProfileBase, 0); err != nil {
			return fmt.Errorf("writing memory profile: %w", err)
		}
	}
	m := begin("cio-relay", server, si)
	if cfg.CPUProfile != nil {
		if err := pprof.StartCPUProfile(cfg.CPUProfile); err != nil {
			return fmt.Errorf("starting CPU profile: %w", err)
		}
	}
	if cfg.Trace != nil {
		if err := trace.Start(cfg.Trace); err != nil {
			return fmt.Errorf("starting trace: %w", err)
		}
	}
	started := si.now()
	wr.start()
	err := await(ctx, backlog, wr, cfg.StallTimeout)
	// The phase ends when the stand-in accepted the last call, not when
	// await noticed.
	delivered := si.start.Add(time.Duration(backlog.complete.Load()))
	var settled time.Time
	if err == nil {
		settled, err = waitSettled(ctx, wr.js, cfg.Stream, wr.consumer, cfg.StallTimeout)
	}
	if cfg.CPUProfile != nil {
		pprof.StopCPUProfile()
	}
	if cfg.Trace != nil {
		trace.Stop()
	}
	if err != nil {
		return fmt.Errorf("%w (%s)", err, backlog.summary())
	}
	r.Worker = m.end(delivered, cfg.Events, r.PublishedBytes)
	r.WorkerSettledSeconds = settled.Sub(m.start).Seconds()
	r.WorkerFirstCallSeconds = float64(backlog.first.Load()-started) / 1e9
	if at, n := backlog.lastFullBatch(); at > started && n > 0 {
		r.WorkerBacklogSeconds = float64(at-started) / 1e9
		r.WorkerBacklogCalls = n
		r.WorkerBacklogRate = float64(n) / r.WorkerBacklogSeconds
	}
	if cfg.MemProfile != nil {
		runtime.GC()
		if err := pprof.Lookup("allocs").WriteTo(cfg.MemProfile, 0); err != nil {
			return fmt.Errorf("writing memory profile: %w", err)
		}
	}
	r.Batches = backlog.stats()
	return nil
}

// openServer starts or finds the NATS server cfg asks for, records what it
// is in r, and returns its URL and what to call at the end.
func (r *Result) openServer(ctx context.Context, cfg *Config, prog func(string, ...any)) (string, func(), error) {
	switch {
	case cfg.NATSURL != "":
		r.NATS = "nats-server at " + cfg.NATSURL + ", not started by the bench"
		if n := cfg.Worker.StreamReplicas; n > 1 {
			r.NATS += fmt.Sprintf(", streams with %d replicas", n)
		}
		r.NATSExternal = true
		r.NATSServerPID = cfg.ServerPID
		if cfg.ServerPID > 0 {
			r.NATS += fmt.Sprintf(" (pid %d)", cfg.ServerPID)
		}
		return cfg.NATSURL, func() {}, nil
	case cfg.InProcess:
		srv, dir, err := startServer(cfg.StoreDir)
		if err != nil {
			return "", nil, err
		}
		r.NATS = "nats-server " + server.VERSION + " in-process, JetStream file storage in " + dir
		return srv.ClientURL(), func() {
			srv.Shutdown()
			srv.WaitForShutdown()
			if cfg.StoreDir == "" {
				os.RemoveAll(dir)
			}
		}, nil
	}
	tmp, err := os.MkdirTemp("", "cio-relay-bench-")
	if err != nil {
		return "", nil, err
	}
	bin, how, err := findServerBinary(ctx, cfg.ServerBinary, tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, err
	}
	dir := cfg.StoreDir
	if dir == "" {
		dir = filepath.Join(tmp, "store")
	}
	proc, err := startServerProcess(ctx, bin, dir)
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, err
	}
	r.NATSExternal = true
	r.NATSServerPID = proc.pid()
	if proc.version != "" {
		r.NATSVersion = strings.TrimPrefix(proc.version, "v")
	}
	r.NATS = fmt.Sprintf("nats-server %s in its own process (pid %d, %s), JetStream file storage in %s",
		proc.version, proc.pid(), how, dir)
	prog("started %s", r.NATS)
	return proc.url, func() {
		proc.stop()
		os.RemoveAll(tmp)
	}, nil
}

func startServer(dir string) (*server.Server, string, error) {
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "cio-relay-bench-"); err != nil {
			return nil, "", err
		}
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "cio-relay-bench",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, "", fmt.Errorf("nats-server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, "", errors.New("nats-server not ready within 30s")
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		return nil, "", errors.New("nats-server started without JetStream")
	}
	return srv, dir, nil
}

// runBare drains the backlog with a plain pull consumer that acks each
// message and does nothing else. pinned gives the consumer the ordered
// path's priority policy (pinned_client) and pulls with its group: what
// JetStream itself charges for one pinned client (a Nats-Pin-Id header on
// every message, decoded by the client), apart from anything the relay does.
func runBare(ctx context.Context, url string, cfg Config, server int, pinned bool) (Phase, error) {
	nc, err := nats.Connect(url, nats.Name("cio-relay bench bare consumer"))
	if err != nil {
		return Phase{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return Phase{}, err
	}
	name, durable := "bare consumer", bareConsumer
	// The worker's consumer, under another name.
	ccfg := jetstream.ConsumerConfig{
		Durable:        durable,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		MaxDeliver:     -1,
		MaxAckPending:  20_000,
		FilterSubjects: worker.FilterSubjects(),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	pull := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(cfg.BarePullMax)}
	if pinned {
		name, durable = "bare pinned", bareConsumer+"-pinned"
		ccfg.Durable = durable
		ccfg.PriorityPolicy, ccfg.PriorityGroups, ccfg.PinnedTTL = jetstream.PriorityPolicyPinned, []string{worker.PriorityGroup}, worker.PinnedTTL
		pull = append(pull, jetstream.PullPriorityGroup(worker.PriorityGroup))
	}
	m := begin(name, server, nil)
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Stream, ccfg)
	if err != nil {
		return Phase{}, err
	}
	iter, err := cons.Messages(pull...)
	if err != nil {
		return Phase{}, err
	}
	var got atomic.Int64
	watch := make(chan struct{})
	defer close(watch)
	go func() { // stop the iterator when nothing arrives for StallTimeout
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last, since := int64(-1), time.Now()
		for {
			select {
			case <-watch:
				return
			case <-ctx.Done():
				iter.Stop()
				return
			case now := <-t.C:
				if n := got.Load(); n != last {
					last, since = n, now
				} else if now.Sub(since) > cfg.StallTimeout {
					iter.Stop()
					return
				}
			}
		}
	}()
	var bytes int64
	for got.Load() < int64(cfg.Events) {
		msg, err := iter.Next()
		if err != nil {
			return Phase{}, fmt.Errorf("after %d of %d messages: %w", got.Load(), cfg.Events, err)
		}
		bytes += int64(len(msg.Data()))
		if err := msg.Ack(); err != nil {
			return Phase{}, err
		}
		got.Add(1)
	}
	iter.Stop()
	settled, err := waitSettled(ctx, js, cfg.Stream, durable, cfg.StallTimeout)
	if err != nil {
		return Phase{}, err
	}
	p := m.end(settled, cfg.Events, bytes)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = js.DeleteConsumer(dctx, cfg.Stream, durable)
	return p, nil
}

// waitSettled polls the consumer until the server holds nothing pending or
// unacked for it, and returns when it saw that. Consumer state has no event
// to wait on; a 5ms poll costs the server little and the measure at most
// 5ms.
func waitSettled(ctx context.Context, js jetstream.JetStream, stream, consumer string, timeout time.Duration) (time.Time, error) {
	cons, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		return time.Time{}, err
	}
	deadline := time.Now().Add(timeout)
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			return time.Time{}, fmt.Errorf("consumer %s info: %w", consumer, err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("consumer %s not settled after %v: %d pending, %d unacked",
				consumer, timeout, info.NumPending, info.NumAckPending)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// runningWorker is the worker under test and its connection.
type runningWorker struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	w        *worker.Worker
	consumer string
	cancel   context.CancelFunc
	ctx      context.Context
	done     chan error
	started  bool
	stopped  bool
	timeout  time.Duration
}

func startWorker(ctx context.Context, url string, si *standIn, cfg Config) (*runningWorker, error) {
	nc, err := nats.Connect(url, nats.Name("cio-relay bench worker"))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	opts := cfg.Worker
	opts.Stream = cfg.Stream
	opts.ManageStreams = true
	if opts.Logger == nil {
		opts.Logger = cfg.Logger
	}
	conc := opts.SendConcurrency
	if conc == 0 {
		conc = 4 // the worker's default
	}
	cdp, err := sink.NewCDP(sink.CDPOptions{
		URL:       si.URL(),
		APIKey:    func() string { return apiKey },
		UserAgent: "cio-relay/bench",
		Client:    sink.NewHTTPClient(conc, 30*time.Second),
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	w, err := worker.New(js, cdp, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	consumer := opts.Consumer
	if consumer == "" {
		consumer = worker.DefaultConsumer
	}
	shutdown := opts.ShutdownTimeout
	if shutdown <= 0 {
		shutdown = worker.DefaultShutdownTimeout
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &runningWorker{nc: nc, js: js, w: w, consumer: consumer, ctx: wctx, cancel: cancel,
		done: make(chan error, 1), timeout: shutdown + 10*time.Second}, nil
}

func (r *runningWorker) start() {
	r.started = true
	go func() { r.done <- r.w.Run(r.ctx) }()
}

// stop stops the worker and waits for Run to return; it is safe to call
// twice.
func (r *runningWorker) stop() error {
	if r.stopped {
		return nil
	}
	r.stopped = true
	defer r.nc.Close()
	r.cancel()
	if !r.started {
		return nil
	}
	select {
	case err := <-r.done:
		if err != nil {
			return fmt.Errorf("worker.Run: %w", err)
		}
		return nil
	case <-time.After(r.timeout):
		return fmt.Errorf("worker did not stop within %v", r.timeout)
	}
}

// await waits until every call of t has arrived, failing when the worker
// stops, ctx is done, or nothing arrives for stall.
func await(ctx context.Context, t *tracker, w *runningWorker, stall time.Duration) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, since := int64(-1), time.Now()
	for {
		select {
		case <-t.done:
			return nil
		case err := <-w.done:
			w.stopped = true
			return fmt.Errorf("worker stopped: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case now := <-tick.C:
			if n := t.delivered.Load(); n != last {
				last, since = n, now
			} else if now.Sub(since) > stall {
				return fmt.Errorf("no call delivered for %v", stall)
			}
		}
	}
}

// runLatency publishes calls of corpus at rate for cfg.LatencyDuration
// while the worker runs and measures each call's publish → accepted time.
func runLatency(ctx context.Context, js jetstream.JetStream, si *standIn, wr *runningWorker, cfg Config, rate int, corpus Corpus, server int) (*Latency, error) {
	n := int(float64(rate) * cfg.LatencyDuration.Seconds())
	if n < 1 {
		return nil, errors.New("latency phase of no event")
	}
	prefix := fmt.Sprintf("%s%s-%d-", latencyPrefix, corpus, rate)
	t := newTracker(prefix, n, true)
	si.track(t)
	gen := newCorpusGenerator(cfg.Seed+uint64(rate), prefix, corpus)
	published := make([]int64, n)
	m := begin(fmt.Sprintf("latency %s %d/s", corpus, rate), server, si)
	var pubBytes int64
	start := time.Now()
	for i := range n {
		subject, body := gen.next(i)
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d) // pacing, not waiting for an event
		}
		published[i] = si.now()
		pubBytes += int64(len(body))
		if _, err := js.PublishAsync(subject, body, jetstream.WithStallWait(cfg.StallTimeout)); err != nil {
			return nil, fmt.Errorf("publishing event %d: %w", i, err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	pubEnd := time.Now()
	if err := await(ctx, t, wr, cfg.StallTimeout); err != nil {
		return nil, fmt.Errorf("%w (%s)", err, t.summary())
	}
	p := m.end(si.start.Add(time.Duration(t.complete.Load())), n, pubBytes)
	lat := make([]int64, n)
	var others []int64 // CorpusHotKey: the calls of every key but the hot one
	for i := range n {
		lat[i] = t.arrived[i].Load() - published[i]
		if corpus == CorpusHotKey && !hotCall(i) {
			others = append(others, lat[i])
		}
	}
	slices.Sort(lat)
	slices.Sort(others)
	q := func(f float64) float64 {
		return float64(lat[min(n-1, int(f*float64(n)))]) / 1e9
	}
	var sum int64
	for _, l := range lat {
		sum += l
	}
	l := &Latency{
		Rate:          rate,
		Corpus:        corpus,
		Events:        n,
		MeanBodyBytes: float64(pubBytes) / float64(n),
		AchievedRate:  float64(n) / pubEnd.Sub(start).Seconds(),
		P50:           q(0.50),
		P90:           q(0.90),
		P99:           q(0.99),
		Max:           float64(lat[n-1]) / 1e9,
		Mean:          float64(sum) / float64(n) / 1e9,
		Phase:         p,
		Batches:       t.stats(),
	}
	if len(others) > 0 {
		l.P99OtherKeys = float64(others[min(len(others)-1, int(0.99*float64(len(others))))]) / 1e9
	}
	if p.Seconds > 0 {
		l.RequestsPerSec = float64(l.Batches.Requests) / p.Seconds
	}
	return l, nil
}

// timeSync flushes dirty pages before a consume phase (see syncDisk) and
// returns how long that took.
func timeSync() float64 {
	start := time.Now()
	syncDisk()
	return time.Since(start).Seconds()
}
