package main

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

const cioTestKey = "app-key-secret-value"

// seedWorkspace gives the stand-in a small workspace: two of everything,
// in an order the table must not keep where Customer.io documents none,
// and broadcast 7 triggered once.
func seedWorkspace(t *testing.T, s *ciotest.Server, now time.Time) {
	t.Helper()
	ts := now.Add(-time.Hour).Unix()
	r := func(format string, args ...any) json.RawMessage { return json.RawMessage(fmt.Sprintf(format, args...)) }
	s.SetAppData(ciotest.AppData{
		Integrations: []json.RawMessage{r(`{"id":2,"name":"Segment","type":"source"}`), r(`{"id":1,"name":"Slack","type":"destination"}`)},
		Messages: []json.RawMessage{
			r(`{"id":"dgOq6QWq6QUBAAF4","type":"email","created":%d,"campaign_id":23,"broadcast_id":null,"newsletter_id":null,"action_id":215,"metrics":{"sent":%d,"delivered":%d,"opened":%d},"recipient":"a@example.com","failure_message":null}`, ts, ts, ts+2, ts+60),
			r(`{"id":"ag1q6QWq6QUBAAF5","type":"push","created":%d,"campaign_id":null,"broadcast_id":7,"newsletter_id":null,"action_id":31,"metrics":{"sent":%d,"failed":%d},"failure_message":"device token expired"}`, ts+10, ts+10, ts+11),
		},
		Segments: []json.RawMessage{
			r(`{"id":12,"name":"Churn risk","description":"No login in 30 days","state":"finished","progress":null,"type":"dynamic","tags":["retention"],"created_at":%d,"updated_at":%d,"deduplicate_id":"12:1"}`, ts, ts),
			r(`{"id":3,"name":"Beta testers","description":"","state":"build","progress":40,"type":"manual","tags":null,"created_at":%d,"updated_at":%d}`, ts, ts),
		},
		Membership: map[int64][]json.RawMessage{3: {r(`{"id":"u-1","cio_id":"a3000001","email":"u1@example.com"}`), r(`{"id":"u-2","cio_id":"a3000002","email":null}`)}},
		ReportingWebhooks: []json.RawMessage{
			r(`{"id":4,"name":"warehouse","endpoint":"https://hooks.example.com/cio?token=s3cr3t","type":"webhook","disabled":false,"full_resolution":true,"with_content":false,"events":["email_failed","webhook_failed"]}`),
		},
		Collections:   []json.RawMessage{r(`{"id":1,"name":"upcoming events","rows":2,"bytes":296,"schema":["eventDate","eventName"],"created_at":%d,"updated_at":%d}`, ts, ts)},
		IPAddresses:   []json.RawMessage{r(`"35.188.196.183"`), r(`"104.198.177.219"`)},
		Newsletters:   []json.RawMessage{r(`{"id":128275,"name":"Weekly Product Update","type":"email","created":%d,"updated":%d,"sent_at":%d,"tags":["Product Updates"]}`, ts, ts, ts+5), r(`{"id":128280,"name":"Launch","type":"push","created":%d,"updated":%d,"sent_at":null}`, ts+20, ts+20)},
		Snippets:      []json.RawMessage{r(`{"name":"address","value":"<strong>My Company</strong><br/>1234 Fake St<br/>Fake, NY 10111","updated_at":%d}`, ts)},
		Transactional: []json.RawMessage{r(`{"id":3,"name":"Reset password","description":"","send_to_unsubscribed":true,"link_tracking":false,"open_tracking":true,"hide_message_body":false,"queue_drafts":false,"created_at":%d,"updated_at":%d}`, ts, ts)},
		TriggerErrors: map[int64][]json.RawMessage{1: {r(`"line 2: customer u-9 does not exist"`)}},
	})
	app, err := sink.NewApp(sink.AppOptions{URL: s.AppURL(), APIKey: func() string { return cioTestKey }, Client: http.DefaultClient})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.Trigger(t.Context(), 7, []byte(`{"ids":["u-1"],"id_ignore_missing":true}`)); err != nil {
		t.Fatal(err)
	}
}

func cioServer(t *testing.T, fault func(*ciotest.Request) *ciotest.Fault) *ciotest.Server {
	t.Helper()
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: cioTestKey, Fault: fault})
	seedWorkspace(t, s, time.Now())
	return s
}

func cioEnv(s *ciotest.Server, key string) map[string]string {
	return map[string]string{"CIO_APP_URL": s.AppURL(), "CIO_APP_API_KEY": key, "RELAY_LOG_FORMAT": "text"}
}

// runCIOFor runs cio-relay cio with vars and returns its exit code and
// output.
func runCIOFor(t *testing.T, vars map[string]string, clock cioClock, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runCIOWith(t.Context(), args, env(vars), &out, &errOut, clock)
	t.Logf("cio-relay cio %s → %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return code, out.String(), errOut.String()
}

// TestCIOCommands runs every read against the stand-in: the table has
// the header and the rows in a stable order, and --json gives each object
// as Customer.io sent it, one a line.
func TestCIOCommands(t *testing.T) {
	s := cioServer(t, nil)
	vars := cioEnv(s, cioTestKey)
	tests := []struct {
		args   []string
		header string
		rows   []string // each row's start, in order
	}{
		{[]string{"integrations"}, "ID  NAME", []string{"1   Slack", "2   Segment"}},
		{[]string{"messages", "--since", "2h"}, "ID                TYPE   CREATED", []string{"dgOq6QWq6QUBAAF4  email", "ag1q6QWq6QUBAAF5  push"}},
		{[]string{"messages", "--type", "push"}, "ID ", []string{"ag1q6QWq6QUBAAF5  push"}},
		{[]string{"segments"}, "ID  NAME", []string{"3   Beta testers", "12  Churn risk"}},
		{[]string{"segment", "12"}, "", []string{"ID           12", "NAME         Churn risk", "DESCRIPTION  No login in 30 days"}},
		{[]string{"segment-members", "3"}, "ID   CIO_ID    EMAIL", []string{"u-1  a3000001  u1@example.com", "u-2  a3000002  -"}},
		{[]string{"triggers", "7"}, "ID  BROADCAST  CREATED", []string{"1   7"}},
		{[]string{"trigger", "7", "1"}, "", []string{"ID         1", "BROADCAST  7"}},
		{[]string{"trigger-errors", "7", "1"}, "ERROR", []string{"line 2: customer u-9 does not exist"}},
		{[]string{"webhooks"}, "ID  NAME", []string{"4   warehouse  webhook  false     2       https://hooks.example.com/cio?…"}},
		{[]string{"collections"}, "ID  NAME", []string{"1   upcoming events  2     296"}},
		{[]string{"ip-addresses"}, "ADDRESS", []string{"35.188.196.183", "104.198.177.219"}},
		{[]string{"newsletters", "--sort", "desc"}, "ID      NAME", []string{"128280  Launch", "128275  Weekly Product Update"}},
		{[]string{"snippets"}, "NAME", []string{"address"}},
		{[]string{"transactional"}, "ID  NAME", []string{"3   Reset password  true"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runCIOFor(t, vars, cioClock{}, tt.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if tt.header != "" {
				if !strings.HasPrefix(lines[0], tt.header) {
					t.Errorf("header %q, want it to start %q", lines[0], tt.header)
				}
				lines = lines[1:]
			}
			if len(lines) < len(tt.rows) {
				t.Fatalf("%d rows, want %d", len(lines), len(tt.rows))
			}
			if tt.header != "" && len(lines) != len(tt.rows) {
				t.Errorf("%d rows, want %d", len(lines), len(tt.rows))
			}
			for i, want := range tt.rows {
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("row %d %q, want it to start %q", i, lines[i], want)
				}
			}
			if strings.Contains(out, "s3cr3t") {
				t.Error("the table shows a webhook's token")
			}

			code, out, _ = runCIOFor(t, vars, cioClock{}, append(tt.args, "--json")...)
			if code != 0 {
				t.Fatalf("--json exit %d", code)
			}
			jl := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if want := max(len(tt.rows), 1); tt.header != "" && len(jl) != want {
				t.Errorf("--json printed %d lines, want %d", len(jl), want)
			}
			for _, l := range jl {
				if !json.Valid([]byte(l)) {
					t.Errorf("--json line is not JSON: %q", l)
				}
			}
		})
	}
}

// TestCIOJSONKeepsWhatCustomerIOSent: fields no table shows survive --json.
func TestCIOJSONKeepsWhatCustomerIOSent(t *testing.T) {
	s := cioServer(t, nil)
	code, out, _ := runCIOFor(t, cioEnv(s, cioTestKey), cioClock{}, "segments", "--json")
	if code != 0 || !strings.Contains(out, `"deduplicate_id":"12:1"`) || !strings.Contains(out, `"description":"No login in 30 days"`) {
		t.Fatalf("exit %d, output %s", code, out)
	}
}

// TestCIOUnauthorized: a refused key is explained, naming the settings to
// check and never the key.
func TestCIOUnauthorized(t *testing.T) {
	s := cioServer(t, nil)
	for _, args := range [][]string{{"segments"}, {"messages"}, {"trigger", "7", "1"}, {"segment-members", "3"}} {
		code, out, errOut := runCIOFor(t, cioEnv(s, "wrong-key-value"), cioClock{}, args...)
		if code != 1 || out != "" {
			t.Errorf("%v: exit %d, stdout %q; want 1 and nothing", args, code, out)
		}
		for _, want := range []string{"the App API key (CIO_APP_API_KEY) was refused", "check region (CIO_REGION", "CIO_APP_URL"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("%v: stderr %q lacks %q", args, errOut, want)
			}
		}
		if strings.Contains(errOut, "wrong-key-value") {
			t.Errorf("%v: stderr shows the key", args)
		}
	}
}

// fakeCIOClock advances when slept on, for Retry-After without waiting.
type fakeCIOClock struct {
	mu    sync.Mutex
	t     time.Time
	slept time.Duration
}

func (c *fakeCIOClock) clock() cioClock {
	return cioClock{
		now: func() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t },
		sleep: func(ctx context.Context, d time.Duration) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.t, c.slept = c.t.Add(d), c.slept+d
			return ctx.Err()
		},
	}
}

// TestCIORetryAfter: a 429 on the second page of segment members is
// waited out (Retry-After: 30) and the read completes.
func TestCIORetryAfter(t *testing.T) {
	var mu sync.Mutex
	pages := 0
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: cioTestKey, Fault: func(r *ciotest.Request) *ciotest.Fault {
		mu.Lock()
		defer mu.Unlock()
		if !strings.HasSuffix(r.Path, "/membership") {
			return nil
		}
		if pages++; pages == 2 {
			return &ciotest.Fault{Status: http.StatusTooManyRequests, RetryAfter: "30"}
		}
		return nil
	}})
	members := make([]json.RawMessage, 1500)
	for i := range members {
		members[i] = json.RawMessage(fmt.Sprintf(`{"id":"u-%d","cio_id":"c%d","email":null}`, i, i))
	}
	s.SetAppData(ciotest.AppData{Segments: []json.RawMessage{json.RawMessage(`{"id":3}`)}, Membership: map[int64][]json.RawMessage{3: members}})
	fc := &fakeCIOClock{t: time.Now()}
	code, out, errOut := runCIOFor(t, cioEnv(s, cioTestKey), fc.clock(), "segment-members", "3", "--limit", "1200", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if n := strings.Count(out, "\n"); n != 1200 {
		t.Errorf("%d members printed, want 1200", n)
	}
	if fc.slept < 30*time.Second {
		t.Errorf("slept %v, want at least the 30s Retry-After", fc.slept)
	}
	// 1000, then the 429, then the remaining 200.
	var limits []string
	for _, r := range s.Requests() {
		if strings.HasSuffix(r.Path, "/membership") {
			limits = append(limits, fmt.Sprintf("%d:%s", r.Status, strings.Split(r.RawQuery, "&")[0]))
		}
	}
	if got := strings.Join(limits, " "); got != "200:limit=1000 429:limit=200 200:limit=200" {
		t.Errorf("requests %s", got)
	}
}

// TestCIOMessagesWindow: --since/--until take the dlq commands' forms,
// reach Customer.io as unix seconds, and a window over six months is
// refused before anything is sent.
func TestCIOMessagesWindow(t *testing.T) {
	s := cioServer(t, nil)
	vars := cioEnv(s, cioTestKey)
	fc := &fakeCIOClock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	code, _, errOut := runCIOFor(t, vars, fc.clock(), "messages", "--since", "2025-11-01")
	if code != 2 || !strings.Contains(errOut, "longer than the 6 months") {
		t.Errorf("7 months: exit %d, %s", code, errOut)
	}
	code, _, errOut = runCIOFor(t, vars, fc.clock(), "messages", "--since", "1h", "--until", "2h")
	if code != 2 || !strings.Contains(errOut, "before it starts") {
		t.Errorf("until before since: exit %d, %s", code, errOut)
	}
	code, _, errOut = runCIOFor(t, vars, fc.clock(), "messages", "--since", "yesterday")
	if code != 2 || !strings.Contains(errOut, "want an RFC 3339 time") {
		t.Errorf("bad time: exit %d, %s", code, errOut)
	}
	before := len(s.Requests())
	if code, _, errOut := runCIOFor(t, vars, fc.clock(), "messages", "--since", "2h", "--until", "2026-06-01T11:30:00Z", "--drafts"); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	reqs := s.Requests()
	if len(reqs) != before+1 {
		t.Fatalf("%d requests sent, want 1", len(reqs)-before)
	}
	q := reqs[len(reqs)-1].RawQuery
	for _, want := range []string{fmt.Sprintf("start_ts=%d", fc.t.Add(-2*time.Hour).Unix()), "end_ts=1780313400", "drafts=true"} {
		if !strings.Contains(q, want) {
			t.Errorf("query %q lacks %s", q, want)
		}
	}
}

func TestCIOUsage(t *testing.T) {
	s := cioServer(t, nil)
	tests := []struct {
		args []string
		vars map[string]string
		want string
	}{
		{nil, cioEnv(s, cioTestKey), "missing command"},
		{[]string{"campaigns"}, cioEnv(s, cioTestKey), `unknown command "campaigns"`},
		{[]string{"segment"}, cioEnv(s, cioTestKey), "want ID"},
		{[]string{"trigger", "7", "x"}, cioEnv(s, cioTestKey), "TRIGGER must be a positive whole number"},
		{[]string{"segments"}, map[string]string{"CIO_APP_URL": s.AppURL()}, "CIO_APP_API_KEY is not set"},
		{[]string{"messages", "--limit", "-1"}, cioEnv(s, cioTestKey), "--limit must not be negative"},
	}
	for _, tt := range tests {
		code, _, errOut := runCIOFor(t, tt.vars, cioClock{}, tt.args...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tt.args, code, errOut, tt.want)
		}
	}
	var out bytes.Buffer
	if code := run(t.Context(), []string{"cio", "-h"}, env(nil), &out, &out); code != 0 || !strings.Contains(out.String(), "segment-members ID") {
		t.Errorf("cio -h: exit %d", code)
	}
}

// TestMetricsOf: the METRICS column lists the events a delivery reached,
// in the order they happened; the metrics object's counts (human_opened,
// prefetch_clicked, …) and its created time are not events.
func TestMetricsOf(t *testing.T) {
	m := map[string]int64{"created": 1796157400, "sent": 1796157488, "delivered": 1796157490, "opened": 1796157548,
		"human_opened": 1, "prefetch_opened": 0, "human_clicked": 2, "prefetch_clicked": 1}
	if got, want := metricsOf(m), "sent,delivered,opened"; got != want {
		t.Errorf("metricsOf = %q, want %q", got, want)
	}
	if got := metricsOf(map[string]int64{"drafted": 5}); got != "drafted" {
		t.Errorf("a draft's metrics = %q, want drafted", got)
	}
	if got := metricsOf(nil); got != "-" {
		t.Errorf("no metrics = %q, want -", got)
	}
}
