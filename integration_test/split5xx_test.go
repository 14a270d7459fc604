package integration_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// poisonBatch publishes good calls and one poison call, which the stand-in
// answers with fault whenever a request carries it, and runs a worker that
// packs all of them into one batch and gives up on a call after three
// deliveries, with per-person ordering or without. It returns the
// published messages and the poison's id; with ordering, it fails the test
// unless the worker delivered on the ordered path.
func poisonBatch(t *testing.T, good int, fault ciotest.Fault, ordering bool) (*env, []published, string) {
	t.Helper()
	const poisonID = "poison-000"
	e := newEnv(t, ciotest.Options{Fault: ciotest.FailCalls(fault, poisonID)})
	opts := fastOptions()
	opts.Ordering = ordering
	// Every delivery of the calls fits one batch; the flush interval
	// gathers each round of redeliveries into one again.
	opts.BatchMaxCalls, opts.FlushInterval = good+1, 300*time.Millisecond
	opts.MaxDeliver, opts.RetryMaxElapsed = 3, 100*time.Millisecond
	// Published before the worker starts, so the first delivery is one
	// batch (see createStream).
	e.createStream(t)

	r := rand.New(rand.NewPCG(43, 47))
	var msgs []published
	for i := range good + 1 {
		id := fmt.Sprintf("good-%03d", i)
		if i == good/2 {
			id = poisonID
		}
		typ := mix(r)
		msgs = append(msgs, published{subject: typ.Subject(), body: makeCall(r, typ, id, 200+r.IntN(600), true), key: id, valid: id != poisonID})
	}
	e.publishAll(t, msgs)
	_, reg := e.runWorker(t, opts, 0)
	if ordering {
		t.Cleanup(func() { checkDeliveredOrdered(t, reg) })
	}
	return e, msgs, poisonID
}

// TestOne5xxCallDoesNotSinkItsBatch: 50 good calls and one that Customer.io
// answers 500 every time it is sent, all in one batch, MaxDeliver 3. Nakking
// the batch as a group, every delivery fails for all 51 and all 51 end as
// retries_exhausted. After a batch has failed with 5xx on a previous
// delivery it must be split, so the 50 are delivered exactly once and only
// the poison call exhausts its deliveries. The same holds with per-person
// ordering (RELAY_ORDERING, on by default), whose lanes split the calls by
// person and send them through the same deliver.
func TestOne5xxCallDoesNotSinkItsBatch(t *testing.T) {
	for _, ordering := range []bool{false, true} {
		name := "unordered"
		if ordering {
			name = "ordered"
		}
		t.Run(name, func(t *testing.T) { testOne5xxCallDoesNotSinkItsBatch(t, ordering) })
	}
}

func testOne5xxCallDoesNotSinkItsBatch(t *testing.T, ordering bool) {
	const good = 50
	e, msgs, poisonID := poisonBatch(t, good, ciotest.Fault{Status: 500, Body: `{"error":"internal"}`}, ordering)

	waitDeadLetters(t, e.js, 1, 60*time.Second)
	waitSettled(t, e.js, 60*time.Second)
	seen := map[string]int{}
	for _, c := range e.cio.Delivered() {
		seen[c.MessageID]++
	}
	dead := readDLQ(t, e.js)
	reqs := e.cio.Requests()
	t.Logf("%d of %d good calls delivered, %d dead-lettered, in %d requests", len(seen), good, len(dead), len(reqs))
	checkExactlyOnce(t, msgs, seen)
	if len(dead) != 1 {
		t.Errorf("%d dead letters, want only the poison call", len(dead))
	}
	for _, d := range dead {
		var f struct{ MessageID string }
		_ = json.Unmarshal(d.Data, &f)
		if f.MessageID != poisonID || d.Record.Reason != deadletter.ReasonRetriesExhausted || d.Record.Status != 500 || d.Record.Deliveries != 3 {
			t.Errorf("dead letter %s: %s/%d after %d deliveries, want %s retries_exhausted/500 after 3",
				f.MessageID, d.Record.Reason, d.Record.Status, d.Record.Deliveries, poisonID)
		}
	}
	// Delivery 1 retries the whole batch for 100ms; delivery 2 bisects it,
	// two requests per level (6 levels for 51 calls); delivery 3 sends the
	// poison alone. A split that re-sent good calls needlessly shows here.
	if limit := 20 + 2*6 + 20; len(reqs) > limit {
		t.Errorf("%d requests, want at most %d", len(reqs), limit)
	}
}

// TestRateLimitedCallDoesNotSplit: a 429 is Customer.io pacing the client,
// not a bad call: a batch answered 429 on every delivery is never split,
// whatever its delivery count. Each request carries the whole batch.
func TestRateLimitedCallDoesNotSplit(t *testing.T) {
	const good = 20
	e, msgs, _ := poisonBatch(t, good, ciotest.Fault{Status: 429}, false)

	waitDeadLetters(t, e.js, uint64(len(msgs)), 60*time.Second)
	waitSettled(t, e.js, 60*time.Second)
	for i, r := range e.cio.Requests() {
		var b struct{ Batch []json.RawMessage }
		if err := json.Unmarshal(r.Body, &b); err != nil || len(b.Batch) != len(msgs) {
			t.Fatalf("request %d carried %d calls (%v), want the whole batch of %d: a 429 split it", i, len(b.Batch), err, len(msgs))
		}
	}
	for _, d := range readDLQ(t, e.js) {
		if d.Record.Reason != deadletter.ReasonRetriesExhausted || d.Record.Status != 429 {
			t.Errorf("dead letter %s/%d, want retries_exhausted/429", d.Record.Reason, d.Record.Status)
		}
	}
	if n := len(e.cio.Delivered()); n != 0 {
		t.Errorf("%d calls delivered, want none", n)
	}
}

// TestOutageSplitsBounded: when every request fails with 503 (an outage,
// not a bad call) the split after a failed delivery must not turn into a
// request for every call: a half is split further only while part of the
// batch goes through, besides one probe down the first failing half.
func TestOutageSplitsBounded(t *testing.T) {
	const n = 64
	e := newEnv(t, ciotest.Options{Fault: func(r *ciotest.Request) *ciotest.Fault {
		if r.API == ciotest.APICDP {
			return &ciotest.Fault{Status: 503}
		}
		return nil
	}})
	opts := fastOptions()
	opts.BatchMaxCalls, opts.FlushInterval = n, 300*time.Millisecond
	opts.MaxDeliver, opts.NoRetry = 3, true
	// Published before the worker starts, so the first delivery is one
	// batch (see createStream): a worker already running would send the
	// calls as they come, once the consumer has nothing pending.
	e.createStream(t)
	r := rand.New(rand.NewPCG(53, 59))
	var msgs []published
	for i := range n {
		id := fmt.Sprintf("outage-%03d", i)
		typ := mix(r)
		msgs = append(msgs, published{subject: typ.Subject(), body: makeCall(r, typ, id, 200+r.IntN(300), true), key: id, valid: true})
	}
	e.publishAll(t, msgs)
	e.runWorker(t, opts, 0)
	waitDeadLetters(t, e.js, n, 60*time.Second)
	waitSettled(t, e.js, 60*time.Second)
	reqs := len(e.cio.Requests())
	// One request on delivery 1; on deliveries 2 and 3 the batch, then two
	// requests per level of the one probe (6 levels for 64 calls).
	limit := 1 + 2*(1+2*6)
	t.Logf("%d calls through an outage, MaxDeliver 3: %d requests (limit %d)", n, reqs, limit)
	if reqs > limit {
		t.Errorf("%d requests during an outage, want at most %d", reqs, limit)
	}
	for _, d := range readDLQ(t, e.js) {
		if d.Record.Reason != deadletter.ReasonRetriesExhausted {
			t.Errorf("dead letter %s, want retries_exhausted", d.Record.Reason)
		}
	}
}
