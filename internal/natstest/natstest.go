package natstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Kinds of server, as returned by [Server.Kind].
const (
	KindContainer = "container"
	KindInProcess = "in-process"
)

const (
	envMode      = "CIO_RELAY_NATS"
	envImage     = "CIO_RELAY_NATS_IMAGE"
	defaultImage = "nats:2.15.2"

	// host is the only address the server listens on and tests dial.
	host = "127.0.0.1"

	// startTimeout bounds one start or restart. A JetStream server with a
	// small store is ready in well under a second; the margin is for a
	// loaded 2-core CI machine creating a container.
	startTimeout = 60 * time.Second

	// stopTimeout is how long a server gets to shut down cleanly (flushing
	// its store) before it is killed.
	stopTimeout = 10 * time.Second
)

// Server is a running NATS server with JetStream for one test.
//
// Its methods are meant to be called from the test's goroutine, not
// concurrently.
type Server struct {
	kind    string
	name    string // server name in a cluster; "" for a lone server
	listen  listen
	running bool
	b       backend
}

// listen is where a started server accepts clients and, in a cluster,
// routes from the other nodes.
type listen struct {
	client  int
	cluster int // 0 for a lone server
}

// clusterNode says how a server joins a cluster; a lone server has none.
type clusterNode struct {
	cluster string   // cluster name, the same on every node
	name    string   // server name, unique in the cluster
	routes  []string // nats://127.0.0.1:PORT route URLs of the nodes started before it
}

// routesFor returns the routes of the node when it listens for routes on
// port. The first node has no earlier node to route to, and routes to
// itself: a JetStream cluster needs a configured route, and nats-server
// ignores one to itself.
func (n *clusterNode) routesFor(port int) []string {
	if len(n.routes) > 0 {
		return n.routes
	}
	return []string{"nats://" + net.JoinHostPort(host, strconv.Itoa(port))}
}

// backend is one way of running nats-server.
type backend interface {
	// start starts the server and returns once it accepts connections (a
	// lone server: once JetStream answers too). The first start picks the
	// ports; later ones reuse them and the store.
	start(ctx context.Context) (listen, error)
	// stop shuts the server down cleanly, keeping its store.
	stop(ctx context.Context) error
	// kill ends the server as abruptly as the backend can, keeping what
	// its store holds, and returns once it is down.
	kill(ctx context.Context) error
	// remove releases everything the backend holds; the server must not be
	// started again.
	remove(ctx context.Context) error
	// log returns the server's output, for a failed test.
	log(ctx context.Context) string
}

// Start starts a NATS server with JetStream for t and registers t.Cleanup
// to remove it. The test fails if the server cannot be started.
func Start(t testing.TB) *Server {
	t.Helper()
	kind, reason := choose(t)
	announce(t, kind, reason)
	s := newServer(t, kind, nil)
	s.start(t)
	return s
}

// newServer returns a server of kind, not yet started, that t.Cleanup
// removes. node is nil for a lone server.
func newServer(t testing.TB, kind string, node *clusterNode) *Server {
	t.Helper()
	s := &Server{kind: kind}
	if node != nil {
		s.name = node.name
	}
	switch kind {
	case KindContainer:
		s.b = newContainerBackend(t, imageName(), node)
	default:
		s.b = newInProcessBackend(t.TempDir(), node)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		// The server's log explains most failures, a failed start included,
		// and is noise otherwise.
		if t.Failed() {
			if out := s.b.log(ctx); out != "" {
				t.Logf("NATS: %s server %slog:\n%s", s.kind, s.label(), out)
			}
		}
		if err := s.b.remove(ctx); err != nil {
			t.Errorf("NATS: removing %s server %s: %v", s.kind, s.label(), err)
		}
	})
	return s
}

// label names a cluster node in messages, followed by a space; "" for a
// lone server.
func (s *Server) label() string {
	if s.name == "" {
		return ""
	}
	return s.name + " "
}

// Name returns the server's name in its cluster ("" for a lone server):
// what StreamInfo.Cluster.Leader and the replica lists call it.
func (s *Server) Name() string { return s.name }

// Running reports whether the server is up (started and not stopped).
func (s *Server) Running() bool { return s.running }

// routeURL is where the other nodes of a cluster connect to this one.
func (s *Server) routeURL() string {
	return "nats://" + net.JoinHostPort(host, strconv.Itoa(s.listen.cluster))
}

// URL returns the client URL, nats://127.0.0.1:PORT.
func (s *Server) URL() string {
	return "nats://" + net.JoinHostPort(host, strconv.Itoa(s.listen.client))
}

// Connect returns a client of the server, closed when the test ends. It
// reconnects forever, so it survives Restart.
func (s *Server) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("connecting to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("opening JetStream: %v", err)
	}
	return nc, js
}

// Kind returns how the server runs: [KindContainer] or [KindInProcess].
func (s *Server) Kind() string { return s.kind }

// Restart stops the server if it is running and starts it again on the same
// port with the same JetStream store. It returns once the server accepts
// connections.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.running {
		s.Stop(t)
	}
	s.start(t)
}

// Stop shuts the server down cleanly, keeping its JetStream store, and
// leaves it down until [Server.Restart].
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if !s.running {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+5*time.Second)
	defer cancel()
	if err := s.b.stop(ctx); err != nil {
		t.Fatalf("NATS: stopping %s server %sat %s: %v", s.kind, s.label(), s.URL(), err)
	}
	s.running = false
}

// Kill ends the server abruptly, as a node that crashes or loses its
// power: in a container with SIGKILL, so it neither steps down the leaders
// it holds nor says goodbye to its clients and routes, and the cluster
// finds out by timeouts. The in-process server cannot die that way: there
// Kill is Stop, whose leaders step down first, as in a drain. Like Stop,
// it keeps the store and leaves the server down until [Server.Restart].
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if !s.running {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+5*time.Second)
	defer cancel()
	if err := s.b.kill(ctx); err != nil {
		t.Fatalf("NATS: killing %s server %sat %s: %v", s.kind, s.label(), s.URL(), err)
	}
	s.running = false
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	began := time.Now()
	l, err := s.b.start(ctx)
	if err != nil {
		t.Fatalf("NATS: starting %s server %s: %v", s.kind, s.label(), err)
	}
	s.listen = l
	s.running = true
	t.Logf("NATS: %s server %sready at %s in %v", s.kind, s.label(), s.URL(), time.Since(began).Round(time.Millisecond))
}

// choose picks the backend from CIO_RELAY_NATS and says why.
func choose(t testing.TB) (kind, reason string) {
	t.Helper()
	switch mode := os.Getenv(envMode); mode {
	case "container":
		engine, err := probeDocker()
		if err != nil {
			t.Fatalf("NATS: %s=container but no Docker engine is reachable (it never falls back to in-process): %v", envMode, err)
		}
		return KindContainer, fmt.Sprintf("%s=container; %s", envMode, engine)
	case "inprocess":
		return KindInProcess, envMode + "=inprocess"
	case "", "auto":
		engine, err := probeDocker()
		if err != nil {
			return KindInProcess, fmt.Sprintf("auto: no Docker engine reachable: %v", err)
		}
		image := imageName()
		if err := imagePresent(image); err != nil {
			return KindInProcess, fmt.Sprintf("auto: %s, but image %s is not present locally and auto mode does not pull (build it with .ci/run, or set %s=container to pull): %v",
				engine, image, envMode, err)
		}
		return KindContainer, fmt.Sprintf("auto: %s, image %s present", engine, image)
	default:
		t.Fatalf("NATS: %s=%q is not one of container, inprocess, auto", envMode, mode)
		return "", ""
	}
}

func imageName() string {
	if image := os.Getenv(envImage); image != "" {
		return image
	}
	return defaultImage
}

// announced holds the choices already printed on stderr, so a test binary
// says once, not once per test, which server it runs against.
var announced sync.Map

func announce(t testing.TB, kind, reason string) {
	t.Helper()
	line := fmt.Sprintf("NATS: %s nats-server (%s)", kind, reason)
	t.Log(line)
	if _, loaded := announced.LoadOrStore(line, true); !loaded {
		fmt.Fprintln(os.Stderr, "natstest: "+line)
	}
}

// pollInterval is how often readiness is checked while a server starts.
const pollInterval = 50 * time.Millisecond

// waitReady returns once probe succeeds, or when ctx is done. alive
// reports a server that has died, so a crash fails at once instead of at
// the deadline.
func waitReady(ctx context.Context, what string, probe, alive func(context.Context) error) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := probe(ctx)
		if err == nil {
			return nil
		}
		if aliveErr := alive(ctx); aliveErr != nil {
			return aliveErr
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// pingClient checks that a client can connect to url. A cluster node is
// ready in this sense before JetStream answers, which takes a meta leader,
// and so the other nodes.
func pingClient(_ context.Context, url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect(), nats.Name("natstest readiness"))
	if err != nil {
		return err
	}
	nc.Close()
	return nil
}

func pingJetStream(ctx context.Context, url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect(), nats.Name("natstest readiness"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

func (l listen) String() string {
	if l.cluster == 0 {
		return strconv.Itoa(l.client)
	}
	return fmt.Sprintf("%d (routes %d)", l.client, l.cluster)
}
