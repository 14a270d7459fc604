package natstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// clusterName is the name every test cluster's nodes share. Clusters of
// different tests never meet: each node routes only to its own cluster's
// ports.
const clusterName = "natstest"

// leaderTimeout bounds the wait for a leader: a meta leader after start, a
// stream or consumer leader after a step-down or a lost node. Elections take
// a few seconds at most; the margin is for a loaded CI machine.
const leaderTimeout = 30 * time.Second

// Cluster is a JetStream cluster of nodes for one test, each a [Server] on
// 127.0.0.1 with its own ports and store. Its methods are meant to be called
// from the test's goroutine, not concurrently.
type Cluster struct {
	nodes []*Server
}

// StartCluster starts a cluster of n nodes (3 is the usual minimum for R3
// streams) on the backend CIO_RELAY_NATS chooses, as [Start] does, and
// registers t.Cleanup to remove it. It returns once JetStream answers, that
// is once a meta leader is elected.
//
// Node i routes to the nodes started before it, and the others find it
// from them, so a port can be picked when its node starts (the first node
// routes to itself, as JetStream needs a configured route, and so picks
// its route port just before). A restarted node keeps its ports, routes
// and store.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("NATS: a cluster needs at least one node, got %d", n)
	}
	kind, reason := choose(t)
	announce(t, kind, fmt.Sprintf("%s; cluster of %d", reason, n))
	began := time.Now()
	c := &Cluster{}
	for i := range n {
		node := &clusterNode{cluster: clusterName, name: fmt.Sprintf("n%d", i)}
		for _, prev := range c.nodes {
			node.routes = append(node.routes, prev.routeURL())
		}
		s := newServer(t, kind, node)
		s.start(t)
		c.nodes = append(c.nodes, s)
	}
	c.WaitJetStream(t)
	c.waitPeers(t)
	t.Logf("NATS: %s cluster of %d ready at %s in %v", kind, n, c.URL(), time.Since(began).Round(time.Millisecond))
	return c
}

// Len returns the number of nodes.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i, 0 ≤ i < Len(). Its Stop and Restart take that node
// down and bring it back with its store.
func (c *Cluster) Node(i int) *Server { return c.nodes[i] }

// Kind returns how the nodes run: [KindContainer] or [KindInProcess].
func (c *Cluster) Kind() string { return c.nodes[0].kind }

// URLs returns every node's client URL, in node order.
func (c *Cluster) URLs() []string {
	urls := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		urls[i] = s.URL()
	}
	return urls
}

// URL returns the client URLs joined by commas, the form nats.Connect and
// NATS_URL take for a client that fails over between the nodes.
func (c *Cluster) URL() string { return strings.Join(c.URLs(), ",") }

// reconnectWait is how long a cluster client waits before trying a server
// again. nats.go's 2s default would make every node loss in a test cost
// seconds; another node is tried at once either way.
const reconnectWait = 100 * time.Millisecond

// Connect returns a client of the cluster, closed when the test ends. It
// knows every node and reconnects forever, so it fails over when its node
// stops.
func (c *Cluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return c.connect(t, c.URL())
}

// ConnectTo is Connect with the client on node i: it connects there first
// and tries the others, in order, only when that node is down. A test that
// stops node i then knows the client loses its server, not only a peer.
func (c *Cluster) ConnectTo(t testing.TB, i int) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	urls := []string{c.nodes[i].URL()}
	for j, s := range c.nodes {
		if j != i {
			urls = append(urls, s.URL())
		}
	}
	nc, js := c.connect(t, strings.Join(urls, ","), nats.DontRandomize())
	if got := nc.ConnectedServerName(); got != c.nodes[i].name {
		t.Fatalf("NATS: connected to %s, want node %s", got, c.nodes[i].name)
	}
	return nc, js
}

func (c *Cluster) connect(t testing.TB, urls string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(reconnectWait))
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		t.Fatalf("connecting to NATS cluster %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("opening JetStream: %v", err)
	}
	return nc, js
}

// WaitJetStream returns once JetStream answers through the running nodes,
// which takes an elected meta leader, and so a majority of the nodes up.
func (c *Cluster) WaitJetStream(t testing.TB) {
	t.Helper()
	var urls []string
	for _, s := range c.nodes {
		if s.running {
			urls = append(urls, s.URL())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaderTimeout)
	defer cancel()
	err := waitReady(ctx, "a JetStream meta leader", func(ctx context.Context) error {
		var errs []error
		for _, u := range urls {
			err := pingJetStream(ctx, u)
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", u, err))
		}
		return errors.Join(errs...)
	}, func(context.Context) error { return nil })
	if err != nil {
		t.Fatalf("NATS: cluster: %v", err)
	}
}

// waitPeers returns once a stream with a replica on every node can be
// placed. A meta leader is elected as soon as a majority has met, before
// the last node has joined the meta group; a stream created then with one
// replica per node fails with "no suitable peers for placement".
func (c *Cluster) waitPeers(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), leaderTimeout)
	defer cancel()
	nc, js := c.connect(t, c.URL())
	defer nc.Close()
	const probe = "NATSTEST_PLACEMENT"
	err := waitReady(ctx, fmt.Sprintf("placement on all %d nodes", len(c.nodes)), func(ctx context.Context) error {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := js.CreateStream(actx, jetstream.StreamConfig{Name: probe, Subjects: []string{"natstest.placement"},
			Storage: jetstream.MemoryStorage, Replicas: len(c.nodes)}); err != nil {
			return err
		}
		return js.DeleteStream(actx, probe)
	}, func(context.Context) error { return nil })
	if err != nil {
		t.Fatalf("NATS: cluster: %v", err)
	}
}

// StreamLeader returns the index of the node that leads stream, waiting
// for one to be elected if need be (after a step-down or a lost leader).
// Only a running node counts: a stopped one may still be named until the
// others notice.
func (c *Cluster) StreamLeader(t testing.TB, js jetstream.JetStream, stream string) int {
	t.Helper()
	return c.leader(t, "stream "+stream, -1, streamCluster(js, stream))
}

// ConsumerLeader returns the index of the node that leads the consumer, as
// StreamLeader does for a stream.
func (c *Cluster) ConsumerLeader(t testing.TB, js jetstream.JetStream, stream, consumer string) int {
	t.Helper()
	return c.leader(t, "consumer "+stream+" > "+consumer, -1, consumerCluster(js, stream, consumer))
}

// StepDownStream asks stream's leader to step down and returns the node
// elected in its place.
func (c *Cluster) StepDownStream(t testing.TB, js jetstream.JetStream, stream string) int {
	t.Helper()
	old := c.StreamLeader(t, js, stream)
	c.stepDown(t, js, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, "stream "+stream, "")
	return c.leader(t, "stream "+stream, old, streamCluster(js, stream))
}

// MoveStreamLeader makes node to the leader of stream, by a step-down that
// names it as the preferred successor, so that a test can put the roles it
// means to lose on one node.
func (c *Cluster) MoveStreamLeader(t testing.TB, js jetstream.JetStream, stream string, to int) {
	t.Helper()
	if c.StreamLeader(t, js, stream) == to {
		return
	}
	c.stepDown(t, js, "$JS.API.STREAM.LEADER.STEPDOWN."+stream, "stream "+stream, c.nodes[to].name)
	c.waitLeader(t, "stream "+stream, to, streamCluster(js, stream))
}

// MoveConsumerLeader makes node to the leader of the consumer, as
// MoveStreamLeader does for a stream.
func (c *Cluster) MoveConsumerLeader(t testing.TB, js jetstream.JetStream, stream, consumer string, to int) {
	t.Helper()
	if c.ConsumerLeader(t, js, stream, consumer) == to {
		return
	}
	what := "consumer " + stream + " > " + consumer
	c.stepDown(t, js, "$JS.API.CONSUMER.LEADER.STEPDOWN."+stream+"."+consumer, what, c.nodes[to].name)
	c.waitLeader(t, what, to, consumerCluster(js, stream, consumer))
}

// waitLeader waits until info names node to as the leader.
func (c *Cluster) waitLeader(t testing.TB, what string, to int, info func(context.Context) (*jetstream.ClusterInfo, error)) {
	t.Helper()
	deadline := time.Now().Add(leaderTimeout)
	for {
		got := c.leader(t, what, -1, info)
		if got == to {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("NATS: the leader of %s is node %d, not node %d, %v after the step-down", what, got, to, leaderTimeout)
		}
		time.Sleep(pollInterval) // the server's view; no event to await
	}
}

func streamCluster(js jetstream.JetStream, stream string) func(context.Context) (*jetstream.ClusterInfo, error) {
	return func(ctx context.Context) (*jetstream.ClusterInfo, error) {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return nil, err
		}
		return s.CachedInfo().Cluster, nil
	}
}

func consumerCluster(js jetstream.JetStream, stream, consumer string) func(context.Context) (*jetstream.ClusterInfo, error) {
	return func(ctx context.Context) (*jetstream.ClusterInfo, error) {
		cons, err := js.Consumer(ctx, stream, consumer)
		if err != nil {
			return nil, err
		}
		return cons.CachedInfo().Cluster, nil
	}
}

// StepDownConsumer asks the consumer's leader to step down and returns the
// node elected in its place.
func (c *Cluster) StepDownConsumer(t testing.TB, js jetstream.JetStream, stream, consumer string) int {
	t.Helper()
	old := c.ConsumerLeader(t, js, stream, consumer)
	what := "consumer " + stream + " > " + consumer
	c.stepDown(t, js, "$JS.API.CONSUMER.LEADER.STEPDOWN."+stream+"."+consumer, what, "")
	return c.leader(t, what, old, consumerCluster(js, stream, consumer))
}

// apiResponse is the part of a JetStream API answer a step-down needs.
type apiResponse struct {
	Success bool `json:"success"`
	Error   *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// stepDownRequest is the body of a step-down that names the successor.
type stepDownRequest struct {
	Placement struct {
		Preferred string `json:"preferred"`
	} `json:"placement"`
}

// stepDown sends a leader step-down request and checks the answer.
// preferred, if not "", names the node to take over.
func (c *Cluster) stepDown(t testing.TB, js jetstream.JetStream, subject, what, preferred string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), leaderTimeout)
	defer cancel()
	var body []byte
	if preferred != "" {
		var req stepDownRequest
		req.Placement.Preferred = preferred
		body, _ = json.Marshal(req)
	}
	msg, err := js.Conn().RequestWithContext(ctx, subject, body)
	if err != nil {
		t.Fatalf("NATS: stepping down the leader of %s: %v", what, err)
	}
	var resp apiResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		t.Fatalf("NATS: stepping down the leader of %s: answer %q: %v", what, msg.Data, err)
	}
	if resp.Error != nil || !resp.Success {
		t.Fatalf("NATS: stepping down the leader of %s: %s", what, msg.Data)
	}
}

// leader polls info until it names a running node other than not (-1: any)
// as leader, and returns that node's index.
func (c *Cluster) leader(t testing.TB, what string, not int, info func(context.Context) (*jetstream.ClusterInfo, error)) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), leaderTimeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last string
	for {
		reqCtx, reqCancel := context.WithTimeout(ctx, time.Second)
		ci, err := info(reqCtx)
		reqCancel()
		switch {
		case err != nil:
			last = err.Error()
		case ci == nil:
			t.Fatalf("NATS: %s has no cluster information: is it on a cluster?", what)
		default:
			i := slices.IndexFunc(c.nodes, func(s *Server) bool { return s.name == ci.Leader })
			switch {
			case i < 0:
				last = fmt.Sprintf("leader %q", ci.Leader)
			case !c.nodes[i].running:
				last = fmt.Sprintf("leader %s, which is stopped", ci.Leader)
			case i == not:
				last = fmt.Sprintf("leader still %s", ci.Leader)
			default:
				return i
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("NATS: no leader of %s within %v (last: %s)", what, leaderTimeout, last)
		case <-tick.C:
		}
	}
}

// ScenarioEvents is how many events a cluster scenario that asks for n
// runs with: n, or a fifth of it (at least 1,000) in -short mode. CI runs
// every test twice: at full size against containers, then with -short
// under the race detector, which looks for data races, not for losses a
// larger count would show — and at a fifth of the events a scenario still
// crosses every kill, step-down and outage it is built around.
func ScenarioEvents(n int) int {
	if !testing.Short() {
		return n
	}
	return max(n/5, min(n, 1000))
}
