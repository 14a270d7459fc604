package sink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

// fakeClock is the clock of a reader and of the stand-in together: Sleep
// advances it at once, so pacing and Retry-After cost no real time and
// the stand-in's 10-per-second window sees the times the reader meant.
type fakeClock struct {
	mu    sync.Mutex
	t     time.Time
	slept []time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d > 0 {
		c.t = c.t.Add(d)
		c.slept = append(c.slept, d)
	}
	return ctx.Err()
}

func (c *fakeClock) Advance(d time.Duration) { _ = c.Sleep(context.Background(), d) }

func (c *fakeClock) Slept() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.slept...)
}

// readEnv is a stand-in and its clock, for reads.
type readEnv struct {
	s     *ciotest.Server
	clock *fakeClock
	data  ciotest.AppData
}

func newReadEnv(t *testing.T, fault func(*ciotest.Request) *ciotest.Fault) *readEnv {
	t.Helper()
	e := &readEnv{clock: newFakeClock()}
	e.s = ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: appKey, Now: e.clock.Now, Fault: fault})
	return e
}

func (e *readEnv) reader(t *testing.T, key string, pageSize int) *sink.AppReader {
	t.Helper()
	r, err := sink.NewAppReader(sink.AppReaderOptions{
		URL:       e.s.AppURL(),
		APIKey:    func() string { return key },
		UserAgent: "cio-relay/test",
		Client:    sink.NewHTTPClient(1, 5*time.Second),
		Now:       e.clock.Now,
		Sleep:     e.clock.Sleep,
		PageSize:  pageSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// requestsTo counts the requests whose path starts with prefix, by status.
func (e *readEnv) requestsTo(prefix string) map[int]int {
	n := map[int]int{}
	for _, r := range e.s.Requests() {
		if strings.HasPrefix(r.Path, prefix) {
			n[r.Status]++
		}
	}
	return n
}

// triggerBroadcast makes the stand-in accept n triggers of broadcast id,
// 10 s apart (its per-broadcast limit), and returns their ids.
func (e *readEnv) triggerBroadcast(t *testing.T, id int64, n int) []int64 {
	t.Helper()
	app := newApp(t, e.s, appKey)
	var ids []int64
	for range n {
		tid, err := app.Trigger(context.Background(), id, []byte(`{"ids":["u-1"]}`))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tid)
		e.clock.Advance(ciotest.BroadcastInterval)
	}
	return ids
}

func raw(format string, args ...any) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(format, args...))
}

func items(n int, format func(i int) json.RawMessage) []json.RawMessage {
	out := make([]json.RawMessage, n)
	for i := range out {
		out[i] = format(i + 1)
	}
	return out
}

// readCase is one App API read, seeded with n items and read back.
type readCase struct {
	name  string
	path  string // the path the read requests, below /v1
	paged bool   // follows start/next
	one   bool   // reads a single object
	// seed puts n items where the read finds them and returns them as
	// the read must answer them.
	seed func(t *testing.T, e *readEnv, n int) []json.RawMessage
	read func(ctx context.Context, r *sink.AppReader, limit int) ([]json.RawMessage, error)
}

func raws[T any](it sink.Items[T], err error) ([]json.RawMessage, error) { return it.Raw, err }

func rawOne[T any](it sink.Item[T], err error) ([]json.RawMessage, error) {
	if err != nil {
		return nil, err
	}
	return []json.RawMessage{it.Raw}, nil
}

func readCases() []readCase {
	const base = 1780000000 // within the fake clock's six months
	list := func(set func(*ciotest.AppData, []json.RawMessage), f func(i int) json.RawMessage) func(*testing.T, *readEnv, int) []json.RawMessage {
		return func(_ *testing.T, e *readEnv, n int) []json.RawMessage {
			it := items(n, f)
			set(&e.data, it)
			return it
		}
	}
	segment := func(i int) json.RawMessage {
		return raw(`{"id":%d,"name":"segment %d","type":"dynamic","state":"finished","progress":null,"tags":null,"created_at":%d,"updated_at":%d,"not_in_struct":"kept"}`, i, i, base, base)
	}
	return []readCase{
		{name: "integrations", path: "/v1/integrations",
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.Integrations = it },
				func(i int) json.RawMessage { return raw(`{"id":%d,"name":"integration %d","type":"webhook"}`, i, i) }),
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.Integrations(ctx))
			}},
		{name: "messages", path: "/v1/messages", paged: true,
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.Messages = it },
				func(i int) json.RawMessage {
					return raw(`{"id":"m-%d","type":"email","created":%d,"campaign_id":3,"broadcast_id":null,"newsletter_id":null,"action_id":9,"metrics":{"sent":%d,"delivered":%d}}`, i, base+i, base+i, base+i+1)
				}),
			read: func(ctx context.Context, r *sink.AppReader, limit int) ([]json.RawMessage, error) {
				return raws(r.Messages(ctx, sink.MessageFilter{Type: "email", Metric: "delivered", CampaignID: 3, ActionID: 9, Since: time.Unix(base, 0)}, limit))
			}},
		{name: "segments", path: "/v1/segments",
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.Segments = it }, segment),
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.Segments(ctx))
			}},
		{name: "segment", path: "/v1/segments/2", one: true,
			seed: func(_ *testing.T, e *readEnv, _ int) []json.RawMessage {
				e.data.Segments = items(3, segment)
				return e.data.Segments[1:2]
			},
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return rawOne(r.Segment(ctx, 2))
			}},
		{name: "segment members", path: "/v1/segments/7/membership", paged: true,
			seed: func(_ *testing.T, e *readEnv, n int) []json.RawMessage {
				e.data.Segments = []json.RawMessage{segment(7)}
				it := items(n, func(i int) json.RawMessage { return raw(`{"id":"u-%d","cio_id":"c%d","email":null}`, i, i) })
				e.data.Membership = map[int64][]json.RawMessage{7: it}
				return it
			},
			read: func(ctx context.Context, r *sink.AppReader, limit int) ([]json.RawMessage, error) {
				return raws(r.SegmentMembers(ctx, 7, limit))
			}},
		{name: "triggers", path: "/v1/broadcasts/5/triggers",
			seed: func(t *testing.T, e *readEnv, n int) []json.RawMessage {
				e.triggerBroadcast(t, 6, 1) // another broadcast's trigger is not listed
				return e.triggerBroadcastAt(t, 5, n)
			},
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.Triggers(ctx, 5))
			}},
		{name: "trigger", path: "/v1/campaigns/5/triggers/", one: true,
			seed: func(t *testing.T, e *readEnv, _ int) []json.RawMessage { return e.triggerBroadcastAt(t, 5, 1) },
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return rawOne(r.Trigger(ctx, 5, 1))
			}},
		{name: "trigger errors", path: "/v1/campaigns/5/triggers/1/errors", paged: true,
			seed: func(t *testing.T, e *readEnv, n int) []json.RawMessage {
				e.triggerBroadcast(t, 5, 1)
				it := items(n, func(i int) json.RawMessage { return raw(`"line %d: customer u-%d does not exist"`, i+1, i) })
				e.data.TriggerErrors = map[int64][]json.RawMessage{1: it}
				return it
			},
			read: func(ctx context.Context, r *sink.AppReader, limit int) ([]json.RawMessage, error) {
				return raws(r.TriggerErrors(ctx, 5, 1, limit))
			}},
		{name: "reporting webhooks", path: "/v1/reporting_webhooks",
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.ReportingWebhooks = it },
				func(i int) json.RawMessage {
					return raw(`{"id":%d,"name":"hook %d","endpoint":"https://example.com/%d","type":"webhook","disabled":false,"full_resolution":true,"with_content":false,"events":["email_failed"]}`, i, i, i)
				}),
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.ReportingWebhooks(ctx))
			}},
		{name: "collections", path: "/v1/collections",
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.Collections = it },
				func(i int) json.RawMessage {
					return raw(`{"id":%d,"name":"collection %d","rows":2,"bytes":296,"schema":["eventName"],"created_at":%d,"updated_at":%d}`, i, i, base, base)
				}),
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.Collections(ctx))
			}},
		{name: "ip addresses", path: "/v1/info/ip_addresses",
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.IPAddresses = it },
				func(i int) json.RawMessage { return raw(`"192.0.2.%d"`, i) }),
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.IPAddresses(ctx))
			}},
		{name: "newsletters", path: "/v1/newsletters", paged: true,
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.Newsletters = it },
				func(i int) json.RawMessage {
					return raw(`{"id":%d,"name":"newsletter %d","type":"email","created":%d,"updated":%d,"sent_at":null,"tags":[]}`, i, i, base+i, base+i)
				}),
			read: func(ctx context.Context, r *sink.AppReader, limit int) ([]json.RawMessage, error) {
				return raws(r.Newsletters(ctx, "asc", limit))
			}},
		{name: "snippets", path: "/v1/snippets",
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.Snippets = it },
				func(i int) json.RawMessage {
					return raw(`{"name":"snippet-%d","value":"<b>%d</b>","updated_at":%d}`, i, i, base)
				}),
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.Snippets(ctx))
			}},
		{name: "transactional", path: "/v1/transactional",
			seed: list(func(d *ciotest.AppData, it []json.RawMessage) { d.Transactional = it },
				func(i int) json.RawMessage {
					return raw(`{"id":%d,"name":"reset %d","description":"","send_to_unsubscribed":true,"link_tracking":false,"open_tracking":true,"hide_message_body":false,"queue_drafts":false,"created_at":%d,"updated_at":%d}`, i, i, base, base)
				}),
			read: func(ctx context.Context, r *sink.AppReader, _ int) ([]json.RawMessage, error) {
				return raws(r.TransactionalMessages(ctx))
			}},
	}
}

// triggerBroadcastAt triggers broadcast id n times and returns the
// triggers as the App API lists them.
func (e *readEnv) triggerBroadcastAt(t *testing.T, id int64, n int) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	for range n {
		at := e.clock.Now().Unix()
		tid := e.triggerBroadcast(t, id, 1)[0]
		out = append(out, raw(`{"id":%d,"broadcast_id":%d,"created_at":%d,"processed_at":%d}`, tid, id, at, at))
	}
	return out
}

func sameRaws(t *testing.T, got, want []json.RawMessage) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d items, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("item %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

// TestAppReadsFollowPagination reads each read's items back byte for
// byte; paged reads across several pages (page size 10), following next.
func TestAppReadsFollowPagination(t *testing.T) {
	for _, tc := range readCases() {
		t.Run(tc.name, func(t *testing.T) {
			e := newReadEnv(t, nil)
			n := 3
			if tc.paged {
				n = 25
			}
			want := tc.seed(t, e, n)
			e.s.SetAppData(e.data)
			r := e.reader(t, appKey, 10)
			got, err := tc.read(context.Background(), r, 0)
			if err != nil {
				t.Fatal(err)
			}
			sameRaws(t, got, want)
			wantRequests := 1
			if tc.paged {
				wantRequests = 3 // 10 + 10 + 5
			}
			if n := e.requestsTo(tc.path)[http.StatusOK]; n != wantRequests {
				t.Errorf("%d requests to %s answered 200, want %d", n, tc.path, wantRequests)
			}
			if !tc.paged {
				return
			}
			// --limit 15 stops after the page that reaches it.
			before := e.requestsTo(tc.path)[http.StatusOK]
			got, err = tc.read(context.Background(), r, 15)
			if err != nil {
				t.Fatal(err)
			}
			sameRaws(t, got, want[:15])
			if n := e.requestsTo(tc.path)[http.StatusOK] - before; n != 2 {
				t.Errorf("limit 15 took %d requests, want 2 (10 + 5)", n)
			}
		})
	}
}

// TestAppReadsHonour429 answers each read's first request 429 with
// Retry-After: 3: the reader waits those 3 s and asks again.
func TestAppReadsHonour429(t *testing.T) {
	for _, tc := range readCases() {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			faulted := false
			e := newReadEnv(t, func(r *ciotest.Request) *ciotest.Fault {
				mu.Lock()
				defer mu.Unlock()
				if r.Method != http.MethodGet || !strings.HasPrefix(r.Path, tc.path) || faulted {
					return nil
				}
				faulted = true
				return &ciotest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "3",
					Body: `{"errors":[{"detail":"rate limited to 10 requests per 1s (reference x)","status":"429"}]}`}
			})
			want := tc.seed(t, e, 3)
			e.s.SetAppData(e.data)
			got, err := tc.read(context.Background(), e.reader(t, appKey, 0), 0)
			if err != nil {
				t.Fatal(err)
			}
			sameRaws(t, got, want)
			if n := e.requestsTo(tc.path); n[http.StatusTooManyRequests] != 1 || n[http.StatusOK] != 1 {
				t.Errorf("requests by status %v, want one 429 and one 200", n)
			}
			if slept := e.clock.Slept(); !containsDuration(slept, 3*time.Second) {
				t.Errorf("reader slept %v, never the 3s Retry-After", slept)
			}
		})
	}
}

func containsDuration(ds []time.Duration, d time.Duration) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

// TestAppReadsUnauthorized reads with a key the App API refuses: a 401,
// asked once (a retry cannot fix a key).
func TestAppReadsUnauthorized(t *testing.T) {
	for _, tc := range readCases() {
		t.Run(tc.name, func(t *testing.T) {
			e := newReadEnv(t, nil)
			tc.seed(t, e, 3)
			e.s.SetAppData(e.data)
			_, err := tc.read(context.Background(), e.reader(t, "wrong-key", 0), 0)
			if sink.StatusOf(err) != http.StatusUnauthorized {
				t.Fatalf("err = %v, want a 401", err)
			}
			if strings.Contains(err.Error(), "wrong-key") {
				t.Errorf("the error shows the key: %v", err)
			}
			if n := e.requestsTo(tc.path); n[http.StatusUnauthorized] != 1 || len(n) != 1 {
				t.Errorf("requests by status %v, want exactly one 401", n)
			}
		})
	}
}

// TestAppReaderPacesAtTenPerSecond: 35 reads against the stand-in's
// 10-per-second window are never answered 429, and take at least 3.4 s.
func TestAppReaderPacesAtTenPerSecond(t *testing.T) {
	e := newReadEnv(t, nil)
	e.s.SetAppData(ciotest.AppData{Snippets: items(1, func(int) json.RawMessage { return raw(`{"name":"a","value":"b"}`) })})
	r := e.reader(t, appKey, 0)
	start := e.clock.Now()
	for range 35 {
		if _, err := r.Snippets(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if st := e.s.Stats(); st.RateLimited != 0 || st.ByStatus[http.StatusOK] != 35 {
		t.Errorf("%d answered 429, %d answered 200; want 0 and 35", st.RateLimited, st.ByStatus[http.StatusOK])
	}
	if took := e.clock.Now().Sub(start); took < 3400*time.Millisecond {
		t.Errorf("35 reads took %v of the clock, want at least 3.4s", took)
	}
}

// TestAppReadersSharingAKeyRecoverFrom429: two readers (two operators)
// together ask 20 a second; the stand-in answers the excess 429 with
// Retry-After, and every read still succeeds.
func TestAppReadersSharingAKeyRecoverFrom429(t *testing.T) {
	e := newReadEnv(t, nil)
	e.s.SetAppData(ciotest.AppData{Snippets: items(1, func(int) json.RawMessage { return raw(`{"name":"a","value":"b"}`) })})
	a, b := e.reader(t, appKey, 0), e.reader(t, appKey, 0)
	for range 15 {
		for _, r := range []*sink.AppReader{a, b} {
			if _, err := r.Snippets(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	st := e.s.Stats()
	if st.ByStatus[http.StatusOK] != 30 {
		t.Errorf("%d reads answered 200, want 30", st.ByStatus[http.StatusOK])
	}
	if st.RateLimited == 0 {
		t.Error("no read was answered 429: the test did not exceed the limit")
	}
}

// TestAppReaderDailyQuotaIsNotRetried: a 429 without Retry-After is the
// daily quota; waiting seconds does not help, so the reader stops.
func TestAppReaderDailyQuotaIsNotRetried(t *testing.T) {
	e := newReadEnv(t, func(r *ciotest.Request) *ciotest.Fault {
		return &ciotest.Fault{Status: http.StatusTooManyRequests, Body: `{"errors":[{"detail":"daily quota","status":"429"}]}`}
	})
	_, err := e.reader(t, appKey, 0).Segments(context.Background())
	if sink.StatusOf(err) != http.StatusTooManyRequests || !strings.Contains(err.Error(), "daily quota") {
		t.Fatalf("err = %v, want the 429 naming the daily quota", err)
	}
	if n := len(e.s.Requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

// TestAppReaderRetries5xx: reads are safe to repeat, so a 503 is retried
// with backoff, up to five attempts.
func TestAppReaderRetries5xx(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	e := newReadEnv(t, func(r *ciotest.Request) *ciotest.Fault {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls <= 2 {
			return &ciotest.Fault{Status: http.StatusServiceUnavailable}
		}
		return nil
	})
	e.s.SetAppData(ciotest.AppData{Segments: []json.RawMessage{raw(`{"id":1,"name":"s"}`)}})
	got, err := e.reader(t, appKey, 0).Segments(context.Background())
	if err != nil || len(got.Items) != 1 {
		t.Fatalf("got %v, %v; want one segment", got.Items, err)
	}
	if n := len(e.s.Requests()); n != 3 {
		t.Errorf("%d requests, want 3 (two 503s, then 200)", n)
	}
}

// TestMessagesFilters: the filters reach Customer.io as its parameters,
// and what the stand-in filters is what comes back.
func TestMessagesFilters(t *testing.T) {
	e := newReadEnv(t, nil)
	now := e.clock.Now().Unix()
	e.s.SetAppData(ciotest.AppData{Messages: []json.RawMessage{
		raw(`{"id":"old","type":"email","created":%d,"metrics":{"sent":1}}`, now-7200),
		raw(`{"id":"push","type":"push","created":%d,"metrics":{"sent":1}}`, now-60),
		raw(`{"id":"email","type":"email","created":%d,"campaign_id":4,"metrics":{"sent":1,"opened":2}}`, now-60),
		raw(`{"id":"draft","type":"email","created":%d,"metrics":{"drafted":1}}`, now-60),
	}})
	r := e.reader(t, appKey, 0)
	ids := func(f sink.MessageFilter) string {
		t.Helper()
		got, err := r.Messages(context.Background(), f, 0)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, m := range got.Items {
			s = append(s, m.ID)
		}
		return strings.Join(s, ",")
	}
	since := e.clock.Now().Add(-time.Hour)
	tests := []struct {
		f    sink.MessageFilter
		want string
	}{
		{sink.MessageFilter{}, "old,push,email"},
		{sink.MessageFilter{Since: since}, "push,email"},
		{sink.MessageFilter{Until: since}, "old"},
		{sink.MessageFilter{Type: "email", Metric: "opened"}, "email"},
		{sink.MessageFilter{CampaignID: 4}, "email"},
		{sink.MessageFilter{Drafts: true}, "draft"},
	}
	for _, tt := range tests {
		if got := ids(tt.f); got != tt.want {
			t.Errorf("%+v: got %s, want %s", tt.f, got, tt.want)
		}
	}
	q := e.s.Requests()[1].RawQuery
	if want := fmt.Sprintf("start_ts=%d", since.Unix()); !strings.Contains(q, want) {
		t.Errorf("query %q lacks %s", q, want)
	}
}

func TestMessagesFilterCheck(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		f    sink.MessageFilter
		want string // "" for valid
	}{
		{"empty", sink.MessageFilter{}, ""},
		{"six months", sink.MessageFilter{Since: now.AddDate(0, -6, 0)}, ""},
		{"over six months", sink.MessageFilter{Since: now.AddDate(0, -6, -1)}, "longer than the 6 months"},
		{"over six months between", sink.MessageFilter{Since: now.AddDate(-1, 0, 0), Until: now.AddDate(0, -5, 0)}, "longer than the 6 months"},
		{"until before since", sink.MessageFilter{Since: now, Until: now.Add(-time.Hour)}, "before it starts"},
		{"type", sink.MessageFilter{Type: "fax"}, `type "fax" is not one of`},
		{"metric", sink.MessageFilter{Metric: "read"}, `metric "read" is not one of`},
		{"both", sink.MessageFilter{Type: "fax", Metric: "read"}, `metric "read"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Check(now)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestMessagesWindowRefusedBeforeAnyRequest: a window Customer.io would
// refuse is not sent.
func TestMessagesWindowRefusedBeforeAnyRequest(t *testing.T) {
	e := newReadEnv(t, nil)
	_, err := e.reader(t, appKey, 0).Messages(context.Background(), sink.MessageFilter{Since: e.clock.Now().AddDate(0, -7, 0)}, 0)
	if err == nil || !strings.Contains(err.Error(), "6 months") {
		t.Fatalf("err = %v", err)
	}
	if n := len(e.s.Requests()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}

// TestMessagesPagesAtMostAThousand: without a page size of its own the
// reader asks for Customer.io's largest page, 1000 (the stand-in, like
// the reference, refuses more), and only for what --limit still lacks.
func TestMessagesPagesAtMostAThousand(t *testing.T) {
	e := newReadEnv(t, nil)
	now := e.clock.Now().Unix()
	e.s.SetAppData(ciotest.AppData{Messages: items(2600, func(i int) json.RawMessage {
		return raw(`{"id":"m-%d","type":"email","created":%d,"metrics":{"sent":%d}}`, i, now-int64(i), now-int64(i))
	})})
	r := e.reader(t, appKey, 0)
	for _, tt := range []struct {
		limit  int
		want   int
		limits string
	}{
		{0, 2600, "limit=1000 limit=1000 limit=1000"},
		{2500, 2500, "limit=1000 limit=1000 limit=500"},
	} {
		before := len(e.s.Requests())
		got, err := r.Messages(context.Background(), sink.MessageFilter{}, tt.limit)
		if err != nil {
			t.Fatalf("limit %d: %v", tt.limit, err)
		}
		if len(got.Items) != tt.want || got.Items[tt.want-1].ID != fmt.Sprintf("m-%d", tt.want) {
			t.Errorf("limit %d: %d messages, want m-1 to m-%d", tt.limit, len(got.Items), tt.want)
		}
		var limits []string
		for _, q := range e.s.Requests()[before:] {
			if q.Status != http.StatusOK {
				t.Errorf("limit %d: a request answered %d: %s", tt.limit, q.Status, q.RawQuery)
			}
			for _, p := range strings.Split(q.RawQuery, "&") {
				if strings.HasPrefix(p, "limit=") {
					limits = append(limits, p)
				}
			}
		}
		if got := strings.Join(limits, " "); got != tt.limits {
			t.Errorf("limit %d: requests asked %s, want %s", tt.limit, got, tt.limits)
		}
	}
}
