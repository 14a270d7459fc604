package publish

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/natstest"
)

// TestPublishRidesThroughLeaderElections publishes a steady flow of 10,000
// calls to an R3 stream while its leader is killed (the node the publisher is
// connected to, so PubAcks in flight are lost with it), restarted, and
// then stepped down. Every call must be stored exactly once: calls caught
// in an election are sent again with the same Nats-Msg-Id, and the stream
// drops the copies of those that were stored before their PubAck was lost.
func TestPublishRidesThroughLeaderElections(t *testing.T) {
	t.Parallel()
	n := natstest.ScenarioEvents(10000)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	c := natstest.StartCluster(t, 3)
	_, admin := c.Connect(t)
	stream, err := admin.CreateStream(ctx, jetstream.StreamConfig{
		Name: "CIO", Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage,
		Replicas: 3, Duplicates: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The publisher's client is on the stream leader's node, and fails over
	// to the others.
	leader := c.StreamLeader(t, admin, "CIO")
	_, js := c.ConnectTo(t, leader)
	var failures []*PublishError
	p, err := New(js, Options{Stream: "CIO", IDPrefix: "c-", AckTimeout: time.Second,
		OnFailure: func(pe *PublishError) { failures = append(failures, pe) }})
	if err != nil {
		t.Fatal(err)
	}

	// The flow is paced, so that calls are in flight while leaders
	// change; milestones[k] closes when (k+1)/5 of it is sent.
	var milestones [4]chan struct{}
	for i := range milestones {
		milestones[i] = make(chan struct{})
	}
	published := make(chan error, 1)
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := range n {
			if i > 0 && i%(n/5) == 0 {
				close(milestones[i/(n/5)-1])
			}
			<-tick.C
			call := fmt.Sprintf(`{"type":"track","userId":"u-%d","event":"E"}`, i)
			if _, err := p.Publish(ctx, []byte(call)); err != nil {
				published <- fmt.Errorf("call %d: %w", i, err)
				return
			}
		}
		published <- p.Wait(ctx)
	}()

	<-milestones[0]
	c.Node(leader).Kill(t)
	t.Logf("killed node %d, the stream leader and the publisher's server; now node %d leads", leader, c.StreamLeader(t, admin, "CIO"))
	<-milestones[1]
	c.Node(leader).Restart(t)
	t.Logf("restarted node %d", leader)
	<-milestones[2]
	t.Logf("stepped the stream leader down: now node %d", c.StepDownStream(t, admin, "CIO"))

	if err := <-published; err != nil {
		t.Fatalf("publishing: %v", err)
	}
	s := p.Stats()
	t.Logf("stats %+v", s)
	if s.Published != int64(n) || s.Failed != 0 || len(failures) != 0 {
		t.Fatalf("published %d, failed %d (reported %d), want all %d published", s.Published, s.Failed, len(failures), n)
	}
	if s.Retries == 0 {
		t.Fatalf("no call was sent again: the elections caught no call in flight, so this proves nothing")
	}

	// Exactly n distinct calls in the stream: none lost, none twice.
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(n) {
		t.Errorf("stream holds %d messages, want %d", info.State.Msgs, n)
	}
	seen := make(map[string]int, n)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("reading message %d: %v", seq, err)
		}
		var call struct {
			MessageID string `json:"messageId"`
		}
		if err := json.Unmarshal(m.Data, &call); err != nil {
			t.Fatal(err)
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != call.MessageID {
			t.Errorf("message %d: Nats-Msg-Id %q, messageId %q", seq, got, call.MessageID)
		}
		seen[call.MessageID]++
	}
	var missing, twice int
	for i := 1; i <= n; i++ {
		switch seen[fmt.Sprintf("c-%d", i)] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
	}
	if missing != 0 || twice != 0 || len(seen) != n {
		t.Errorf("%d calls missing, %d stored more than once, %d distinct; want 0, 0, %d", missing, twice, len(seen), n)
	}
}
