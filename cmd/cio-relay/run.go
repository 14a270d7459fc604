package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cio-relay/cio-relay/config"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// runWorker is the run subcommand.
func runWorker(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, config.Usage())
		return 0
	}
	if err == nil {
		err = cfg.CheckRun()
	}
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay: invalid configuration:\n%v\n", err)
		return 2
	}
	log := newLogger(cfg.Ops, stderr)
	log.Info("starting cio-relay", "version", version())
	log.Debug("configuration\n" + cfg.Redacted())
	if err := serve(ctx, cfg, log, stdout); err != nil {
		log.Error("cio-relay stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the worker with everything it needs until ctx is done.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger, stdout io.Writer) error {
	url, opts := cfg.NATS.URL, natsOptions(cfg, log)
	if cfg.NATS.Embedded() {
		srv, err := startEmbedded(cfg.Embedded, log)
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
	}
	// A pod that starts before NATS waits for it instead of crash-looping.
	opts = append(opts, nats.RetryOnFailedConnect(true))
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("connecting to NATS: %w", err)
	}
	defer nc.Close()
	if err := waitConnected(ctx, nc, log); err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("opening JetStream: %w", err)
	}

	sender, closeSender, err := newSender(cfg, log, stdout)
	if err != nil {
		return err
	}
	defer closeSender()

	app, track, delivery, err := newDirect(cfg, log)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	wopts := cfg.Worker()
	wopts.App, wopts.Track, wopts.Delivery = app, track, delivery
	wopts.Version, wopts.Logger, wopts.Registerer = version(), log, reg
	w, err := worker.New(js, sender, wopts)
	if err != nil {
		return err
	}
	if cfg.Ops.HTTPAddr != "" {
		stopHTTP, err := serveHTTP(cfg.Ops.HTTPAddr, reg, func() (bool, string) {
			if !nc.IsConnected() {
				return false, "not connected to NATS"
			}
			return w.Ready()
		}, log)
		if err != nil {
			return err
		}
		defer stopHTTP()
	}
	return w.Run(ctx)
}

// secretFunc returns the current value of s. A secret read from a file is
// read again on each call (a few microseconds, a few hundred times a second
// at most), so a key rotated in a mounted Kubernetes secret is used without a
// restart. If the file cannot be read the last good value is kept.
func secretFunc(s config.Secret, log *slog.Logger) func() string {
	var mu sync.Mutex
	current := s
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		next, err := current.Reload()
		if err != nil {
			log.Warn("re-reading secret failed; keeping the previous value", "source", current.Source(), "err", err)
			return current.Reveal()
		}
		current = next
		return current.Reveal()
	}
}

// waitConnected returns once nc is connected, logging every 10s meanwhile,
// or when ctx is done.
func waitConnected(ctx context.Context, nc *nats.Conn, log *slog.Logger) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	lastLog := start
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for NATS: %w", context.Cause(ctx))
		case now := <-tick.C:
			if now.Sub(lastLog) >= 10*time.Second {
				lastLog = now
				log.Warn("waiting for NATS", "servers", nc.Servers(), "waited", now.Sub(start).Round(time.Second).String(), "err", nc.LastError())
			}
		}
	}
	return nil
}

// newSender returns the CDP client, or the dry-run sink when no API key is
// configured.
func newSender(cfg *config.Config, log *slog.Logger, stdout io.Writer) (worker.Sender, func(), error) {
	if cfg.DryRun() {
		out, closeOut := stdout, func() {}
		dest := "stdout"
		if f := cfg.Send.DryRunFile; f != "" && f != "-" {
			file, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return nil, nil, fmt.Errorf("RELAY_DRY_RUN_FILE: %w", err)
			}
			out, closeOut, dest = file, func() { _ = file.Close() }, f
		}
		log.Warn("DRY RUN: nothing is sent to Customer.io (RELAY_DRY_RUN=true, or no CIO_CDP_API_KEY with the embedded server); "+
			"each batch that would have been sent is written as one NDJSON line, and its events are acked", "to", dest)
		return sink.NewDryRun(out), closeOut, nil
	}
	key := cfg.CIO.CDPAPIKey
	cdp, err := sink.NewCDP(sink.CDPOptions{
		URL:        cfg.CIO.CDPURL,
		APIKey:     secretFunc(key, log),
		UserAgent:  "cio-relay/" + version(),
		Client:     sink.NewHTTPClient(cfg.Send.Concurrency, cfg.Send.HTTPTimeout),
		Permissive: !cfg.CIO.CDPStrict,
	})
	if err != nil {
		return nil, nil, err
	}
	if !cfg.CIO.CDPStrict {
		log.Warn("CDP strict mode OFF (RELAY_CDP_STRICT=false): Customer.io answers 200 to a call that fails its own " +
			"validation and drops it, so such calls are acked and lost: no dead letter, no error here, only an entry " +
			"in the Customer.io workspace's logs")
	}
	log.Info("delivering to Customer.io", "cdp_url", cfg.CIO.CDPURL, "api_key", key.Source(), "strict", cfg.CIO.CDPStrict)
	return cdp, func() {}, nil
}

// newDirect returns the App and Track API clients for the direct calls; the
// App and suppression clients are nil when their credentials are unset,
// which leaves their subjects unconsumed. Unsubscribes and delivery metrics
// need no credentials: they are sent by every worker that delivers for real
// or has Track credentials, and left in the stream by a dry run without
// them, which promises to send nothing.
func newDirect(cfg *config.Config, log *slog.Logger) (worker.Triggerer, worker.Suppressor, worker.DeliveryReporter, error) {
	var (
		app      worker.Triggerer
		track    worker.Suppressor
		delivery worker.DeliveryReporter
	)
	client := sink.NewHTTPClient(cfg.Send.Concurrency, cfg.Send.HTTPTimeout)
	ua := "cio-relay/" + version()
	if key := cfg.CIO.AppAPIKey; key.IsSet() {
		a, err := sink.NewApp(sink.AppOptions{URL: cfg.CIO.AppURL, APIKey: secretFunc(key, log), UserAgent: ua, Client: client})
		if err != nil {
			return nil, nil, nil, err
		}
		app = a
		log.Info("broadcast triggers enabled", "app_url", cfg.CIO.AppURL, "api_key", key.Source())
	}
	if key := cfg.CIO.TrackAPIKey; key.IsSet() {
		t, err := sink.NewTrack(sink.TrackOptions{URL: cfg.CIO.TrackURL, SiteID: cfg.CIO.SiteID, APIKey: secretFunc(key, log), UserAgent: ua, Client: client})
		if err != nil {
			return nil, nil, nil, err
		}
		track, delivery = t, t
		log.Info("suppressions enabled", "track_url", cfg.CIO.TrackURL, "api_key", key.Source())
	} else if !cfg.DryRun() {
		t, err := sink.NewTrack(sink.TrackOptions{URL: cfg.CIO.TrackURL, UserAgent: ua, Client: client})
		if err != nil {
			return nil, nil, nil, err
		}
		delivery = t
	}
	if delivery != nil {
		log.Info("unsubscribes and delivery metrics enabled", "track_url", cfg.CIO.TrackURL)
	}
	return app, track, delivery, nil
}

// natsOptions turns the NATS settings into connection options. The client
// reconnects forever: a worker that gives up on NATS does nothing useful.
func natsOptions(cfg *config.Config, log *slog.Logger) []nats.Option {
	n := cfg.NATS
	opts := []nats.Option{
		nats.Name("cio-relay " + version()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: a deliberate close
				log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS error", "err", err)
		}),
	}
	switch {
	case n.Creds != "":
		opts = append(opts, nats.UserCredentials(n.Creds))
	case n.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(n.NKey)
		if err != nil {
			// The file was checked at load; report at connect time.
			opts = append(opts, func(*nats.Options) error { return fmt.Errorf("NATS_NKEY: %w", err) })
		} else {
			opts = append(opts, opt)
		}
	case n.User != "":
		opts = append(opts, nats.UserInfo(n.User, n.Password.Reveal()))
	case n.Token.IsSet():
		opts = append(opts, nats.Token(n.Token.Reveal()))
	}
	if n.CA != "" {
		opts = append(opts, nats.RootCAs(n.CA))
	}
	if n.Cert != "" {
		opts = append(opts, nats.ClientCert(n.Cert, n.Key))
	}
	return opts
}

// serveHTTP serves /metrics, /healthz (the process answers) and /readyz
// (ready reports true: NATS connected, consumer bound, not paused). It
// returns a function that stops the listener.
func serveHTTP(addr string, reg *prometheus.Registry, ready func() (bool, string), log *slog.Logger) (func(), error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("RELAY_HTTP_ADDR: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server", "err", err)
		}
	}()
	log.Info("serving metrics and health", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
