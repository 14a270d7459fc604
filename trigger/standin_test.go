package trigger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/trigger"
)

const appKey = "app-key"

// clock is a fake time shared by the stand-in (which reads it from its
// handlers) and the test loop.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

func newApp(t *testing.T, s *ciotest.Server) *sink.App {
	t.Helper()
	a, err := sink.NewApp(sink.AppOptions{
		URL:       s.AppURL(),
		APIKey:    func() string { return appKey },
		UserAgent: "cio-relay/test",
		Client:    sink.NewHTTPClient(4, 5*time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// arrival is a trigger published at a time.
type arrival struct {
	at   time.Time
	body string
}

// outcome is what the driver saw for one released request.
type outcome struct {
	batch     *trigger.Batch[int]
	triggerID int64
	err       error
}

// drive does what the worker does with a Pacer, on the fake clock: it adds
// triggers as they arrive, sends what Ready releases (concurrently, one
// goroutine per request, joined before the clock moves), acks on 2xx
// (Done), and after a retryable failure honours Retry-After (Defer) and
// puts the triggers back (Retry). It returns every outcome in order.
func drive(t *testing.T, p *trigger.Pacer[int], app *sink.App, clk *clock, arrivals []arrival) []outcome {
	t.Helper()
	ctx := context.Background()
	var all []outcome
	next := 0
	for steps := 0; next < len(arrivals) || p.Len() > 0; steps++ {
		if steps > 10*len(arrivals)+10 {
			t.Fatalf("no progress: %d pending", p.Len())
		}
		now := clk.Now()
		for next < len(arrivals) && !arrivals[next].at.After(now) {
			req, err := trigger.Parse([]byte(arrivals[next].body))
			if err != nil {
				t.Fatalf("arrival %d: %v", next, err)
			}
			if err := p.Add(req, next); err != nil {
				t.Fatalf("arrival %d: %v", next, err)
			}
			next++
		}
		batches := p.Ready(now)
		results := make([]outcome, len(batches))
		var wg sync.WaitGroup
		for i, b := range batches {
			wg.Go(func() {
				id, err := app.Trigger(ctx, b.BroadcastID, b.Body)
				results[i] = outcome{b, id, err}
			})
		}
		wg.Wait()
		for _, r := range results {
			answered := clk.Now()
			var se *sink.StatusError
			switch {
			case r.err == nil:
				p.Done(r.batch, answered)
			case sink.IsRetryable(r.err):
				if errors.As(r.err, &se) && se.RetryAfter > 0 {
					p.Defer(r.batch.BroadcastID, answered.Add(se.RetryAfter))
				}
				p.Retry(r.batch, answered)
			case sink.Classify(r.err) == sink.Reject:
				// As the worker does: halves back to the pacer; a trigger
				// rejected alone is given up on (dead-lettered).
				if !p.Split(r.batch, answered) {
					p.Done(r.batch, answered)
				}
			default:
				t.Fatalf("broadcast %d: %v", r.batch.BroadcastID, r.err)
			}
		}
		all = append(all, results...)

		wake, ok := p.Next()
		if next < len(arrivals) && (!ok || arrivals[next].at.Before(wake)) {
			wake, ok = arrivals[next].at, true
		}
		if !ok {
			break
		}
		clk.Set(wake)
	}
	return all
}

// TestPacerAgainstStandIn sends 50 triggers for 3 broadcasts, published
// every 250 ms, through a Pacer and the App client to the stand-in, which
// answers 429 to a second trigger of a broadcast within 10 s.
func TestPacerAgainstStandIn(t *testing.T) {
	clk := &clock{now: t0}
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: appKey, Now: clk.Now})
	p := newPacer(t, trigger.PacerOptions{})

	broadcasts := []int64{7, 8, 9}
	var arrivals []arrival
	for i := range 50 {
		b := broadcasts[i%3]
		var body string
		switch {
		case i == 10:
			body = fmt.Sprintf(`{"broadcast_id":%d,"recipients":{"segment":{"id":1}}}`, b)
		case i == 20:
			body = fmt.Sprintf(`{"broadcast_id":%d,"data_file_url":"https://files.example/%d.ndjson"}`, b, i)
		case i == 30:
			body = fmt.Sprintf(`{"broadcast_id":%d,"ids":["alone"]}`, b) // no id_ignore_missing
		case i%5 == 4:
			body = fmt.Sprintf(`{"broadcast_id":%d,"per_user_data":[{"id":"p%d","data":{"n":%d}}],"id_ignore_missing":true}`, b, i%4, i)
		default:
			body = fmt.Sprintf(`{"broadcast_id":%d,"ids":["u%d","u%d"],"data":{"v":%d},"id_ignore_missing":true}`, b, i%9, (i+3)%9, i%2)
		}
		arrivals = append(arrivals, arrival{t0.Add(time.Duration(i) * 250 * time.Millisecond), body})
	}

	outcomes := drive(t, p, newApp(t, s), clk, arrivals)

	st := s.Stats()
	if st.RateLimited != 0 || st.ByOutcome[ciotest.OutcomeAccepted] != st.Requests {
		t.Errorf("stand-in saw %d requests: %v, %d rate limited", st.Requests, st.ByOutcome, st.RateLimited)
	}
	triggers := s.Triggers()
	if len(triggers) != len(outcomes) {
		t.Fatalf("%d triggers accepted for %d requests sent", len(triggers), len(outcomes))
	}
	// No broadcast was triggered twice within 10 s, by the stand-in's clock.
	last := make(map[int64]time.Time)
	for _, tr := range triggers {
		if prev, ok := last[tr.BroadcastID]; ok && tr.Time.Sub(prev) < ciotest.BroadcastInterval {
			t.Errorf("broadcast %d triggered at +%v and +%v", tr.BroadcastID, prev.Sub(t0), tr.Time.Sub(t0))
		}
		last[tr.BroadcastID] = tr.Time
	}
	// Every trigger went exactly once, and each answer's id was read.
	covered := make(map[int]int)
	byID := make(map[int64]ciotest.Trigger)
	for _, tr := range triggers {
		byID[tr.TriggerID] = tr
	}
	for _, o := range outcomes {
		if o.err != nil {
			t.Errorf("broadcast %d: %v", o.batch.BroadcastID, o.err)
			continue
		}
		tr, ok := byID[o.triggerID]
		if !ok || tr.BroadcastID != o.batch.BroadcastID || string(tr.Body) != string(o.batch.Body) {
			t.Errorf("trigger id %d does not match the request for broadcast %d", o.triggerID, o.batch.BroadcastID)
		}
		for _, it := range o.batch.Items {
			covered[it]++
		}
	}
	for i := range arrivals {
		if covered[i] != 1 {
			t.Errorf("trigger %d sent %d times: %s", i, covered[i], arrivals[i].body)
		}
	}
	if len(triggers) >= len(arrivals)/2 {
		t.Errorf("%d requests for %d triggers: coalescing did little", len(triggers), len(arrivals))
	}
	t.Logf("%d triggers sent in %d requests over %v", len(arrivals), len(triggers), clk.Now().Sub(t0))
}

// TestPacerHonoursRetryAfter: another sender triggered broadcast 7 just
// before the relay did, so the relay's first request is answered 429; the
// Pacer waits as Retry-After says and the trigger goes through once. A 503
// afterwards is retried on the next interval.
func TestPacerHonoursRetryAfter(t *testing.T) {
	clk := &clock{now: t0}
	var mu sync.Mutex
	fail503 := false
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: appKey, Now: clk.Now,
		Fault: func(r *ciotest.Request) *ciotest.Fault {
			mu.Lock()
			defer mu.Unlock()
			if fail503 {
				fail503 = false
				return &ciotest.Fault{Status: http.StatusServiceUnavailable}
			}
			return nil
		}})
	app := newApp(t, s)
	if _, err := app.Trigger(context.Background(), 7, []byte(`{"ids":["other"]}`)); err != nil {
		t.Fatal(err)
	}
	clk.Set(t0.Add(3 * time.Second))
	p := newPacer(t, trigger.PacerOptions{})
	outcomes := drive(t, p, app, clk, []arrival{
		{t0.Add(3 * time.Second), `{"broadcast_id":7,"ids":["a"],"id_ignore_missing":true}`},
	})
	var se *sink.StatusError
	if len(outcomes) != 2 || !errors.As(outcomes[0].err, &se) || se.Status != 429 || se.RetryAfter != 7*time.Second || outcomes[1].err != nil {
		t.Fatalf("outcomes %+v; want a 429 with Retry-After 7s, then success", outcomes)
	}
	tr := s.Triggers()
	if len(tr) != 2 || !tr[1].Time.Equal(t0.Add(13*time.Second)) {
		t.Fatalf("triggers %+v; want the relay's at +13s (Interval after the 429 at +3s)", tr)
	}

	mu.Lock()
	fail503 = true
	mu.Unlock()
	start := clk.Now().Add(20 * time.Second)
	clk.Set(start)
	outcomes = drive(t, p, app, clk, []arrival{{start, `{"broadcast_id":7,"ids":["b"],"id_ignore_missing":true}`}})
	if len(outcomes) != 2 || !sink.IsRetryable(outcomes[0].err) || outcomes[1].err != nil {
		t.Fatalf("outcomes %+v; want a 503, then success", outcomes)
	}
	if got := s.Triggers(); len(got) != 3 || !got[2].Time.Equal(start.Add(trigger.Interval)) {
		t.Fatalf("retry after 503 at %v, want +%v", got[len(got)-1].Time.Sub(start), trigger.Interval)
	}
	if st := s.Stats(); st.RateLimited != 1 {
		t.Errorf("%d requests rate limited, want the one", st.RateLimited)
	}
}

// TestPacerBodiesAcceptedByStandIn checks that merged bodies of every
// coalescable audience pass the stand-in's strict trigger validation.
func TestPacerBodiesAcceptedByStandIn(t *testing.T) {
	clk := &clock{now: t0}
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: appKey, Now: clk.Now})
	p := newPacer(t, trigger.PacerOptions{})
	outcomes := drive(t, p, newApp(t, s), clk, []arrival{
		{t0, `{"broadcast_id":1,"emails":["a@x.io"],"email_ignore_missing":true,"data":{"s":"<&>"}}`},
		{t0, `{"broadcast_id":1,"emails":["b@x.io"],"email_ignore_missing":true,"data":{"s":"<&>"}}`},
		{t0, `{"broadcast_id":2,"per_user_data":[{"id":"u","data":{"k":1}}],"id_ignore_missing":true}`},
		{t0, `{"broadcast_id":2,"per_user_data":[{"id":7}],"id_ignore_missing":true}`},
	})
	if len(outcomes) != 2 {
		t.Fatalf("%d requests, want one per broadcast", len(outcomes))
	}
	var bodies []string
	for _, tr := range s.Triggers() {
		if !json.Valid(tr.Body) {
			t.Errorf("invalid body %s", tr.Body)
		}
		bodies = append(bodies, string(tr.Body))
	}
	slices.Sort(bodies)
	want := []string{
		`{"emails":["a@x.io","b@x.io"],"email_ignore_missing":true,"data":{"s":"<&>"}}`,
		`{"per_user_data":[{"id":"u","data":{"k":1}},{"id":7}],"id_ignore_missing":true}`,
	}
	if !slices.Equal(bodies, want) {
		t.Errorf("bodies\n%q\nwant\n%q", bodies, want)
	}
}

// TestPacerBisectsAgainstStandIn: 40 coalescable triggers of one broadcast
// arrive together and the stand-in rejects any request naming "bad" (two
// of them). Bisecting through the real App client: every good person is
// triggered once, each bad trigger is rejected alone, no request of the
// broadcast comes within 10 s of the previous one by the stand-in's clock
// (its 429s would say so), and it takes a few requests per bad trigger.
func TestPacerBisectsAgainstStandIn(t *testing.T) {
	clk := &clock{now: t0}
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: appKey, Now: clk.Now,
		Fault: func(r *ciotest.Request) *ciotest.Fault {
			if strings.Contains(string(r.Body), `"bad-`) {
				return &ciotest.Fault{Status: http.StatusUnprocessableEntity, Body: `{"meta":{"error":"cannot message bad"}}`}
			}
			return nil
		}})
	p := newPacer(t, trigger.PacerOptions{})
	var arrivals []arrival
	for i := range 40 {
		id := fmt.Sprintf("u-%d", i)
		if i == 5 || i == 31 {
			id = fmt.Sprintf("bad-%d", i)
		}
		arrivals = append(arrivals, arrival{t0, fmt.Sprintf(`{"broadcast_id":3,"ids":[%q],"id_ignore_missing":true}`, id)})
	}
	outcomes := drive(t, p, newApp(t, s), clk, arrivals)

	var times []time.Time
	for _, r := range s.Requests() {
		times = append(times, r.Time)
	}
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < ciotest.BroadcastInterval {
			t.Errorf("requests %d and %d %v apart", i, i+1, gap)
		}
	}
	got := map[string]int{}
	for _, tr := range s.Triggers() {
		var b struct{ IDs []string }
		if err := json.Unmarshal(tr.Body, &b); err != nil {
			t.Fatal(err)
		}
		for _, id := range b.IDs {
			got[id]++
		}
	}
	for i := range 40 {
		id := fmt.Sprintf("u-%d", i)
		if i == 5 || i == 31 {
			id = fmt.Sprintf("bad-%d", i)
			if got[id] != 0 {
				t.Errorf("%s accepted", id)
			}
			continue
		}
		if got[id] != 1 {
			t.Errorf("%s triggered %d times, want once", id, got[id])
		}
	}
	rejectedAlone := 0
	for _, o := range outcomes {
		if sink.Classify(o.err) == sink.Reject && len(o.batch.Items) == 1 {
			rejectedAlone++
		}
	}
	if st := s.Stats(); rejectedAlone != 2 || st.RateLimited != 0 || len(times) > 1+2*2*6 {
		t.Errorf("%d requests, %d rejected alone (want 2), %d rate limited (want 0)", len(times), rejectedAlone, st.RateLimited)
	}
	t.Logf("40 triggers, 2 bad: %d requests over %v (stand-in clock)", len(times), clk.Now().Sub(t0))
}
