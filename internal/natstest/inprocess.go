package natstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// inProcessBackend runs nats-server inside the test binary.
type inProcessBackend struct {
	storeDir string
	node     *clusterNode // nil for a lone server
	listen   listen       // zero until the first start picks the ports
	srv      *server.Server
	logs     *logBuffer
}

func newInProcessBackend(storeDir string, node *clusterNode) *inProcessBackend {
	return &inProcessBackend{storeDir: storeDir, node: node, logs: &logBuffer{}}
}

// errBind is a start that failed because a port was taken: the server
// logs it as fatal and keeps running without that listener.
var errBind = errors.New("nats-server could not bind its ports")

// start starts the server. The first start picks the ports, below the
// ephemeral range (see freePort), and tries new ones when another process
// took one in between; later starts reuse them, as a cluster's routes and
// its clients' URLs need.
func (b *inProcessBackend) start(ctx context.Context) (listen, error) {
	if b.listen.client != 0 {
		return b.startOn(ctx, b.listen)
	}
	var errs []error
	for range startAttempts {
		l, err := freePorts(b.node)
		if err != nil {
			return listen{}, err
		}
		l, err = b.startOn(ctx, l)
		if err == nil {
			return l, nil
		}
		errs = append(errs, fmt.Errorf("ports %s: %w", l, err))
		if !errors.Is(err, errBind) {
			break
		}
	}
	return listen{}, errors.Join(errs...)
}

// startOn starts the server on the ports of l.
func (b *inProcessBackend) startOn(ctx context.Context, l listen) (listen, error) {
	opts := &server.Options{
		Host:      host,
		Port:      l.client,
		JetStream: true,
		StoreDir:  b.storeDir,
		// The test binary owns its signals.
		NoSigs: true,
	}
	if n := b.node; n != nil {
		opts.ServerName = n.name
		opts.Cluster = server.ClusterOpts{Name: n.cluster, Host: host, Port: l.cluster}
		opts.Routes = server.RoutesFromStr(strings.Join(n.routesFor(l.cluster), ","))
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return l, fmt.Errorf("configuring nats-server: %w", err)
	}
	fatals := b.logs.fatals()
	srv.SetLoggerV2(b.logs, false, false, false)
	srv.Start()

	timeout := startTimeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = time.Until(deadline)
	}
	err = b.awaitReady(srv, timeout, fatals)
	if err == nil && !srv.JetStreamEnabled() {
		// JetStream is enabled before the listener opens, so a ready server
		// without it has failed to start JetStream; its log says why.
		err = errors.New("nats-server started without JetStream")
	}
	if err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return l, err
	}
	b.srv, b.listen = srv, l
	return l, nil
}

// awaitReady returns once srv accepts clients and, on a cluster node,
// routes; or errBind as soon as the server logs a fatal error (a listener
// it could not open) after the fatals it had logged before this start.
func (b *inProcessBackend) awaitReady(srv *server.Server, timeout time.Duration, fatals int) error {
	deadline := time.Now().Add(timeout)
	for {
		if b.logs.fatals() > fatals {
			return fmt.Errorf("%w: %s", errBind, b.logs.lastFatal())
		}
		ready := srv.ReadyForConnections(pollInterval)
		if ready && (b.node == nil || srv.ClusterAddr() != nil) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nats-server not ready for connections within %v", timeout)
		}
	}
}

func (b *inProcessBackend) stop(context.Context) error {
	if b.srv == nil {
		return nil
	}
	b.srv.Shutdown()
	b.srv.WaitForShutdown()
	b.srv = nil
	return nil
}

// kill is stop: an embedded server has no abrupt way out (see Server.Kill).
func (b *inProcessBackend) kill(ctx context.Context) error {
	return b.stop(ctx)
}

func (b *inProcessBackend) remove(ctx context.Context) error {
	return b.stop(ctx)
}

func (b *inProcessBackend) log(context.Context) string {
	return b.logs.String()
}

// maxLogBytes caps the log kept for a failed test: enough for a start, a
// few restarts and their warnings, without a chatty server filling memory.
const maxLogBytes = 1 << 20

// logBuffer is a server.Logger that keeps the log in memory, so that it is
// shown only when a test fails.
type logBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	dropped   int
	nFatal    int
	fatalLine string
}

var _ server.Logger = (*logBuffer)(nil)

func (l *logBuffer) printf(level, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if level == fatalLevel {
		l.nFatal++
		l.fatalLine = fmt.Sprintf(format, v...)
	}
	if l.buf.Len() >= maxLogBytes {
		l.dropped++
		return
	}
	l.buf.WriteString(level)
	fmt.Fprintf(&l.buf, format, v...)
	l.buf.WriteByte('\n')
}

// fatalLevel prefixes the fatal lines, which are counted: an embedded
// server that cannot bind a port logs it as fatal and runs on.
const fatalLevel = "[FTL] "

// fatals returns how many fatal lines were logged.
func (l *logBuffer) fatals() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nFatal
}

// lastFatal returns the last fatal line logged.
func (l *logBuffer) lastFatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatalLine
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped > 0 {
		return fmt.Sprintf("%s[%d more lines dropped]\n", l.buf.String(), l.dropped)
	}
	return l.buf.String()
}

func (l *logBuffer) Noticef(format string, v ...any) { l.printf("[INF] ", format, v...) }
func (l *logBuffer) Warnf(format string, v ...any)   { l.printf("[WRN] ", format, v...) }
func (l *logBuffer) Fatalf(format string, v ...any)  { l.printf(fatalLevel, format, v...) }
func (l *logBuffer) Errorf(format string, v ...any)  { l.printf("[ERR] ", format, v...) }
func (l *logBuffer) Debugf(format string, v ...any)  { l.printf("[DBG] ", format, v...) }
func (l *logBuffer) Tracef(format string, v ...any)  { l.printf("[TRC] ", format, v...) }
