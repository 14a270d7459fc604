package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/internal/dlqcli"
	"github.com/cio-relay/cio-relay/worker"
)

// stampCase is one call of TestBacklogKeepsPublishTime and what its
// delivered form must be.
type stampCase struct {
	key     string
	subject string
	body    []byte
	own     bool // carries its own timestamp: delivered byte for byte
	exact   bool // type and messageId present: only a timestamp may be added
	omitted bool // fits 32,000 bytes only without the inserted timestamp
	// replayed: dead-lettered in an outage before the backlog and put back
	// by dlq replay: it must carry its first publish time, not the replay's.
	replayed bool
}

// tsMember is the length of the member the relay inserts,
// `"timestamp":"2026-11-29T01:02:03.456Z",`.
const tsMember = len(`"timestamp":"2026-11-29T01:02:03.456Z",`)

// TestBacklogKeepsPublishTime publishes a backlog while no worker runs, lets
// it wait 3 s, then drains it with two workers and checks, against the
// stand-in's received bodies, that every call published without a
// timestamp carries its JetStream publish time (to the millisecond, and
// within 1 s of the clock at publish, so ≥ 3 s before it reached
// Customer.io), that calls with their own timestamp arrive byte for byte,
// and that at the 32,000-byte edge a call that fits only without the
// inserted timestamp is delivered without one and counted. Part of the
// backlog is replays: calls dead-lettered in an outage before it and put
// back by dlq replay a second later, which must carry the time they were
// first published, not the replay's.
func TestBacklogKeepsPublishTime(t *testing.T) {
	var outage atomic.Bool
	outage.Store(true)
	replayIDs := []string{"replayed-0", "replayed-1", "replayed-2"}
	failing := ciotest.FailCalls(ciotest.Fault{Status: 500}, replayIDs...)
	e := newEnv(t, ciotest.Options{Fault: func(r *ciotest.Request) *ciotest.Fault {
		if !outage.Load() {
			return nil
		}
		return failing(r)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := e.js.CreateStream(ctx, worker.StreamConfig("CIO"))
	if err != nil {
		t.Fatal(err)
	}

	// The outage: a worker that gives up at once dead-letters the calls to
	// be replayed, and stops. The consumer keeps its MaxDeliver of 1; the
	// workers draining the backlog adopt it, and nothing fails for them.
	first := map[string]time.Time{} // replayed call → its first JetStream publish time
	var cases []stampCase
	{
		opts := fastOptions()
		opts.MaxDeliver, opts.NoRetry = 1, true
		_, _, stop := e.launchWorker(t, opts, 0)
		for _, id := range replayIDs {
			body := []byte(`{"type":"track","messageId":"` + id + `","userId":"` + id + `","event":"E"}`)
			ack, err := e.js.Publish(ctx, "cio.track", body)
			if err != nil {
				t.Fatal(err)
			}
			m, err := stream.GetMsg(ctx, ack.Sequence)
			if err != nil {
				t.Fatal(err)
			}
			first[id] = m.Time
			cases = append(cases, stampCase{key: id, subject: "cio.track", body: body, exact: true, replayed: true})
		}
		waitDeadLetters(t, e.js, uint64(len(replayIDs)), 20*time.Second)
		stop()
	}
	outage.Store(false)
	// The outage lasts: the replay is published well after the calls were.
	time.Sleep(time.Until(latest(first).Add(time.Second)))
	c, _, err := dlqcli.Parse([]string{"replay"})
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := c.Run(ctx, dlqcli.Env{JS: e.js, Stdout: &out, Stderr: &errOut}); code != 0 {
		t.Fatalf("dlq replay → %d\n%s%s", code, out.String(), errOut.String())
	}
	replayedAt := map[string]time.Time{} // replayed call → the replay's own publish time
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(deadletter.HeaderReplayOf) == "" {
			continue
		}
		id, ok := event.MessageIDOf(m.Data)
		if !ok {
			t.Fatalf("replay at sequence %d has no messageId: %s", seq, m.Data)
		}
		replayedAt[id] = m.Time
	}
	if len(replayedAt) != len(replayIDs) {
		t.Fatalf("%d replays in the stream, want %d", len(replayedAt), len(replayIDs))
	}

	r := rand.New(rand.NewPCG(10, 3))
	add := func(c stampCase) { cases = append(cases, c) }
	for i := range 200 {
		typ := mix(r)
		key := fmt.Sprintf("ts-%03d", i)
		size := 200 + r.IntN(1800)
		switch i % 4 {
		case 0: // its own timestamp, type and messageId: nothing to insert
			add(stampCase{key: key, subject: typ.Subject(), body: makeCall(r, typ, key, size, true), own: true, exact: true})
		case 1: // type and messageId, no timestamp
			body := withoutTimestamp(t, makeCall(r, typ, key, size, true))
			add(stampCase{key: key, subject: typ.Subject(), body: body, exact: true})
		default: // a bare call: type, messageId and timestamp inserted
			add(stampCase{key: key, subject: typ.Subject(), body: bareCall(r, typ, key, size)})
		}
	}
	// Own timestamps in other forms Customer.io accepts are kept as written.
	for i, ts := range []string{`"2020-02-29T23:59:59.123456+09:30"`, `"2026-11-29T01:02:03Z"`, `"2026-11-29T01:02:03\u002E5-00:00"`} {
		key := fmt.Sprintf("own-%d", i)
		add(stampCase{key: key, subject: "cio.track", own: true,
			body: []byte(`{"userId":"` + key + `", "event":"E", "timestamp":` + ts + `}`)})
	}
	// The 32,000-byte edge, with type and messageId present so only the
	// timestamp is left to insert.
	for _, size := range []int{
		event.MaxCallBytes,                // at the limit: no room
		event.MaxCallBytes - tsMember + 1, // one byte short of room
		event.MaxCallBytes - tsMember,     // exactly room: delivered at 32,000 bytes
	} {
		key := fmt.Sprintf("edge-%d", size)
		body := withoutTimestamp(t, makeCall(r, event.Track, key, size+tsMember, true))
		if len(body) != size {
			t.Fatalf("test bug: %s is %d bytes", key, len(body))
		}
		add(stampCase{key: key, subject: "cio.track", body: body, exact: true, omitted: size > event.MaxCallBytes-tsMember})
	}
	wantOmitted := 0
	for _, c := range cases {
		if c.omitted {
			wantOmitted++
		}
	}

	// Publish, noting the clock around each PubAck and the sequence.
	type stored struct {
		seq    uint64
		before time.Time
		after  time.Time
	}
	pubs := map[string]stored{}
	for _, c := range cases {
		if c.replayed {
			continue // in the stream already, as its replay
		}
		before := time.Now()
		ack, err := e.js.Publish(ctx, c.subject, c.body)
		if err != nil {
			t.Fatalf("publishing %s: %v", c.key, err)
		}
		pubs[c.key] = stored{seq: ack.Sequence, before: before, after: time.Now()}
	}
	lastPublish := time.Now()
	// The backlog's age is the scenario, not a synchronisation: there is
	// nothing to await but the clock.
	time.Sleep(time.Until(lastPublish.Add(3 * time.Second)))

	opts := fastOptions()
	_, reg1 := e.runWorker(t, opts, 0)
	opts.FlushInterval, opts.BatchMaxCalls = 200*time.Millisecond, 50
	_, reg2 := e.runWorker(t, opts, 0)
	if err := e.cio.WaitDelivered(ctx, len(cases)); err != nil {
		t.Fatalf("waiting for %d calls: %v (stats %+v)", len(cases), err, e.cio.Stats())
	}
	waitSettled(t, e.js, 30*time.Second)

	// When each call reached the stand-in.
	arrived := map[string]time.Time{}
	for _, req := range e.cio.Requests() {
		if req.Outcome == ciotest.OutcomeAccepted {
			for _, c := range req.Calls {
				arrived[c.UserID] = req.Time
			}
		}
	}
	byKey := map[string]stampCase{}
	for _, c := range cases {
		byKey[c.key] = c
	}
	seen := map[string]int{}
	var inserted, own, omitted, replayed int
	var minWait time.Duration = -1
	for _, d := range e.cio.Delivered() {
		c, ok := byKey[d.UserID]
		if !ok {
			t.Fatalf("delivered call for unknown user %q", d.UserID)
		}
		seen[c.key]++
		if c.own {
			own++
			if c.exact && string(d.Raw) != string(c.body) {
				t.Errorf("%s: a call with its own timestamp changed:\n got %.200s\nwant %.200s", c.key, d.Raw, c.body)
			}
			if !c.exact && (!strings.HasPrefix(string(d.Raw), `{"type":"track","messageId":"CIO-`) ||
				!strings.HasSuffix(string(d.Raw), ","+string(compact(t, c.body)[1:]))) {
				t.Errorf("%s: a call with its own timestamp changed: %s", c.key, d.Raw)
			}
			continue
		}
		if c.replayed {
			replayed++
			var f struct {
				Timestamp string `json:"timestamp"`
			}
			if err := json.Unmarshal(d.Raw, &f); err != nil {
				t.Fatal(err)
			}
			want := first[c.key].UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000Z07:00")
			if f.Timestamp != want {
				t.Errorf("%s: replayed with timestamp %q; want its first publish time %s, not the replay's %s",
					c.key, f.Timestamp, want, replayedAt[c.key].UTC().Format("2006-01-02T15:04:05.000Z07:00"))
			}
			if gap := replayedAt[c.key].Sub(first[c.key]); gap < time.Second {
				t.Errorf("%s: replayed %v after its first publish; the check needs at least 1s", c.key, gap)
			}
			if wait := arrived[c.key].Sub(first[c.key]); wait < 4*time.Second {
				t.Errorf("%s: arrived %v after its first publish, want ≥ 4s (1s outage, 3s backlog)", c.key, wait)
			}
			if want := `{"timestamp":"` + want + `",` + string(c.body[1:]); string(d.Raw) != want {
				t.Errorf("%s: want the call as published with only the timestamp inserted:\n got %.200s\nwant %.200s", c.key, d.Raw, want)
			}
			continue
		}
		if c.omitted {
			omitted++
			if string(d.Raw) != string(c.body) {
				t.Errorf("%s: at the limit, want the call as published, no timestamp inserted (%d bytes, %d published)", c.key, len(d.Raw), len(c.body))
			}
			continue
		}
		inserted++
		var f struct {
			Timestamp *string `json:"timestamp"`
		}
		if err := json.Unmarshal(d.Raw, &f); err != nil || f.Timestamp == nil {
			t.Errorf("%s: delivered without a timestamp (%v): %.200s", c.key, err, d.Raw)
			continue
		}
		got, err := time.Parse(time.RFC3339, *f.Timestamp)
		if err != nil || *f.Timestamp != got.UTC().Format("2006-01-02T15:04:05.000Z07:00") {
			t.Errorf("%s: timestamp %q, want RFC 3339 in UTC with milliseconds (%v)", c.key, *f.Timestamp, err)
			continue
		}
		p := pubs[c.key]
		msg, err := stream.GetMsg(ctx, p.seq)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(msg.Time.Truncate(time.Millisecond)) {
			t.Errorf("%s: timestamp %v, want its JetStream publish time %v", c.key, got, msg.Time)
		}
		if got.Before(p.before.Add(-time.Second)) || got.After(p.after.Add(time.Second)) {
			t.Errorf("%s: timestamp %v, published between %v and %v", c.key, got, p.before, p.after)
		}
		if wait := arrived[c.key].Sub(got); minWait < 0 || wait < minWait {
			minWait = wait
		}
		if c.exact {
			want := `{"timestamp":"` + *f.Timestamp + `",` + string(c.body[1:])
			if string(d.Raw) != want {
				t.Errorf("%s: want the call as published with only the timestamp inserted:\n got %.200s\nwant %.200s", c.key, d.Raw, want)
			}
			if c.key == fmt.Sprintf("edge-%d", event.MaxCallBytes-tsMember) && len(d.Raw) != event.MaxCallBytes {
				t.Errorf("%s: delivered %d bytes, want exactly %d", c.key, len(d.Raw), event.MaxCallBytes)
			}
		}
	}
	for _, c := range cases {
		if seen[c.key] != 1 {
			t.Errorf("%s delivered %d times, want once", c.key, seen[c.key])
		}
	}
	if minWait < 3*time.Second {
		t.Errorf("the shortest wait from timestamp to arrival was %v; the backlog waited at least 3s", minWait)
	}
	got := metricValue(t, reg1, "cio_relay_timestamp_omitted_total") + metricValue(t, reg2, "cio_relay_timestamp_omitted_total")
	if got != float64(wantOmitted) || omitted != wantOmitted {
		t.Errorf("cio_relay_timestamp_omitted_total = %v and %d delivered without one, want %d", got, omitted, wantOmitted)
	}
	if replayed != len(replayIDs) {
		t.Errorf("%d replayed calls delivered, want %d", replayed, len(replayIDs))
	}
	if n := streamMsgs(t, e.js, "CIO_DLQ"); n != 0 {
		t.Errorf("%d dead letters left, want none: a call is never refused for the timestamp the relay adds, and the replayed ones were taken out", n)
	}
	t.Logf("%d calls after a backlog of %v: %d stamped with their publish time (shortest wait to arrival %v), %d replayed (their replays published %v or more after the calls), %d with their own kept, %d at the limit sent without",
		len(cases), 3*time.Second, inserted, minWait.Round(time.Millisecond), replayed, minGap(first, replayedAt).Round(time.Millisecond), own, omitted)
}

// latest is the latest of the times in m.
func latest(m map[string]time.Time) time.Time {
	var l time.Time
	for _, at := range m {
		if at.After(l) {
			l = at
		}
	}
	return l
}

// minGap is the shortest time from first[k] to then[k] over the keys of first.
func minGap(first, then map[string]time.Time) time.Duration {
	gap := time.Duration(-1)
	for k, at := range first {
		if d := then[k].Sub(at); gap < 0 || d < gap {
			gap = d
		}
	}
	return gap
}

// withoutTimestamp removes the timestamp makeCall writes, keeping the call
// otherwise byte for byte.
func withoutTimestamp(t *testing.T, body []byte) []byte {
	t.Helper()
	const ts = `"timestamp":"2026-11-29T01:02:03.456Z",`
	s := string(body)
	if !strings.Contains(s, ts) {
		t.Fatalf("test bug: no timestamp in %.100s", s)
	}
	return []byte(strings.Replace(s, ts, "", 1))
}

// bareCall is a call of type typ with neither type, messageId nor
// timestamp, for the relay to insert all three.
func bareCall(r *rand.Rand, typ event.Type, key string, size int) []byte {
	s := string(makeCall(r, typ, key, size, true))
	return []byte("{" + s[strings.Index(s, `"userId"`):])
}

// compact is json.Compact for a test.
func compact(t *testing.T, b []byte) []byte {
	t.Helper()
	var c bytes.Buffer
	if err := json.Compact(&c, b); err != nil {
		t.Fatal(err)
	}
	return c.Bytes()
}
