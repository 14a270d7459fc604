package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/config"
	"github.com/cio-relay/cio-relay/internal/dlqcli"
	"github.com/cio-relay/cio-relay/sink"
)

// runDLQ is the dlq subcommand: inspect, replay, purge and resolve the
// dead-letter stream.
func runDLQ(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd, connArgs, err := dlqcli.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, dlqcli.Usage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay dlq: %v\nRun \"cio-relay dlq -h\" for usage.\n", err)
		return 2
	}
	cfg, ok := loadCLIConfig("dlq", connArgs, getenv, stderr)
	if !ok {
		return 2
	}
	log := newLogger(cfg.Ops, stderr)
	var triggers dlqcli.TriggerLister
	if cmd.Name == dlqcli.CmdResolve {
		// Checked before connecting: without the key there is nothing
		// to resolve with.
		if !cfg.CIO.AppAPIKey.IsSet() {
			fmt.Fprintln(stderr, "cio-relay dlq resolve: CIO_APP_API_KEY is not set (nor CIO_APP_API_KEY_FILE): resolve reads the broadcasts' triggers from Customer.io's App API with the workspace's App API key (and CIO_REGION, CIO_APP_URL), as \"cio-relay cio\" does")
			return 2
		}
		r, err := newAppReader(cfg, log, cioClock{})
		if err != nil {
			fmt.Fprintf(stderr, "cio-relay dlq resolve: %v\n", err)
			return 1
		}
		triggers = explainedTriggers{r: r, cio: cfg.CIO}
	}
	js, disconnect, err := connectCLI(cfg, log, "dlq")
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay dlq: %v\n", err)
		return 1
	}
	defer disconnect()
	env := dlqcli.Env{
		JS: js, DLQStream: cfg.Queue.DLQStream, Stream: cfg.Queue.Stream,
		Stdin: stdin, Stdout: stdout, Stderr: stderr,
		Triggers: triggers,
	}
	env.Interactive = isTerminal(stdin)
	if isTerminal(stderr) {
		env.Progress = stderr
	}
	return cmd.Run(ctx, env)
}

// explainedTriggers reads triggers for dlq resolve, its errors saying what
// to do about a refused key, as cio-relay cio's do.
type explainedTriggers struct {
	r   *sink.AppReader
	cio config.CIO
}

func (e explainedTriggers) Triggers(ctx context.Context, broadcastID int64) (sink.Items[sink.Trigger], error) {
	it, err := e.r.Triggers(ctx, broadcastID)
	if err != nil {
		return it, &explainedError{msg: explainAppError(err, e.cio), err: err}
	}
	return it, nil
}

// explainedError is an App API error with what an operator can do about it.
type explainedError struct {
	msg string
	err error
}

func (e *explainedError) Error() string { return e.msg }
func (e *explainedError) Unwrap() error { return e.err }

// loadCLIConfig reads the settings of a tool subcommand (dlq, publish):
// the worker's, so the tool reaches the same NATS and streams.
func loadCLIConfig(name string, args []string, getenv func(string) string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(args, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay %s: invalid configuration (flags other than the command's are the worker's settings; \"cio-relay run -h\" lists them):\n%v\n", name, err)
		return nil, false
	}
	return cfg, true
}

// connectCLI connects a tool subcommand to JetStream the way the worker
// connects, and returns a function that disconnects it. With NATS_URL unset
// it connects to the worker's embedded server; when nothing answers there
// (the worker is stopped) it opens the worker's data directory with an
// in-process server of its own, so the tool still sees the worker's
// streams.
func connectCLI(cfg *config.Config, log *slog.Logger, name string) (jetstream.JetStream, func(), error) {
	// Appended last, this name wins over the worker's.
	opts := append(natsOptions(cfg, log), nats.Name("cio-relay "+name+" "+version()))
	connect := func(url string, shutdown func()) (jetstream.JetStream, func(), error) {
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			return nil, nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("opening JetStream: %w", err)
		}
		return js, func() { nc.Close(); shutdown() }, nil
	}
	if !cfg.NATS.Embedded() {
		js, disconnect, err := connect(cfg.NATS.URL, func() {})
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to NATS (NATS_URL): %w", err)
		}
		return js, disconnect, nil
	}

	addr := dialAddr(cfg.Embedded.Listen)
	js, disconnect, err := connect("nats://"+addr, func() {})
	if err == nil {
		log.Debug("connected to the worker's embedded NATS server", "addr", addr)
		return js, disconnect, nil
	}
	if !errors.Is(err, nats.ErrNoServers) {
		return nil, nil, fmt.Errorf("connecting to the embedded NATS server at %s (RELAY_EMBEDDED_LISTEN): %w", addr, err)
	}
	srv, err := openDataDir(cfg.Embedded, addr, log)
	if err != nil {
		return nil, nil, err
	}
	shutdown := func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
	js, disconnect, err = connect(srv.ClientURL(), shutdown)
	if err != nil {
		shutdown()
		return nil, nil, fmt.Errorf("connecting to the in-process NATS server on %s: %w", cfg.Embedded.DataDir, err)
	}
	return js, disconnect, nil
}

// dialAddr is the address to dial for a listen address: a wildcard host
// (":4222", "0.0.0.0:4222") is reached on loopback.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen // config checked it; let the dial report it
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// openDataDir starts an in-process JetStream server on the worker's data
// directory, listening on a random loopback port: the worker's address
// stays free, and nothing but this process can reach it. The worker must
// not start on the same directory meanwhile, as two servers would share
// one store.
func openDataDir(cfg config.Embedded, addr string, log *slog.Logger) (*server.Server, error) {
	if fi, err := os.Stat(cfg.DataDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("no NATS server answers at %s (RELAY_EMBEDDED_LISTEN), and RELAY_DATA_DIR %s is not a directory to open instead: start the worker, or set NATS_URL or RELAY_DATA_DIR", addr, cfg.DataDir)
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "cio-relay-embedded", // as the worker's, whose store this is
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("in-process NATS server on %s: %w", cfg.DataDir, err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("in-process NATS server on %s did not start within 10s", cfg.DataDir)
	}
	log.Info("no NATS server answers at "+addr+", so the worker is not running: opened its data directory with an in-process server; do not start the worker until this command ends",
		"data_dir", cfg.DataDir)
	return srv, nil
}
