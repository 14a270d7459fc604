package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/internal/dlqcli"
)

// TestReplayedCallKeepsItsFirstPublishTime: calls without a timestamp
// that Customer.io fails (a 500 every time) are dead-lettered; two seconds
// later the outage is over and `dlq replay` puts them back. Customer.io
// must record each at the time it was first published, to the
// millisecond, not at the replay's publish time: the call happened then.
func TestReplayedCallKeepsItsFirstPublishTime(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	const n = 3
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("replay-time-%d", i))
	}
	poison := ciotest.FailCalls(ciotest.Fault{Status: 500}, ids...)
	e := newEnv(t, ciotest.Options{Fault: func(r *ciotest.Request) *ciotest.Fault {
		if !failing.Load() {
			return nil
		}
		return poison(r)
	}})
	opts := fastOptions()
	opts.MaxDeliver, opts.NoRetry = 1, true
	e.runWorker(t, opts, 0)

	var msgs []published
	for _, id := range ids {
		msgs = append(msgs, published{subject: "cio.track", key: id, valid: true,
			body: []byte(`{"messageId":"` + id + `","userId":"u-` + id + `","event":"E"}`)})
	}
	e.publishAll(t, msgs)
	cio, err := e.js.Stream(context.Background(), "CIO")
	if err != nil {
		t.Fatal(err)
	}
	first := map[string]time.Time{} // messageId → JetStream publish time
	for seq := uint64(1); seq <= n; seq++ {
		m, err := cio.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var c struct{ MessageID string }
		if err := json.Unmarshal(m.Data, &c); err != nil {
			t.Fatal(err)
		}
		first[c.MessageID] = m.Time
	}
	waitDeadLetters(t, e.js, n, 20*time.Second)
	// The outage lasts: the replay is published well after the calls were.
	time.Sleep(2 * time.Second)
	failing.Store(false)

	c, _, err := dlqcli.Parse([]string{"replay"})
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := c.Run(context.Background(), dlqcli.Env{JS: e.js, Stdout: &out, Stderr: &errOut}); code != 0 {
		t.Fatalf("dlq replay → %d\n%s%s", code, out.String(), errOut.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, n); err != nil {
		t.Fatal(err)
	}
	for _, d := range e.cio.Delivered() {
		var f struct {
			MessageID string `json:"messageId"`
			Timestamp string `json:"timestamp"`
		}
		if err := json.Unmarshal(d.Raw, &f); err != nil {
			t.Fatal(err)
		}
		at, ok := first[f.MessageID]
		if !ok {
			t.Errorf("delivered a call nobody published: %s", d.Raw)
			continue
		}
		want := at.UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000Z07:00")
		t.Logf("%s: first published %s, delivered after replay with timestamp %s", f.MessageID, want, f.Timestamp)
		if f.Timestamp != want {
			t.Errorf("%s: replayed with timestamp %q; want its first publish time %s", f.MessageID, f.Timestamp, want)
		}
	}
	if dead := streamMsgs(t, e.js, "CIO_DLQ"); dead != 0 {
		t.Errorf("%d messages left in CIO_DLQ after the replay, want none", dead)
	}
}
