package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/worker"
)

// outcome is how a call's delivery must end in TestFailureOutcomes.
type outcome int

const (
	outDelivered outcome = iota // delivered once, after the faults
	outPaused                   // held, nothing dead-lettered, until the fault is lifted; then delivered once
	outRejected                 // dead-lettered as rejected after one request
	outExhausted                // dead-lettered as retries_exhausted after MaxDeliver deliveries
)

// TestFailureOutcomes sends one call through each answer Customer.io can
// give and checks what the worker does about it (README, "When things go
// wrong"): what the stand-in saw, what reached the dead-letter stream with
// which headers, the consumer's end state and the worker's metrics.
func TestFailureOutcomes(t *testing.T) {
	// Longer than the 512 bytes sink keeps, and with a newline, which a
	// header value cannot carry.
	longBody := `{"errors":[{"message":"call rejected"}]}` + "\n" + strings.Repeat("more detail ", 120)
	first := func(fs ...*ciotest.Fault) []*ciotest.Fault { return fs }
	tests := []struct {
		name          string
		first         []*ciotest.Fault // answers to the first requests, in order
		hold          *ciotest.Fault   // answer to every request until released
		clientTimeout time.Duration
		opts          func(*worker.Options)
		want          outcome
		wantStatuses  []int         // every CDP request's status, in order; not for outPaused
		retry         string        // the reason of the one retry expected; "" for none
		minGap        time.Duration // least time between the first two requests
	}{
		{name: "200", want: outDelivered, wantStatuses: []int{200}},
		{name: "429 Retry-After then 200", first: first(&ciotest.Fault{Status: 429, RetryAfter: "1"}),
			want: outDelivered, wantStatuses: []int{429, 200}, retry: "status_429", minGap: time.Second},
		{name: "500 then 200", first: first(&ciotest.Fault{Status: 500}),
			want: outDelivered, wantStatuses: []int{500, 200}, retry: "status_5xx"},
		{name: "502 then 200", first: first(&ciotest.Fault{Status: 502}),
			want: outDelivered, wantStatuses: []int{502, 200}, retry: "status_5xx"},
		{name: "503 then 200", first: first(&ciotest.Fault{Status: 503, Body: `{"error":"unavailable"}`}),
			want: outDelivered, wantStatuses: []int{503, 200}, retry: "status_5xx"},
		{name: "408 then 200", first: first(&ciotest.Fault{Status: 408}),
			want: outDelivered, wantStatuses: []int{408, 200}, retry: "status_408"},
		{name: "connection reset then 200", first: first(&ciotest.Fault{Reset: true}),
			want: outDelivered, wantStatuses: []int{0, 200}, retry: "transport"},
		// The stand-in records the status it would have answered (500);
		// the client gave up after its 1s timeout, before any answer.
		{name: "timeout then 200", first: first(&ciotest.Fault{Delay: time.Minute}), clientTimeout: time.Second,
			want: outDelivered, wantStatuses: []int{500, 200}, retry: "transport", minGap: time.Second},
		{name: "401 pauses", hold: &ciotest.Fault{Status: 401, Body: `{"error":"unauthorized"}`}, want: outPaused},
		{name: "403 pauses", hold: &ciotest.Fault{Status: 403}, want: outPaused},
		{name: "404 pauses", hold: &ciotest.Fault{Status: 404}, want: outPaused},
		{name: "405 pauses", hold: &ciotest.Fault{Status: 405}, want: outPaused},
		{name: "400 dead-letters", hold: &ciotest.Fault{Status: 400, Body: longBody}, want: outRejected, wantStatuses: []int{400}},
		{name: "422 dead-letters", hold: &ciotest.Fault{Status: 422, Body: longBody}, want: outRejected, wantStatuses: []int{422}},
		{name: "413 dead-letters", hold: &ciotest.Fault{Status: 413, Body: longBody}, want: outRejected, wantStatuses: []int{413}},
		{name: "persistent 503 exhausts MaxDeliver", hold: &ciotest.Fault{Status: 503},
			opts: func(o *worker.Options) { o.MaxDeliver, o.NoRetry = 2, true },
			want: outExhausted, wantStatuses: []int{503, 503}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			script := &faultScript{first: tt.first, hold: tt.hold}
			e := newEnv(t, ciotest.Options{Fault: script.fault})
			opts := fastOptions()
			if tt.want == outPaused {
				// Short, so that a pause longer than it shows the held
				// message's deadline is kept alive.
				opts.AckWait = 1500 * time.Millisecond
			}
			if tt.opts != nil {
				tt.opts(&opts)
			}
			w, reg := e.runWorker(t, opts, tt.clientTimeout)

			const id = "outcome-call-1"
			body := makeCall(rand.New(rand.NewPCG(3, 5)), event.Track, id, 400, true)
			e.publishAll(t, []published{{subject: "cio.track", body: body, key: id, valid: true}})

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			switch tt.want {
			case outDelivered:
				if err := e.cio.WaitDelivered(ctx, 1); err != nil {
					t.Fatalf("%v; requests %v", err, statuses(e.cio.Requests()))
				}
				waitSettled(t, e.js, 10*time.Second)

			case outPaused:
				// 40 probes 50ms apart take longer than the 1.5s ack wait.
				waitFor(t, 20*time.Second, "40 probes", func() bool { return e.cio.Stats().ByStatus[tt.hold.Status] >= 40 })
				if got := metricValue(t, reg, "cio_relay_auth_paused", "api", "cdp"); got != 1 {
					t.Errorf("cio_relay_auth_paused{api=cdp} = %v while paused, want 1", got)
				}
				if ok, why := w.Ready(); ok || !strings.Contains(why, "paused") || !strings.Contains(why, strconv.Itoa(tt.hold.Status)) {
					t.Errorf("Ready() = %v, %q while paused; want false, naming the pause and the status", ok, why)
				}
				info := consumerInfo(t, e.js)
				if info.NumAckPending != 1 || info.NumRedelivered != 0 || info.Delivered.Consumer != 1 {
					t.Errorf("while paused: ack pending %d, redelivered %d, delivered %d; want the one message held (1, 0, 1)",
						info.NumAckPending, info.NumRedelivered, info.Delivered.Consumer)
				}
				if n := streamMsgs(t, e.js, "CIO_DLQ"); n != 0 {
					t.Errorf("%d dead letters while paused, want none", n)
				}
				if n := len(e.cio.Delivered()); n != 0 {
					t.Errorf("%d calls delivered while answering %d", n, tt.hold.Status)
				}

				script.release()
				if err := e.cio.WaitDelivered(ctx, 1); err != nil {
					t.Fatalf("after the fix: %v", err)
				}
				waitSettled(t, e.js, 10*time.Second)
				if got := metricValue(t, reg, "cio_relay_auth_paused", "api", "cdp"); got != 0 {
					t.Errorf("cio_relay_auth_paused{api=cdp} = %v after the fix, want 0", got)
				}
				if ok, why := w.Ready(); !ok {
					t.Errorf("Ready() = false, %q after the fix", why)
				}

			case outRejected, outExhausted:
				waitDeadLetters(t, e.js, 1, 20*time.Second)
				waitSettled(t, e.js, 10*time.Second)
			}

			reqs := e.cio.Requests()
			if tt.wantStatuses != nil && !slices.Equal(statuses(reqs), tt.wantStatuses) {
				t.Errorf("request statuses %v, want %v", statuses(reqs), tt.wantStatuses)
			}
			if tt.minGap > 0 && len(reqs) >= 2 {
				if gap := reqs[1].Time.Sub(reqs[0].Time); gap < tt.minGap {
					t.Errorf("retried after %v, want at least %v", gap, tt.minGap)
				}
			}

			delivered := e.cio.Delivered()
			dead := readDLQ(t, e.js)
			switch tt.want {
			case outDelivered, outPaused:
				if len(delivered) != 1 || !bytes.Equal(delivered[0].Raw, body) {
					t.Errorf("delivered %d calls, want exactly the one published", len(delivered))
				}
				if len(dead) != 0 {
					t.Errorf("%d dead letters, want none: %+v", len(dead), dead[0].Record)
				}
				if got := metricValue(t, reg, "cio_relay_calls_delivered_total", "type", "track"); got != 1 {
					t.Errorf("cio_relay_calls_delivered_total{type=track} = %v, want 1", got)
				}
			case outRejected, outExhausted:
				if len(delivered) != 0 {
					t.Errorf("%d calls delivered, want none", len(delivered))
				}
				if len(dead) != 1 {
					t.Fatalf("%d dead letters, want 1", len(dead))
				}
				checkDeadLetter(t, dead[0], body, id)
				r := dead[0].Record
				status := tt.hold.Status
				if got := dead[0].Header.Get(deadletter.HeaderStatus); got != strconv.Itoa(status) {
					t.Errorf("%s = %q, want %d", deadletter.HeaderStatus, got, status)
				}
				if !strings.Contains(r.Detail, strconv.Itoa(status)) || !oneLine(r.Detail) || len(r.Detail) > 1024+len("…") {
					t.Errorf("%s = %q: want one bounded line naming the status", deadletter.HeaderError, r.Detail)
				}
				reason, deliveries := deadletter.ReasonRejected, uint64(1)
				if tt.want == outExhausted {
					reason, deliveries = deadletter.ReasonRetriesExhausted, 2
					if !strings.Contains(r.Detail, "delivery 2 of 2") {
						t.Errorf("%s = %q, want it to say delivery 2 of 2", deadletter.HeaderError, r.Detail)
					}
				} else {
					// The response body, trimmed by the sink: its start is
					// kept, its newline flattened, its end cut.
					if !strings.Contains(r.Detail, `{"errors":[{"message":"call rejected"}]} more detail`) || !strings.HasSuffix(r.Detail, "…") ||
						len(r.Detail) > 600 {
						t.Errorf("%s = %q (%d bytes): want the response body, trimmed", deadletter.HeaderError, r.Detail, len(r.Detail))
					}
				}
				if r.Reason != reason || r.Deliveries != deliveries {
					t.Errorf("reason %q after %d deliveries, want %q after %d", r.Reason, r.Deliveries, reason, deliveries)
				}
				if got := metricValue(t, reg, "cio_relay_dead_letters_total", "reason", string(reason)); got != 1 {
					t.Errorf("cio_relay_dead_letters_total{reason=%s} = %v, want 1", reason, got)
				}
			}
			if got := metricValue(t, reg, "cio_relay_dead_letters_total"); got != float64(len(dead)) {
				t.Errorf("cio_relay_dead_letters_total = %v, dead-letter stream holds %d", got, len(dead))
			}
			wantRetries := 0.0
			if tt.retry != "" {
				wantRetries = 1
				if got := metricValue(t, reg, "cio_relay_retries_total", "reason", tt.retry); got != 1 {
					t.Errorf("cio_relay_retries_total{reason=%s} = %v, want 1", tt.retry, got)
				}
			}
			if got := metricValue(t, reg, "cio_relay_retries_total"); got != wantRetries {
				t.Errorf("cio_relay_retries_total = %v over all reasons, want %v", got, wantRetries)
			}
		})
	}
}

// checkDeadLetter checks what every dead letter of a call published on
// cio.track as the stream's first message must carry: the original body byte
// for byte under dlq.cio.track, where it came from, and the messageId it
// was (or would have been) sent with.
func checkDeadLetter(t *testing.T, d dlqEntry, body []byte, messageID string) {
	t.Helper()
	r := d.Record
	if d.Subject != "dlq.cio.track" {
		t.Errorf("dead letter subject %q, want dlq.cio.track", d.Subject)
	}
	if !bytes.Equal(d.Data, body) {
		t.Errorf("dead letter body differs from the published one:\n got %q\nwant %q", d.Data, body)
	}
	if r.Stream != "CIO" || r.StreamSeq != 1 {
		t.Errorf("dead letter from %s/%d, want CIO/1", r.Stream, r.StreamSeq)
	}
	if r.MessageID != messageID {
		t.Errorf("%s = %q, want %q, the messageId the call was sent with", deadletter.HeaderMessageID, r.MessageID, messageID)
	}
	if r.FirstSeen.IsZero() || r.DeadLettered.Before(r.FirstSeen) || time.Since(r.DeadLettered) > time.Minute {
		t.Errorf("first seen %v, dead-lettered %v: want both set, in order, recent", r.FirstSeen, r.DeadLettered)
	}
	if r.Version == "" {
		t.Errorf("no %s", deadletter.HeaderVersion)
	}
}

// TestBisectIsolatesBadCalls sends one batch of 200 calls, 7 of which
// Customer.io rejects: the stand-in answers 400 to any request holding one
// of them. Splitting must deliver the 193 good calls once each and
// dead-letter exactly the 7 bad ones, as rejected.
func TestBisectIsolatesBadCalls(t *testing.T) {
	const n = 200
	r := rand.New(rand.NewPCG(17, 19))
	bad := map[string]bool{}
	for _, i := range r.Perm(n)[:7] {
		bad[fmt.Sprintf("bisect-%03d", i)] = true
	}
	e := newEnv(t, ciotest.Options{Fault: func(req *ciotest.Request) *ciotest.Fault {
		for id := range bad {
			if bytes.Contains(req.Body, []byte(`"messageId":"`+id+`"`)) {
				return &ciotest.Fault{Status: 400, Body: `{"error":"bad call"}`}
			}
		}
		return nil
	}})
	// The batch closes at 200 calls, long before its flush interval: all
	// 200 travel in the first request.
	// Published before the worker starts, so none of them is read as the
	// last of a drained stream.
	opts := fastOptions()
	opts.BatchMaxCalls, opts.FlushInterval = n, 10*time.Second
	e.createStream(t)

	var msgs []published
	for i := range n {
		id := fmt.Sprintf("bisect-%03d", i)
		typ := mix(r)
		msgs = append(msgs, published{subject: typ.Subject(), body: makeCall(r, typ, id, 200+r.IntN(800), true), key: id, valid: !bad[id]})
	}
	e.publishAll(t, msgs)
	_, reg := e.runWorker(t, opts, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, n-len(bad)); err != nil {
		t.Fatal(err)
	}
	waitDeadLetters(t, e.js, uint64(len(bad)), 30*time.Second)
	waitSettled(t, e.js, 30*time.Second)

	reqs := e.cio.Requests()
	var firstBatch struct{ Batch []json.RawMessage }
	if err := json.Unmarshal(reqs[0].Body, &firstBatch); err != nil || len(firstBatch.Batch) != n {
		t.Fatalf("first request carried %d calls (%v), want all %d", len(firstBatch.Batch), err, n)
	}
	seen := map[string]int{}
	for _, c := range e.cio.Delivered() {
		seen[c.MessageID]++
	}
	checkExactlyOnce(t, msgs, seen)
	if len(seen) != n-len(bad) {
		t.Errorf("%d distinct calls delivered, want %d", len(seen), n-len(bad))
	}

	byKey := map[string]published{}
	for _, m := range msgs {
		byKey[m.key] = m
	}
	dead := readDLQ(t, e.js)
	if len(dead) != len(bad) {
		t.Errorf("%d dead letters, want %d", len(dead), len(bad))
	}
	for _, d := range dead {
		var f struct{ MessageID string }
		_ = json.Unmarshal(d.Data, &f)
		m := byKey[f.MessageID]
		switch {
		case !bad[f.MessageID]:
			t.Errorf("good call %q dead-lettered (%s)", f.MessageID, d.Record.Reason)
		case d.Record.Reason != deadletter.ReasonRejected || d.Record.Status != 400:
			t.Errorf("bad call %s dead-lettered as %s/%d, want rejected/400", f.MessageID, d.Record.Reason, d.Record.Status)
		case !bytes.Equal(d.Data, m.body) || d.Subject != "dlq."+m.subject:
			t.Errorf("bad call %s: dead letter %s %q differs from the published %s %q", f.MessageID, d.Subject, d.Data, m.subject, m.body)
		}
	}
	if got := metricValue(t, reg, "cio_relay_dead_letters_total", "reason", "rejected"); got != float64(len(bad)) {
		t.Errorf("cio_relay_dead_letters_total{reason=rejected} = %v, want %d", got, len(bad))
	}
	// Each bad call costs at most two requests per level of the split tree
	// (8 levels for 200 calls); a split that resent good calls needlessly
	// would show here.
	if limit := 1 + 2*len(bad)*8; len(reqs) > limit {
		t.Errorf("%d requests to isolate %d bad calls among %d, want at most %d", len(reqs), len(bad), n, limit)
	}
	t.Logf("isolated %d bad calls among %d in %d requests (%v batches split)", len(bad), n, len(reqs),
		metricValue(t, reg, "cio_relay_batches_total", "outcome", "split"))
}
