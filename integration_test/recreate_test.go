package integration_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/worker"
)

// capture is a batch sender that keeps the messageIds it is sent.
type capture struct {
	mu  sync.Mutex
	ids []string
}

func (c *capture) SendBatch(_ context.Context, body []byte) error {
	var b struct {
		Batch []struct {
			MessageID string `json:"messageId"`
		} `json:"batch"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, call := range b.Batch {
		c.ids = append(c.ids, call.MessageID)
	}
	return nil
}

func (c *capture) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}

// TestStreamRecreatedAtOnceDerivesNewMessageIDs is #11 item 10 against a
// real server: the stream is deleted and created again at once (well
// within a second), so its sequences restart at 1. A call without a
// messageId at sequence 1 of each incarnation must be sent with a
// different derived messageId, or Customer.io drops the second as a
// duplicate of the first.
func TestStreamRecreatedAtOnceDerivesNewMessageIDs(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	ctx := context.Background()
	var ids []string
	var created []time.Time
	for i := range 2 {
		s, err := e.js.CreateStream(ctx, worker.StreamConfig("CIO"))
		if err != nil {
			t.Fatal(err)
		}
		created = append(created, s.CachedInfo().Created)
		c := &capture{}
		w, err := worker.New(e.js, c, worker.Options{ManageStreams: true, FlushInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(runCtx) }()
		if _, err := e.js.Publish(ctx, "cio.track", []byte(`{"userId":"u-1","event":"E"}`)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the call sent", func() bool { return len(c.got()) == 1 })
		ids = append(ids, c.got()[0])
		if i == 0 {
			// Deleted under the running worker, which then stops with
			// an error (its consumer is gone): a graceful stop would
			// take a second, and the point is to be quicker.
			if err := e.js.DeleteStream(ctx, "CIO"); err != nil {
				t.Fatal(err)
			}
		}
		stop()
		<-done
	}
	t.Logf("streams created %v apart; sequence 1 sent as %q, then %q", created[1].Sub(created[0]), ids[0], ids[1])
	if ids[0] == ids[1] {
		t.Errorf("both incarnations derived messageId %q for sequence 1: Customer.io would drop the second call", ids[0])
	}
}
