package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/worker"
)

// orderedCalls returns n calls over keys persons, each with its per-key
// sequence number in properties.seq (0, 1, …), in publish order; the
// persons' calls are interleaved at random, and a tenth are identifies,
// keyed by anonymousId for some persons.
func orderedCalls(seed uint64, n, keys int) []published {
	r := rand.New(rand.NewPCG(seed, 1))
	next := make([]int, keys)
	msgs := make([]published, 0, n)
	for range n {
		k := r.IntN(keys)
		seq := next[k]
		next[k]++
		idField := "userId"
		if k%7 == 0 {
			idField = "anonymousId"
		}
		subject, body := "cio.track", fmt.Sprintf(`{%q:"p%d","event":"step","properties":{"seq":%d}}`, idField, k, seq)
		if r.IntN(10) == 0 {
			subject, body = "cio.identify", fmt.Sprintf(`{%q:"p%d","traits":{"x":1},"properties":{"seq":%d}}`, idField, k, seq)
		}
		msgs = append(msgs, published{subject: subject, body: []byte(body), key: fmt.Sprintf("p%d/%d", k, seq), valid: true})
	}
	return msgs
}

// orderReport is what checkOrder found in the stand-in's acceptances.
type orderReport struct {
	keys, calls int // distinct keys and calls accepted
	missing     int // published calls never accepted
	violations  int // calls first accepted before an earlier call of their key
	example     string
	exampleKey  string
}

// checkOrder reads each key's first acceptances, in the order the stand-in
// answered them, and counts calls first accepted while an earlier call of
// their key had not been: the guarantee is that there are none. A
// duplicate accepted again later is allowed.
func checkOrder(t *testing.T, delivered []ciotest.Call, msgs []published) orderReport {
	t.Helper()
	want := map[string]int{} // key → calls published
	for _, m := range msgs {
		var c struct {
			UserID, AnonymousID string
		}
		if err := json.Unmarshal(m.body, &c); err != nil {
			t.Fatal(err)
		}
		want[c.UserID+c.AnonymousID]++
	}
	firstSeen := map[string]map[int]bool{}
	highest := map[string]int{} // highest seq first-accepted so far
	var rep orderReport
	for _, call := range delivered {
		var c struct {
			UserID      string `json:"userId"`
			AnonymousID string `json:"anonymousId"`
			Properties  struct {
				Seq *int `json:"seq"`
			} `json:"properties"`
		}
		if err := json.Unmarshal(call.Raw, &c); err != nil || c.Properties.Seq == nil {
			t.Fatalf("accepted call without properties.seq: %s (%v)", call.Raw, err)
		}
		key, seq := c.UserID+c.AnonymousID, *c.Properties.Seq
		seen := firstSeen[key]
		if seen == nil {
			seen = map[int]bool{}
			firstSeen[key] = seen
			highest[key] = -1
		}
		if seen[seq] {
			continue // a duplicate: Customer.io de-duplicates by messageId
		}
		seen[seq] = true
		rep.calls++
		if seq != highest[key]+1 {
			rep.violations++
			if rep.example == "" {
				rep.example = fmt.Sprintf("key %s: seq %d first accepted after seq %d", key, seq, highest[key])
				rep.exampleKey = key
			}
		}
		highest[key] = max(highest[key], seq)
	}
	rep.keys = len(firstSeen)
	for key, n := range want {
		rep.missing += n - len(firstSeen[key])
	}
	return rep
}

// carriesFirstCall reports whether a CDP batch body carries the call m
// (matched by its person and properties.seq).
func carriesFirstCall(body []byte, m published) bool {
	type call struct {
		UserID      string `json:"userId"`
		AnonymousID string `json:"anonymousId"`
		Properties  struct {
			Seq *int `json:"seq"`
		} `json:"properties"`
	}
	var want call
	var b struct{ Batch []call }
	if json.Unmarshal(m.body, &want) != nil || json.Unmarshal(body, &b) != nil {
		return false
	}
	for _, c := range b.Batch {
		if c.UserID == want.UserID && c.AnonymousID == want.AnonymousID && c.Properties.Seq != nil && want.Properties.Seq != nil &&
			*c.Properties.Seq == *want.Properties.Seq {
			return true
		}
	}
	return false
}

// flakyCustomerIO answers a share of requests 5xx and another 429 (with a
// short Retry-After), at random.
func flakyCustomerIO(seed uint64, p5xx, p429 float64) ciotest.Options {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, 2))
	return ciotest.Options{Fault: func(req *ciotest.Request) *ciotest.Fault {
		if req.API != ciotest.APICDP {
			return nil
		}
		mu.Lock()
		x := r.Float64()
		mu.Unlock()
		switch {
		case x < p5xx:
			return &ciotest.Fault{Status: 503}
		case x < p5xx+p429:
			return &ciotest.Fault{Status: 429, RetryAfter: "0"}
		}
		return nil
	}}
}

// orderedOptions: quick failure paths, a short ack wait so a stopped
// replica's messages come back soon, and a retry budget so short that
// batches are nakked and redelivered often.
func orderedOptions(ordering bool) worker.Options {
	o := fastOptions()
	o.Ordering = ordering
	o.AckWait = 2 * time.Second
	o.RetryMaxElapsed = 30 * time.Millisecond
	o.NakDelay = 20 * time.Millisecond
	o.MaxDeliver = 1000
	o.BatchMaxCalls = 200
	o.SendConcurrency = 4
	return o
}

// TestOrderingOneReplicaUnderFaults: one replica, four lanes, a stand-in
// that fails 30% of requests with 5xx and 10% with 429: every key's calls
// are first accepted in publish order, and all of them.
func TestOrderingOneReplicaUnderFaults(t *testing.T) {
	msgs := orderedCalls(1, 4000, 200)
	e := newEnv(t, flakyCustomerIO(1, 0.3, 0.1))
	e.runWorker(t, orderedOptions(true), 0)
	e.publishAll(t, msgs)
	waitSettled(t, e.js, 60*time.Second)
	rep := checkOrder(t, e.cio.Delivered(), msgs)
	t.Logf("%+v", rep)
	if rep.missing != 0 || rep.violations != 0 {
		t.Fatalf("ordered: %d calls missing, %d out of order (%s)", rep.missing, rep.violations, rep.example)
	}
	// The delivery lease orders; the consumer needs no priority policy
	// (which would cost JetStream a header per message).
	if got := consumerInfo(t, e.js).Config; got.PriorityPolicy != jetstream.PriorityPolicyNone {
		t.Errorf("the ordered worker created its consumer with priority policy %v", got.PriorityPolicy)
	}
}

// TestUnorderedViolatesOrderUnderFaults is TestOrderingOneReplicaUnderFaults
// with ordering off: the checker must see calls overtake each other, or it
// proves nothing.
func TestUnorderedViolatesOrderUnderFaults(t *testing.T) {
	msgs := orderedCalls(1, 4000, 200)
	// The faults at random, and on top the first requests carrying the
	// stream's first call fail until their batch is nakked: at random
	// alone, a run under the race detector once kept every key's order by
	// chance.
	opts := flakyCustomerIO(1, 0.3, 0.1)
	random, first := opts.Fault, 0
	var mu sync.Mutex
	opts.Fault = func(req *ciotest.Request) *ciotest.Fault {
		if req.API == ciotest.APICDP && carriesFirstCall(req.Body, msgs[0]) {
			mu.Lock()
			first++
			n := first
			mu.Unlock()
			if n <= 5 {
				return &ciotest.Fault{Status: 503}
			}
		}
		return random(req)
	}
	e := newEnv(t, opts)
	// Published before the worker starts: a backlog of full batches, four
	// in flight at once, whatever the machine's speed. Published while it
	// runs, a slow machine (the race detector) can hand it one small
	// batch at a time, which keeps order by accident.
	e.createStream(t)
	e.publishAll(t, msgs)
	e.runWorker(t, orderedOptions(false), 0)
	waitSettled(t, e.js, 60*time.Second)
	rep := checkOrder(t, e.cio.Delivered(), msgs)
	t.Logf("%+v", rep)
	if rep.missing != 0 {
		t.Fatalf("unordered: %d calls missing", rep.missing)
	}
	if rep.violations == 0 {
		t.Fatal("unordered delivery kept every key's order: the scenario does not exercise ordering")
	}
}

// TestOrderingWithOrWithoutThePinnedPolicy: a consumer an earlier version
// pinned (priority policy pinned_client) keeps its policy, and ordered
// delivery goes on with it; an operator removes it once the rollout is over
// (it costs JetStream a header per message), and ordered delivery goes on
// without it: the worker does not put it back.
func TestOrderingWithOrWithoutThePinnedPolicy(t *testing.T) {
	msgs := orderedCalls(3, 2000, 50)
	e := newEnv(t, ciotest.Options{})
	e.createStream(t)
	e.createPinnedConsumer(t, orderedOptions(true).AckWait)
	e.runWorker(t, orderedOptions(true), 0)
	e.publishAll(t, msgs[:1000])
	waitSettled(t, e.js, 30*time.Second)
	if got := consumerInfo(t, e.js).Config; got.PriorityPolicy != jetstream.PriorityPolicyPinned {
		t.Errorf("consumer's policy %v: an earlier version's pin removed", got.PriorityPolicy)
	}

	cfg := consumerInfo(t, e.js).Config
	cfg.PriorityPolicy, cfg.PriorityGroups, cfg.PinnedTTL = jetstream.PriorityPolicyNone, nil, 0
	if _, err := e.js.UpdateConsumer(context.Background(), "CIO", cfg); err != nil {
		t.Fatalf("removing the priority policy: %v", err)
	}
	e.publishAll(t, msgs[1000:])
	waitSettled(t, e.js, 30*time.Second)
	if got := consumerInfo(t, e.js).Config; got.PriorityPolicy != jetstream.PriorityPolicyNone || len(got.PriorityGroups) != 0 {
		t.Errorf("consumer's policy %v groups %v: put back", got.PriorityPolicy, got.PriorityGroups)
	}
	rep := checkOrder(t, e.cio.Delivered(), msgs)
	if rep.missing != 0 || rep.violations != 0 {
		t.Fatalf("%d calls missing, %d out of order (%s)", rep.missing, rep.violations, rep.example)
	}
}

// TestUnorderedReplicaLeavesThePinnedPolicy: a replica with ordering off
// joins ordered ones on a consumer an earlier version pinned (a rolling
// change of RELAY_ORDERING). It must not remove the policy, and must pull
// with the group (a pull without it is refused): every call is delivered.
func TestUnorderedReplicaLeavesThePinnedPolicy(t *testing.T) {
	msgs := orderedCalls(4, 2000, 50)
	e := newEnv(t, ciotest.Options{})
	e.createStream(t)
	e.createPinnedConsumer(t, orderedOptions(true).AckWait)
	e.runWorker(t, orderedOptions(true), 0)
	e.runWorker(t, orderedOptions(false), 0)
	e.publishAll(t, msgs)
	waitSettled(t, e.js, 30*time.Second)
	if got := consumerInfo(t, e.js).Config; got.PriorityPolicy != jetstream.PriorityPolicyPinned || !slices.Contains(got.PriorityGroups, worker.PriorityGroup) {
		t.Errorf("consumer's policy %v groups %v: the unordered replica removed it", got.PriorityPolicy, got.PriorityGroups)
	}
	if rep := checkOrder(t, e.cio.Delivered(), msgs); rep.missing != 0 {
		t.Fatalf("%d calls never delivered", rep.missing)
	}
}

// createStream creates the worker's stream before any worker runs, so a
// test can publish a whole backlog first: a worker that starts on it finds
// it all pending and fills batches, where one consuming while the calls
// trickle in sends what it has once drained (batcher.Call.Drained).
func (e *env) createStream(t *testing.T) {
	t.Helper()
	if _, err := e.js.CreateStream(context.Background(), worker.StreamConfig("CIO")); err != nil {
		t.Fatalf("creating stream: %v", err)
	}
}

// logKeyRequests logs every CDP request that carried a call of key: when
// it arrived, who sent it (sender; nil when unknown), how it was answered,
// and the key's sequence numbers and messageIds in it (the ids name the
// stream sequences), for a reader working out how an order broke. Requests
// are in the order they were answered.
func logKeyRequests(t *testing.T, reqs []ciotest.Request, key string, sender func(ciotest.Request) string) {
	t.Helper()
	for _, r := range reqs {
		var seqs []int
		var ids []string
		raws := make([]json.RawMessage, 0, len(r.Calls))
		for _, c := range r.Calls {
			raws = append(raws, c.Raw)
		}
		if len(raws) == 0 && r.API == ciotest.APICDP {
			// A fault answered it before the stand-in parsed it.
			var b struct{ Batch []json.RawMessage }
			_ = json.Unmarshal(r.Body, &b)
			raws = b.Batch
		}
		for _, raw := range raws {
			var v struct {
				UserID      string            `json:"userId"`
				AnonymousID string            `json:"anonymousId"`
				MessageID   string            `json:"messageId"`
				Properties  struct{ Seq int } `json:"properties"`
			}
			if json.Unmarshal(raw, &v) == nil && v.UserID+v.AnonymousID == key {
				seqs = append(seqs, v.Properties.Seq)
				ids = append(ids, v.MessageID)
			}
		}
		if len(seqs) > 0 {
			from := ""
			if sender != nil {
				from = " from " + sender(r)
			}
			t.Logf("%s%s (%s): %d %s, %d calls, %s seqs %v, ids %v",
				r.Time.Format("15:04:05.000"), from, r.RemoteAddr, r.Status, r.Outcome, len(raws), key, seqs, ids)
		}
	}
}
