package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/internal/natstest"
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
	w, _ := e.runWorker(t, opts, 0)
	waitReady(t, w)

	for _, name := range []string{"CIO", "CIO_DLQ"} {
		info := streamInfo(t, e.js, name)
		if info.Config.Replicas != 3 || peers(info.Cluster) != 3 {
			t.Errorf("stream %s: %d replicas configured, on %d nodes; want 3 on 3", name, info.Config.Replicas, peers(info.Cluster))
		}
	}
	// Consumers set no count of their own and follow their stream.
	ci := consumerInfo(t, e.js)
	if ci.Config.Replicas != 0 || peers(ci.Cluster) != 3 {
		t.Errorf("consumer: %d replicas configured, on %d nodes; want 0 (the stream's) on 3", ci.Config.Replicas, peers(ci.Cluster))
	}
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
