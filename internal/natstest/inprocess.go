package natstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
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

// orRandom is port, or server.RANDOM_PORT before the first start picks one.
// The server binds a random port itself: unlike picking one and passing it
// on, nothing can take it in between.
func orRandom(port int) int {
	if port == 0 {
		return server.RANDOM_PORT
	}
	return port
}

func (b *inProcessBackend) start(ctx context.Context) (listen, error) {
	opts := &server.Options{
		Host:      host,
		Port:      orRandom(b.listen.client),
		JetStream: true,
		StoreDir:  b.storeDir,
		// The test binary owns its signals.
		NoSigs: true,
	}
	if n := b.node; n != nil {
		port := b.listen.cluster
		if port == 0 && len(n.routes) == 0 {
			// The first node routes to itself, so it needs its port before
			// it binds it: picked here, with the small risk freePort
			// describes. The others bind a random one.
			var err error
			if port, err = freePort(); err != nil {
				return listen{}, err
			}
		}
		opts.ServerName = n.name
		opts.Cluster = server.ClusterOpts{Name: n.cluster, Host: host, Port: orRandom(port)}
		opts.Routes = server.RoutesFromStr(strings.Join(n.routesFor(port), ","))
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return listen{}, fmt.Errorf("configuring nats-server: %w", err)
	}
	srv.SetLoggerV2(b.logs, false, false, false)
	srv.Start()

	timeout := startTimeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = time.Until(deadline)
	}
	switch {
	case !srv.ReadyForConnections(timeout):
		err = fmt.Errorf("nats-server not ready for connections within %v", timeout)
	case !srv.JetStreamEnabled():
		// JetStream is enabled before the listener opens, so a ready server
		// without it has failed to start JetStream; its log says why.
		err = errors.New("nats-server started without JetStream")
	}
	if err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return listen{}, err
	}
	b.srv = srv
	b.listen.client = srv.Addr().(*net.TCPAddr).Port
	if b.node != nil {
		b.listen.cluster = srv.ClusterAddr().Port
	}
	return b.listen, nil
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
	mu      sync.Mutex
	buf     bytes.Buffer
	dropped int
}

var _ server.Logger = (*logBuffer)(nil)

func (l *logBuffer) printf(level, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() >= maxLogBytes {
		l.dropped++
		return
	}
	l.buf.WriteString(level)
	fmt.Fprintf(&l.buf, format, v...)
	l.buf.WriteByte('\n')
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
func (l *logBuffer) Fatalf(format string, v ...any)  { l.printf("[FTL] ", format, v...) }
func (l *logBuffer) Errorf(format string, v ...any)  { l.printf("[ERR] ", format, v...) }
func (l *logBuffer) Debugf(format string, v ...any)  { l.printf("[DBG] ", format, v...) }
func (l *logBuffer) Tracef(format string, v ...any)  { l.printf("[TRC] ", format, v...) }
