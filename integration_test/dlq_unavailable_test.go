package integration_test

import (
	"context"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// TestDeadLetterPublishFailureNaks makes the dead-letter stream refuse
// every publish (its subjects taken away: "no responders", as a stream
// without quorum times out) while invalid messages arrive. Each must be
// nakked, not dropped and not acked, and dead-lettered exactly once when
// the stream takes publishes again.
func TestDeadLetterPublishFailureNaks(t *testing.T) {
	t.Parallel()
	const invalid = 20
	e := newEnv(t, ciotest.Options{})
	w, reg := e.runWorker(t, fastOptions(), 0)
	waitReady(t, w)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dlq, err := e.js.Stream(ctx, "CIO_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	cfg := dlq.CachedInfo().Config
	closed := cfg
	closed.Subjects = []string{"nothing.here"}
	if _, err := e.js.UpdateStream(ctx, closed); err != nil {
		t.Fatalf("closing the dead-letter stream: %v", err)
	}
	for range invalid {
		if _, err := e.js.Publish(ctx, "cio.identify", []byte(`not json`)); err != nil {
			t.Fatal(err)
		}
	}
	// As many refusals as messages (each is nakked and comes back; the
	// deliveries checked below show that every one was refused).
	waitFor(t, 30*time.Second, "dead-letter publishes to fail", func() bool {
		return counterValue(t, reg, "cio_relay_jetstream_errors_total", "publish_dlq") >= invalid
	})
	if n := streamMsgs(t, e.js, "CIO_DLQ"); n != 0 {
		t.Fatalf("the closed dead-letter stream holds %d letters", n)
	}
	if _, err := e.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("opening the dead-letter stream again: %v", err)
	}
	waitSettled(t, e.js, 30*time.Second)

	seqs := map[uint64]int{}
	for _, d := range readDLQ(t, e.js) {
		if d.Record.Reason != "invalid_json" {
			t.Errorf("dead letter %d: reason %s, want invalid_json", d.Seq, d.Record.Reason)
		}
		if d.Record.Deliveries < 2 {
			t.Errorf("dead letter of stream seq %d after %d deliveries, want ≥ 2 (the refused ones nakked)", d.Record.StreamSeq, d.Record.Deliveries)
		}
		seqs[d.Record.StreamSeq]++
	}
	if len(seqs) != invalid {
		t.Errorf("%d invalid messages dead-lettered, want all %d", len(seqs), invalid)
	}
	for seq, n := range seqs {
		if n != 1 {
			t.Errorf("stream seq %d dead-lettered %d times", seq, n)
		}
	}
	t.Logf("%v dead-letter publishes refused; %d dead letters once the stream was open",
		counterValue(t, reg, "cio_relay_jetstream_errors_total", "publish_dlq"), len(seqs))
}
