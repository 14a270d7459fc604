package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// Config configures a run. Zero values take the defaults noted.
type Config struct {
	Events int    // backlog size; default 1,000,000
	Seed   uint64 // generator seed; default 1

	// NATSURL names an external server to use; "" starts nats-server
	// in-process with JetStream file storage in StoreDir.
	NATSURL string
	// StoreDir is the in-process server's store; default a temporary
	// directory, removed at the end.
	StoreDir string
	// Stream is the stream published to; default "CIO". It must not exist
	// yet: the run creates it (as the worker would) and deletes it at the
	// end when the server is external.
	Stream string

	PublishInFlight int // async publishes awaiting their PubAck at once; default 4,000 (nats.go's)
	// BarePullMax is the bare consumer's PullMaxMessages; default 1,000,
	// what the worker uses with its default options.
	BarePullMax int
	SkipBare    bool

	LatencyRate     int           // events per second; default 5,000
	LatencyDuration time.Duration // default 10s; negative skips the latency phase

	// Worker overrides the worker's options; zero fields keep the worker's
	// defaults. Stream and ManageStreams are always set by the run.
	Worker worker.Options

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
		c.Events = 1_000_000
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Stream == "" {
		c.Stream = "CIO"
	}
	if c.PublishInFlight == 0 {
		c.PublishInFlight = 4_000
	}
	if c.BarePullMax == 0 {
		c.BarePullMax = 1_000
	}
	if c.LatencyRate == 0 {
		c.LatencyRate = 5_000
	}
	if c.LatencyDuration == 0 {
		c.LatencyDuration = 10 * time.Second
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = 60 * time.Second
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
	if c.LatencyRate < 1 {
		errs = append(errs, fmt.Errorf("latency rate %d must be at least 1", c.LatencyRate))
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
		LatencyRate:     cfg.LatencyRate,
		LatencyDuration: cfg.LatencyDuration.Seconds(),
	}
	if r.FlushInterval == 0 {
		r.FlushInterval = time.Second.Seconds() // the worker's default
	}
	prog := func(format string, args ...any) {
		fmt.Fprintf(cfg.Progress, "bench: "+format+"\n", args...)
	}

	url := cfg.NATSURL
	if url == "" {
		srv, dir, err := startServer(cfg.StoreDir)
		if err != nil {
			return nil, err
		}
		defer func() {
			srv.Shutdown()
			srv.WaitForShutdown()
			if cfg.StoreDir == "" {
				os.RemoveAll(dir)
			}
		}()
		url = srv.ClientURL()
		r.NATS = "nats-server " + server.VERSION + " in-process, JetStream file storage in " + dir
	} else {
		r.NATS = "external nats-server at " + cfg.NATSURL
		r.NATSExternal = true
	}

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
	if _, err := pubJS.Stream(ctx, cfg.Stream); err == nil {
		return nil, fmt.Errorf("stream %s already exists: the bench needs it empty; delete it or choose another with --stream", cfg.Stream)
	}
	if _, err := pubJS.CreateStream(ctx, streamCfg); err != nil {
		return nil, fmt.Errorf("creating stream %s: %w", cfg.Stream, err)
	}
	if cfg.NATSURL != "" {
		// An external server outlives the run: leave it as found. The
		// dead-letter stream is deleted only if the worker created it.
		dlq := cfg.Worker.DLQStream
		if dlq == "" {
			dlq = "CIO_DLQ" // the worker's default
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
	if r.Publish, r.PublishedBytes, err = publishBacklog(ctx, pubJS, cfg); err != nil {
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
		r.Bare, err = runBare(ctx, url, cfg)
		if err != nil {
			return nil, fmt.Errorf("bare consumer: %w", err)
		}
		prog("bare consumer: %.2fs (%.0f events/s)", r.Bare.Seconds, r.Bare.EventsPerSec)
	}

	// 3. cio-relay on the same backlog.
	r.SyncSeconds += timeSync()
	prog("cio-relay: deliver %d events…", cfg.Events)
	wr, err := startWorker(ctx, url, si, cfg)
	if err != nil {
		return nil, err
	}
	defer wr.stop() // after an error; the normal path stops it below
	if err := r.workerPhase(ctx, si, wr, cfg); err != nil {
		return nil, fmt.Errorf("cio-relay: %w", err)
	}
	prog("cio-relay: %.2fs (%.0f events/s), %d requests, mean fill %.1f%%", r.Worker.Seconds, r.Worker.EventsPerSec,
		r.Batches.Requests, 100*r.Batches.MeanFill)

	// 4. Latency at a fixed rate, the worker still running.
	if cfg.LatencyDuration > 0 {
		prog("latency: %d events/s for %v…", cfg.LatencyRate, cfg.LatencyDuration)
		r.Latency, err = runLatency(ctx, pubJS, si, wr, cfg)
		if err != nil {
			return nil, fmt.Errorf("latency: %w", err)
		}
		if n := pubErrs.Load(); n > 0 {
			return nil, fmt.Errorf("latency: %d publishes failed, the first with: %v", n, firstPubErr.Load())
		}
		prog("latency: p50 %.0fms p99 %.0fms max %.0fms", 1e3*r.Latency.P50, 1e3*r.Latency.P99, 1e3*r.Latency.Max)
	}
	if err := wr.stop(); err != nil {
		return nil, err
	}
	if n := si.stray.Load(); n > 0 {
		return nil, fmt.Errorf("the stand-in got %d requests outside any phase", n)
	}
	r.MaxRSSBytes = maxRSS()
	r.evaluate()
	return r, nil
}

// publishBacklog publishes cfg.Events calls with async publish, at most
// cfg.PublishInFlight awaiting their PubAck, and waits for every PubAck.
// Generating the calls is part of the timed phase: a publisher has to
// produce its calls too.
func publishBacklog(ctx context.Context, js jetstream.JetStream, cfg Config) (Phase, int64, error) {
	gen := newGenerator(cfg.Seed, backlogPrefix)
	m := begin("publish")
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
// stand-in has every call (r.Worker) and the server every ack
// (r.WorkerSettledSeconds). Profiles and the trace cover this phase only.
func (r *Result) workerPhase(ctx context.Context, si *standIn, wr *runningWorker, cfg Config) error {
	backlog := newTracker(backlogPrefix, cfg.Events, false)
	si.track(backlog)
	if cfg.MemProfileBase != nil {
		runtime.GC() // the allocs profile is as of the latest GC
		if err := pprof.Lookup("allocs").WriteTo(cfg.MemProfileBase, 0); err != nil {
			return fmt.Errorf("writing memory profile: %w", err)
		}
	}
	m := begin("cio-relay")
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
	delivered := time.Now()
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
// message and does nothing else.
func runBare(ctx context.Context, url string, cfg Config) (Phase, error) {
	nc, err := nats.Connect(url, nats.Name("cio-relay bench bare consumer"))
	if err != nil {
		return Phase{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return Phase{}, err
	}
	m := begin("bare consumer")
	// The worker's consumer, under another name.
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Stream, jetstream.ConsumerConfig{
		Durable:        bareConsumer,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		MaxDeliver:     -1,
		MaxAckPending:  20_000,
		FilterSubjects: worker.FilterSubjects(),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return Phase{}, err
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(cfg.BarePullMax))
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
	settled, err := waitSettled(ctx, js, cfg.Stream, bareConsumer, cfg.StallTimeout)
	if err != nil {
		return Phase{}, err
	}
	p := m.end(settled, cfg.Events, bytes)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = js.DeleteConsumer(dctx, cfg.Stream, bareConsumer)
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
		consumer = "cio-relay"
	}
	shutdown := opts.ShutdownTimeout
	if shutdown <= 0 {
		shutdown = 25 * time.Second
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

// runLatency publishes at cfg.LatencyRate for cfg.LatencyDuration while the
// worker runs and measures each call's publish → stand-in arrival time.
func runLatency(ctx context.Context, js jetstream.JetStream, si *standIn, wr *runningWorker, cfg Config) (*Latency, error) {
	n := int(float64(cfg.LatencyRate) * cfg.LatencyDuration.Seconds())
	if n < 1 {
		return nil, errors.New("latency phase of no event")
	}
	t := newTracker(latencyPrefix, n, true)
	si.track(t)
	gen := newGenerator(cfg.Seed+1, latencyPrefix)
	published := make([]int64, n)
	m := begin("latency")
	var pubBytes int64
	start := time.Now()
	for i := range n {
		subject, body := gen.next(i)
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(cfg.LatencyRate))); d > 0 {
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
	p := m.end(time.Now(), n, pubBytes)
	lat := make([]int64, n)
	for i := range n {
		lat[i] = t.arrived[i].Load() - published[i]
	}
	slices.Sort(lat)
	q := func(f float64) float64 {
		return float64(lat[min(n-1, int(f*float64(n)))]) / 1e9
	}
	var sum int64
	for _, l := range lat {
		sum += l
	}
	return &Latency{
		Events:       n,
		AchievedRate: float64(n) / pubEnd.Sub(start).Seconds(),
		P50:          q(0.50),
		P90:          q(0.90),
		P99:          q(0.99),
		Max:          float64(lat[n-1]) / 1e9,
		Mean:         float64(sum) / float64(n) / 1e9,
		Phase:        p,
		Batches:      t.stats(),
	}, nil
}

// timeSync flushes dirty pages before a consume phase (see syncDisk) and
// returns how long that took.
func timeSync() float64 {
	start := time.Now()
	syncDisk()
	return time.Since(start).Seconds()
}
