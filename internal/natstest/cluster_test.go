package natstest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/natstest"
)

// createR3 creates a replicated stream with a durable consumer on c.
func createR3(ctx context.Context, t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     "EVENTS",
		Subjects: []string{"events.>"},
		Storage:  jetstream.FileStorage,
		Replicas: 3,
	})
	if err != nil {
		t.Fatalf("CreateStream R3: %v", err)
	}
	if _, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "C", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatalf("CreateOrUpdateConsumer: %v", err)
	}
	return stream
}

// publishN publishes n messages, retrying each (same Nats-Msg-Id) while a
// leader is elected.
func publishN(ctx context.Context, t *testing.T, js jetstream.JetStream, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		id := fmt.Sprintf("m-%d", i)
		for {
			// One attempt may go to a leader that is gone: bound it.
			actx, cancel := context.WithTimeout(ctx, attemptTimeout)
			_, err := js.Publish(actx, "events.track", []byte(id), jetstream.WithMsgID(id))
			cancel()
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("publishing %s: %v", id, err)
			case <-time.After(50 * time.Millisecond): // a retry's pause, while a leader is elected
			}
		}
	}
}

// attemptTimeout bounds one request of these tests: one to a leader that
// has just gone would otherwise wait for the test's whole deadline.
const attemptTimeout = 2 * time.Second

// eventually retries f, each attempt bounded by attemptTimeout, until it
// succeeds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), attemptTimeout)
		err := f(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond) // polling the server's view; no event to await
	}
}

// wantMsgs waits until the stream reports n messages.
func wantMsgs(t *testing.T, js jetstream.JetStream, n uint64, when string) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%s the stream holds %d messages", when, n), func(ctx context.Context) error {
		s, err := js.Stream(ctx, "EVENTS")
		if err != nil {
			return err
		}
		if got := s.CachedInfo().State.Msgs; got != n {
			return fmt.Errorf("it holds %d", got)
		}
		return nil
	})
}

// TestClusterReplicatedStreamSurvivesLeaderLoss kills the leader of an R3
// stream (SIGKILL in a container; a stop in-process, see Server.Kill) and
// restarts it.
func TestClusterReplicatedStreamSurvivesLeaderLoss(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	c := natstest.StartCluster(t, 3)
	if got := len(strings.Split(c.URL(), ",")); got != 3 || c.Len() != 3 {
		t.Fatalf("URL() = %q, Len() = %d: want 3 nodes", c.URL(), c.Len())
	}
	_, js := c.Connect(t)
	stream := createR3(ctx, t, js)
	if got := len(stream.CachedInfo().Cluster.Replicas) + 1; got != 3 {
		t.Fatalf("stream has %d peers, want 3", got)
	}
	publishN(ctx, t, js, 0, 100)

	leader := c.StreamLeader(t, js, "EVENTS")
	c.Node(leader).Kill(t)
	if c.Node(leader).Running() {
		t.Fatalf("node %d still running after Kill", leader)
	}

	next := c.StreamLeader(t, js, "EVENTS")
	if next == leader {
		t.Fatalf("stream leader is still the killed node %d", leader)
	}
	wantMsgs(t, js, 100, "after the leader was killed")
	// The remaining two nodes are a quorum: the stream still takes writes.
	publishN(ctx, t, js, 100, 50)

	// The killed node comes back with its store and catches up.
	c.Node(leader).Restart(t)
	c.WaitJetStream(t)
	wantMsgs(t, js, 150, "after the restart")
	// The restarted node catches up: its replica is current, with no lag.
	name := c.Node(leader).Name()
	eventually(t, 30*time.Second, "restarted node "+name+" catches up", func(ctx context.Context) error {
		s, err := js.Stream(ctx, "EVENTS")
		if err != nil {
			return err
		}
		if r := replica(s.CachedInfo(), name); r == nil || !r.Current || r.Lag != 0 {
			return fmt.Errorf("replica %+v", r)
		}
		return nil
	})
}

// replica returns name's entry among the stream's followers, nil if it
// is the leader or unknown.
func replica(info *jetstream.StreamInfo, name string) *jetstream.PeerInfo {
	if info.Cluster == nil {
		return nil
	}
	for _, r := range info.Cluster.Replicas {
		if r.Name == name {
			return r
		}
	}
	if info.Cluster.Leader == name {
		return &jetstream.PeerInfo{Name: name, Current: true}
	}
	return nil
}

func TestClusterStepDownMovesLeaders(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	c := natstest.StartCluster(t, 3)
	_, js := c.Connect(t)
	createR3(ctx, t, js)
	publishN(ctx, t, js, 0, 10)

	before := c.StreamLeader(t, js, "EVENTS")
	after := c.StepDownStream(t, js, "EVENTS")
	if after == before {
		t.Fatalf("StepDownStream: leader still node %d", before)
	}
	if got := c.StreamLeader(t, js, "EVENTS"); got != after {
		t.Fatalf("StreamLeader = %d after the step-down returned %d", got, after)
	}

	cBefore := c.ConsumerLeader(t, js, "EVENTS", "C")
	cAfter := c.StepDownConsumer(t, js, "EVENTS", "C")
	if cAfter == cBefore {
		t.Fatalf("StepDownConsumer: leader still node %d", cBefore)
	}

	// Both leaders onto the one node that leads neither now.
	to := 3 - after - cAfter
	if after == cAfter {
		to = (after + 1) % 3
	}
	c.MoveStreamLeader(t, js, "EVENTS", to)
	c.MoveConsumerLeader(t, js, "EVENTS", "C", to)
	if s, cons := c.StreamLeader(t, js, "EVENTS"), c.ConsumerLeader(t, js, "EVENTS", "C"); s != to || cons != to {
		t.Fatalf("after moving both to node %d: stream leader %d, consumer leader %d", to, s, cons)
	}

	// The consumer kept its state across the move: it hands out the 10.
	cons, err := js.Consumer(ctx, "EVENTS", "C")
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	batch, err := cons.Fetch(10, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	got := 0
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatalf("DoubleAck: %v", err)
		}
		got++
	}
	if got != 10 {
		t.Fatalf("fetched %d messages after the step-downs, want 10 (err %v)", got, batch.Error())
	}
}

func TestScenarioEvents(t *testing.T) {
	want := 10000
	if testing.Short() {
		want = 2000
	}
	if got := natstest.ScenarioEvents(10000); got != want {
		t.Errorf("natstest.ScenarioEvents(10000) = %d in short mode %v, want %d", got, testing.Short(), want)
	}
	if got := natstest.ScenarioEvents(500); got != 500 {
		t.Errorf("natstest.ScenarioEvents(500) = %d, want 500 (never below 1,000 unless asked for fewer)", got)
	}
}
