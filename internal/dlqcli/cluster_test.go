package dlqcli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
)

// clusterLetters is how many dead letters TestDLQCommandsOnACluster stores:
// the 10,000 the issue asks of each cluster scenario, many fetches' worth,
// so a walk crosses fetch boundaries.
func clusterLetters() int { return natstest.ScenarioEvents(10000) }

// TestDLQCommandsOnACluster runs stats, list, show, purge and replay
// against dead letters in an R3 CIO_DLQ through a connection to a node
// that leads neither stream, and purges and replays right after a leader
// step-down of CIO_DLQ, when a new consumer's first pulls may find no
// responders.
func TestDLQCommandsOnACluster(t *testing.T) {
	t.Parallel()
	c := natstest.StartCluster(t, 3)
	adminNC, adminJS := c.Connect(t)
	ctx := t.Context()
	cio, err := adminJS.CreateStream(ctx, jetstream.StreamConfig{
		Name: "CIO", Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute, Replicas: 3,
	})
	if err != nil {
		t.Fatalf("creating CIO: %v", err)
	}
	dlqCfg := deadletter.StreamConfig("CIO_DLQ", 30*24*time.Hour, -1)
	dlqCfg.Replicas = 3
	if _, err := adminJS.CreateStream(ctx, dlqCfg); err != nil {
		t.Fatalf("creating CIO_DLQ: %v", err)
	}
	c.MoveStreamLeader(t, adminJS, "CIO", 0)
	c.MoveStreamLeader(t, adminJS, "CIO_DLQ", 0)
	const follower = 2
	_, js := c.ConnectTo(t, follower)
	dlq, err := js.Stream(ctx, "CIO_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{js: js, cio: cio, dlq: dlq, now: time.Now().UTC().Truncate(time.Second)}
	exhausted := 0 // letters purged below, the rest replayed
	for i := range clusterLetters() {
		d := letters[i%len(letters)]
		if d.reason == "invalid_json" { // kept by replay: make it one that goes
			d.reason, d.body = "rejected", `{"userId":"u-3","event":"E"}`
		}
		f.putDead(t, i, d)
		if d.reason == "retries_exhausted" {
			exhausted++
		}
	}
	replayed := clusterLetters() - exhausted

	code, out, _ := f.run(t, ctx, Env{}, "stats")
	if code != 0 || !strings.Contains(out, fmt.Sprint(clusterLetters())) {
		t.Fatalf("stats through node %d: exit %d, output without the total %d", follower, code, clusterLetters())
	}
	code, out, _ = f.run(t, ctx, Env{}, "list", "--json", "--limit", "0")
	if got := len(jsonLines[map[string]any](t, out)); code != 0 || got != clusterLetters() {
		t.Fatalf("list through node %d: exit %d, %d letters; want 0 and %d", follower, code, got, clusterLetters())
	}

	first := dlqSeqs(t, dlq)[0]
	code, out, _ = f.run(t, ctx, Env{}, "show", fmt.Sprint(first))
	if code != 0 || !strings.Contains(out, "mid-1") {
		t.Fatalf("show %d through node %d: exit %d, output without messageId mid-1:\n%s", first, follower, code, out)
	}

	// Each step-down asked for and the command begun at once, before a
	// new leader is elected: a purge, then a replay of what is left.
	stepDown := func() {
		t.Helper()
		if _, err := adminNC.Request("$JS.API.STREAM.LEADER.STEPDOWN.CIO_DLQ", nil, 10*time.Second); err != nil {
			t.Fatalf("stepping CIO_DLQ's leader down: %v", err)
		}
	}
	stepDown()
	code, out, _ = f.run(t, ctx, Env{}, "purge", "--yes", "--reason", "retries_exhausted")
	t.Logf("CIO_DLQ leader stepped down; node %d leads it now", c.StreamLeader(t, adminJS, "CIO_DLQ"))
	if want := fmt.Sprintf("deleted %d of %d matching", exhausted, exhausted); code != 0 || !strings.Contains(out, want) {
		t.Fatalf("purge after the step-down: exit %d; want 0 and %q", code, want)
	}
	if left := len(dlqSeqs(t, dlq)); left != replayed {
		t.Fatalf("%d letters left in CIO_DLQ after the purge, want %d", left, replayed)
	}
	stepDown()
	code, out, _ = f.run(t, ctx, Env{}, "replay", "--force")
	t.Logf("CIO_DLQ leader stepped down; node %d leads it now", c.StreamLeader(t, adminJS, "CIO_DLQ"))
	if want := fmt.Sprintf("matched %d, replayed %d, failed 0", replayed, replayed); code != 0 || !strings.Contains(out, want) {
		t.Fatalf("replay after the step-down: exit %d; want 0 and %q", code, want)
	}
	if got := len(stored(t, cio)); got != replayed {
		t.Errorf("CIO holds %d replayed messages, want %d", got, replayed)
	}
	if left := dlqSeqs(t, dlq); len(left) != 0 {
		t.Errorf("%d letters left in CIO_DLQ after the replay", len(left))
	}
}
