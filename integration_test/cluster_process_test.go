package integration_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// TestRelayProcessRidesThroughNodeLossAndLostQuorum runs the cio-relay
// binary with its default settings (ordered delivery, its own NATS client
// options) and RELAY_STREAM_REPLICAS=3 against a three-node cluster, with
// NATS_URL naming one node only, as a Service URL does: it learns the
// others from that node. While opsEvents events flow, that node, which
// also leads the CIO stream and the consumer, is killed and restarted;
// then the two other nodes are killed, so JetStream has no quorum, and
// restarted. The process must not exit: it reconnects to another node and
// resumes, answers /readyz 503 naming JetStream while there is no quorum
// (with cio_relay_jetstream_unavailable_seconds counting), 200 again once
// the quorum is back, and every event must reach Customer.io with nothing
// dead-lettered.
func TestRelayProcessRidesThroughNodeLossAndLostQuorum(t *testing.T) {
	t.Parallel()
	// A slow Customer.io, one request at a time, so that a backlog is
	// still being delivered when the quorum goes, after every event is
	// published (a publisher gives up on a call after 30s without quorum).
	r := newOpsRun(t, "rp-", ciotest.Options{Fault: func(*ciotest.Request) *ciotest.Fault {
		return &ciotest.Fault{Slow: true, Delay: 80 * time.Millisecond}
	}})
	const own = 0 // the node the process connects to
	keyFile := filepath.Join(t.TempDir(), "cdp-api-key")
	writeFileAtomic(t, keyFile, cdpKey)
	p := startRelay(t, "cluster", relayEnv(r.c.Node(own).URL(), r.e.cio.CDPURL(), keyFile, map[string]string{
		"RELAY_STREAM_REPLICAS":  "3",
		"RELAY_BATCH_MAX_CALLS":  "25",
		"RELAY_SEND_CONCURRENCY": "1",
	}))
	r.c.MoveStreamLeader(t, r.e.js, "CIO", own)
	r.c.MoveConsumerLeader(t, r.e.js, "CIO", "cio-relay", own)
	if n := streamInfo(t, r.e.js, "CIO").Config.Replicas; n != 3 {
		t.Fatalf("the process created CIO with %d replicas, want 3", n)
	}

	// alive fails the test at once if the process has exited.
	alive := func() {
		t.Helper()
		select {
		case <-p.done:
			t.Fatalf("cio-relay exited (%v) with %d calls accepted", p.err, r.e.cio.Stats().CallsAccepted)
		default:
		}
	}
	waitAccepted := func(n int) {
		t.Helper()
		waitFor(t, time.Minute, fmt.Sprintf("%d calls accepted", n), func() bool {
			alive()
			return r.e.cio.Stats().CallsAccepted >= n
		})
	}
	readyz := func(want int, reason string) {
		t.Helper()
		var code int
		var body string
		waitFor(t, time.Minute, fmt.Sprintf("/readyz %d %q", want, reason), func() bool {
			alive()
			code, body = p.get(t, "/readyz")
			return code == want && strings.Contains(body, reason)
		})
	}

	r.publishPaced(time.Millisecond)
	waitAccepted(opsEvents() * 2 / 10)
	r.c.Node(own).Kill(t)
	r.logf("killed node %d (the process's server, stream and consumer leader)", own)
	reconnected := p.waitLog(t, 30*time.Second, "reconnected to NATS")
	if s, _ := reconnected["server"].(string); strings.Contains(s, r.c.Node(own).URL()[len("nats://"):]) {
		t.Fatalf("reconnected to %s, the killed node", s)
	}
	waitAccepted(opsEvents() * 4 / 10)
	r.c.Node(own).Restart(t)
	r.logf("restarted node %d", own)
	if err := <-r.pubDone; err != nil {
		t.Fatalf("publishing: %v", err)
	}
	r.pubDone <- nil // for verify
	waitAccepted(opsEvents() * 5 / 10)
	if n := r.e.cio.Stats().CallsAccepted; n >= opsEvents()*9/10 {
		t.Fatalf("%d calls accepted before the quorum goes: too few left to show delivery resuming", n)
	}

	r.c.Node(1).Kill(t)
	r.c.Node(2).Kill(t)
	r.logf("killed nodes 1 and 2: no quorum")
	readyz(503, "JetStream")
	if d, ok := p.metric(t, "cio_relay_jetstream_unavailable_seconds"); !ok || d <= 0 {
		t.Errorf("cio_relay_jetstream_unavailable_seconds = %v (exposed %v) while not ready, want > 0", d, ok)
	}
	stalled := r.e.cio.Stats().CallsAccepted
	r.logf("/readyz 503")
	r.c.Node(1).Restart(t)
	r.c.Node(2).Restart(t)
	r.logf("restarted nodes 1 and 2")
	readyz(200, "")
	r.logf("/readyz 200")
	r.verify(0)
	alive()
	if r.e.cio.Stats().CallsAccepted <= stalled {
		t.Errorf("no call delivered after the quorum came back")
	}
	failed := 0.0
	for _, op := range []string{"pull", "ack", "publish_dlq", "info", "kv"} {
		v, ok := p.metric(t, fmt.Sprintf(`cio_relay_jetstream_errors_total{op=%q}`, op))
		if !ok {
			t.Errorf("/metrics has no cio_relay_jetstream_errors_total{op=%q}", op)
		}
		t.Logf("cio_relay_jetstream_errors_total{op=%q} %v", op, v)
		failed += v
	}
	if failed == 0 {
		t.Errorf("no failed JetStream operation counted through a lost node and a lost quorum")
	}
}
