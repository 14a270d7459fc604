package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/publish"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// newClusterEnv is newEnv on a JetStream cluster of three nodes; the
// client knows every node and fails over between them.
func newClusterEnv(t *testing.T, opts ciotest.Options) (*env, *natstest.Cluster) {
	t.Helper()
	c := natstest.StartCluster(t, 3)
	if opts.CDPKey == "" {
		opts.CDPKey = cdpKey
	}
	cio := ciotest.NewServer(t, opts)
	nc, js := c.Connect(t)
	return &env{cio: cio, nc: nc, js: js}, c
}

// waitReady waits until w has bound its streams and consumers. On a
// cluster a consumer is visible before its creation is answered, so its
// existence, which runWorker waits for, is not enough.
func waitReady(t *testing.T, w *worker.Worker) {
	t.Helper()
	waitFor(t, 30*time.Second, "the worker to be ready", func() bool {
		ok, _ := w.Ready()
		return ok
	})
}

// logRecorder keeps a worker's log as JSON lines, to check what it warns of.
type logRecorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *logRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *logRecorder) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(r, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// records returns the logged records whose message contains msg.
func (r *logRecorder) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.buf.String()), "\n") {
		if line == "" {
			continue // nothing logged yet
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m, _ := rec["msg"].(string); strings.Contains(m, msg) {
			out = append(out, rec)
		}
	}
	return out
}

// streamInfo returns a stream's info as the server sees it now.
func streamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("looking up stream %s: %v", name, err)
	}
	return s.CachedInfo()
}

// peers counts the nodes that hold a stream or consumer: its leader and
// its followers.
func peers(ci *jetstream.ClusterInfo) int {
	if ci == nil || ci.Leader == "" {
		return 0
	}
	return 1 + len(ci.Replicas)
}

func TestStreamReplicasOnACluster(t *testing.T) {
	t.Parallel()
	e, _ := newClusterEnv(t, ciotest.Options{})
	opts := fastOptions()
	opts.StreamReplicas = 3
	opts.App = appClient(t, e) // so the trigger buckets are made too
	w, _ := e.runWorker(t, opts, 0)
	waitReady(t, w)

	// The KV buckets are streams named KV_{bucket}.
	for _, name := range []string{"CIO", "CIO_DLQ", "KV_" + worker.SentMarksBucket("CIO"), "KV_" + worker.TurnsBucket("CIO")} {
		info := streamInfo(t, e.js, name)
		if info.Config.Replicas != 3 || peers(info.Cluster) != 3 {
			t.Errorf("stream %s: %d replicas configured, on %d nodes; want 3 on 3", name, info.Config.Replicas, peers(info.Cluster))
		}
	}
	// Consumers set no count of their own and follow their stream: the
	// batch consumer and each direct one.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := e.js.Stream(ctx, "CIO")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for ci := range stream.ListConsumers(ctx).Info() {
		names = append(names, ci.Name)
		if ci.Config.Replicas != 0 || peers(ci.Cluster) != 3 {
			t.Errorf("consumer %s: %d replicas configured, on %d nodes; want 0 (the stream's) on 3", ci.Name, ci.Config.Replicas, peers(ci.Cluster))
		}
	}
	if len(names) < 2 || !slices.Contains(names, "cio-relay") {
		t.Errorf("consumers %v: want the batch consumer cio-relay and the direct ones", names)
	}
	t.Logf("consumers on CIO, each on 3 nodes: %v", names)
}

func TestStreamReplicasMismatchIsReported(t *testing.T) {
	t.Parallel()
	e := newEnv(t, ciotest.Options{})
	// Streams someone made with one replica; the worker asks for three.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.js.CreateStream(ctx, worker.StreamConfig("CIO")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", time.Hour, -1)); err != nil {
		t.Fatal(err)
	}
	var logs logRecorder
	opts := fastOptions()
	opts.StreamReplicas = 3
	opts.Logger = logs.logger()
	e.runWorker(t, opts, 0)

	warned := map[string]bool{}
	for _, rec := range logs.records(t, "RELAY_STREAM_REPLICAS") {
		if rec["level"] != "WARN" || rec["stream_replicas"] != 1.0 || rec["relay_stream_replicas"] != 3.0 {
			t.Errorf("warning %v: want level WARN, stream_replicas 1, relay_stream_replicas 3", rec)
		}
		name, _ := rec["stream"].(string)
		warned[name] = true
	}
	if !warned["CIO"] || !warned["CIO_DLQ"] {
		t.Errorf("warned of the replica count of %v, want CIO and CIO_DLQ", warned)
	}
	// Not changed behind the operator's back.
	for _, name := range []string{"CIO", "CIO_DLQ"} {
		if got := streamInfo(t, e.js, name).Config.Replicas; got != 1 {
			t.Errorf("stream %s now has %d replicas, want the 1 it was created with", name, got)
		}
	}
}

func TestStreamReplicasOnASingleServerFailClearly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, ciotest.Options{})
	w, err := worker.New(e.js, sink.NewDryRun(&strings.Builder{}), worker.Options{ManageStreams: true, StreamReplicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = w.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "creating stream CIO") || !strings.Contains(err.Error(), "RELAY_STREAM_REPLICAS=3") {
		t.Fatalf("Run = %v, want an error creating stream CIO that names RELAY_STREAM_REPLICAS=3", err)
	}
}

// clusterWorker is a worker of TestRelayRidesThroughStreamLeaderLoss, on
// its own connection to the cluster, as a replica of the Deployment is.
type clusterWorker struct {
	name string
	w    *worker.Worker
	done chan error // Run's result
}

// startClusterWorker runs a worker on its own client, connected to node
// (and failing over to the others), until the test ends. Unlike runWorker
// it hands back Run's result as it comes, so a worker that gives up
// mid-test fails the test at once.
func startClusterWorker(t *testing.T, e *env, c *natstest.Cluster, node int, name string, opts worker.Options) *clusterWorker {
	t.Helper()
	_, js := c.ConnectTo(t, node)
	cdp, err := sink.NewCDP(sink.CDPOptions{
		URL:       e.cio.CDPURL(),
		APIKey:    func() string { return cdpKey },
		UserAgent: "cio-relay/test",
		Client:    sink.NewHTTPClient(4, 10*time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	opts.ManageStreams = true
	w, err := worker.New(js, cdp, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cw := &clusterWorker{name: name, w: w, done: make(chan error, 1)}
	go func() { cw.done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-cw.done:
		case <-time.After(30 * time.Second):
			t.Errorf("worker %s did not stop within 30s", name)
		}
	})
	waitReady(t, w)
	return cw
}

// TestRelayRidesThroughStreamLeaderLoss runs two workers against a
// three-node cluster with RELAY_STREAM_REPLICAS=3 while events flow, and
// kills the node that leads the CIO stream mid-run (SIGKILL in a
// container; in-process a stop, see natstest.Server.Kill), then restarts
// it. The node also leads the workers' consumer. One worker pulls through
// it, so it loses its server and must reconnect to another node and resume;
// the other pulls through another node, so its pull requests die with the
// consumer leader without its connection noticing. Every event must reach
// Customer.io (duplicates are counted and reported), nothing may be
// dead-lettered, and both workers must keep running.
func TestRelayRidesThroughStreamLeaderLoss(t *testing.T) {
	t.Parallel()
	events := natstest.ScenarioEvents(10000)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	e, c := newClusterEnv(t, ciotest.Options{})
	opts := fastOptions()
	opts.StreamReplicas = 3
	opts.AckWait = 5 * time.Second // what a lost node held comes back soon
	opts.BatchMaxCalls = 250       // more batches, so more of them are in flight at the loss
	opts.MaxAckPending = 2000
	const lost = 0 // the node killed mid-run
	workers := []*clusterWorker{
		startClusterWorker(t, e, c, lost, "w1", opts),
		startClusterWorker(t, e, c, 1, "w2", opts),
	}
	c.MoveStreamLeader(t, e.js, "CIO", lost)
	c.MoveConsumerLeader(t, e.js, "CIO", "cio-relay", lost)

	// Publishing runs alongside with the publish package, which rides
	// through the election itself; paced so that events are still flowing
	// when the node goes.
	_, pubJS := c.Connect(t)
	p, err := publish.New(pubJS, publish.Options{Stream: "CIO", IDPrefix: "cl-"})
	if err != nil {
		t.Fatal(err)
	}
	published := make(chan error, 1)
	go func() {
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for i := range events {
			<-tick.C
			call := fmt.Sprintf(`{"type":"track","userId":"u-%d","event":"Clustered","properties":{"i":%d}}`, i, i)
			if _, err := p.Publish(ctx, []byte(call)); err != nil {
				published <- fmt.Errorf("call %d: %w", i, err)
				return
			}
		}
		published <- p.Wait(ctx)
	}()

	// waitDelivered waits until the stand-in has accepted n calls, failing
	// at once if a worker stops or publishing fails.
	pubErr := error(nil)
	pubDone := false
	waitDelivered := func(n int) {
		t.Helper()
		wctx, stop := context.WithCancel(ctx)
		defer stop()
		reason := make(chan string, 1)
		go func() {
			cases := make(chan string, len(workers))
			for _, w := range workers {
				go func() {
					select {
					case err := <-w.done:
						w.done <- err // for the cleanup
						cases <- fmt.Sprintf("worker %s stopped: Run returned %v", w.name, err)
					case <-wctx.Done():
					}
				}()
			}
			select {
			case r := <-cases:
				reason <- r
				stop()
			case <-wctx.Done():
			}
		}()
		if err := e.cio.WaitDelivered(wctx, n); err != nil {
			select {
			case r := <-reason:
				t.Fatalf("%s, with %d calls accepted, waiting for %d", r, e.cio.Stats().CallsAccepted, n)
			default:
			}
			t.Fatalf("waiting for %d calls accepted: %v (%d accepted; publishing done %v, error %v)", n, err, e.cio.Stats().CallsAccepted, pubDone, pubErr)
		}
	}

	start := time.Now()
	waitDelivered(events * 3 / 10)
	if got := c.StreamLeader(t, e.js, "CIO"); got != lost {
		t.Fatalf("the CIO stream leader moved to node %d on its own before the loss", got)
	}
	c.Node(lost).Kill(t)
	t.Logf("%v: killed node %d (stream and consumer leader, w1's server) at %d calls accepted; node %d leads the stream, node %d the consumer",
		time.Since(start).Round(time.Millisecond), lost, e.cio.Stats().CallsAccepted,
		c.StreamLeader(t, e.js, "CIO"), c.ConsumerLeader(t, e.js, "CIO", "cio-relay"))
	waitDelivered(events * 6 / 10)
	c.Node(lost).Restart(t)
	t.Logf("%v: restarted node %d at %d calls accepted", time.Since(start).Round(time.Millisecond), lost, e.cio.Stats().CallsAccepted)

	// Every event delivered at least once: wait on the distinct messageIds.
	counts := map[string]int{}
	for {
		delivered := e.cio.Delivered()
		clear(counts)
		for _, call := range delivered {
			counts[call.MessageID]++
		}
		if len(counts) >= events {
			break
		}
		waitDelivered(len(delivered) + 1)
	}
	pubErr, pubDone = <-published, true
	if pubErr != nil {
		t.Fatalf("publishing: %v", pubErr)
	}
	waitSettled(t, e.js, time.Minute)
	elapsed := time.Since(start)

	// Counted again now that nothing is in flight: a redelivery can land
	// after the last new messageId did.
	clear(counts)
	for _, call := range e.cio.Delivered() {
		counts[call.MessageID]++
	}
	duplicates, twice := 0, 0
	for i := 1; i <= events; i++ {
		n := counts[fmt.Sprintf("cl-%d", i)]
		if n == 0 {
			t.Errorf("event cl-%d never delivered", i)
		}
		if n > 1 {
			duplicates += n - 1
			twice++
		}
	}
	if len(counts) != events {
		t.Errorf("%d distinct messageIds delivered, want %d", len(counts), events)
	}
	if dead := streamMsgs(t, e.js, "CIO_DLQ"); dead != 0 {
		for _, d := range readDLQ(t, e.js) {
			t.Errorf("dead letter %d: %s, %s (%d deliveries)", d.Seq, d.Record.Reason, d.Record.Detail, d.Record.Deliveries)
		}
	}
	if n := streamMsgs(t, e.js, "CIO"); n != uint64(events) {
		t.Errorf("stream CIO holds %d messages for %d events", n, events)
	}
	for _, w := range workers {
		select {
		case err := <-w.done:
			w.done <- err
			t.Errorf("worker %s stopped: Run returned %v", w.name, err)
		default:
		}
	}
	ps, info := p.Stats(), consumerInfo(t, e.js)
	t.Logf("cluster: %d events, %d calls delivered, %d duplicates (%d events more than once), 0 lost; "+
		"publisher sent %d again (%d already stored); %d JetStream deliveries; %v",
		events, e.cio.Stats().CallsAccepted, duplicates, twice, ps.Retries, ps.Duplicates, info.Delivered.Consumer,
		elapsed.Round(time.Millisecond))
}
