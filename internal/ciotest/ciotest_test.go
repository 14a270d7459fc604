package ciotest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

const (
	cdpKey   = "cdp-key"
	siteID   = "site-1"
	trackKey = "track-key"
	appKey   = "app-key"
)

// clock is a fake Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newServer(t *testing.T, mod ...func(*ciotest.Options)) *ciotest.Server {
	t.Helper()
	opts := ciotest.Options{CDPKey: cdpKey, SiteID: siteID, TrackKey: trackKey, AppKey: appKey}
	for _, m := range mod {
		m(&opts)
	}
	return ciotest.NewServer(t, opts)
}

type answer struct {
	status int
	header http.Header
	body   string
}

// do sends req and returns the answer; a transport error fails the test.
func do(t *testing.T, req *http.Request) answer {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// cdpRequest builds an authorised CDP request to path (e.g. "/batch"), in
// strict mode, as cio-relay sends it; delete the header for permissive.
func cdpRequest(t *testing.T, s *ciotest.Server, path string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.CDPURL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(cdpKey, "")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(ciotest.StrictModeHeader, "1")
	return req
}

func postBatch(t *testing.T, s *ciotest.Server, body []byte) answer {
	t.Helper()
	return do(t, cdpRequest(t, s, "/batch", body))
}

// trackCall returns a valid track call of exactly size bytes.
func trackCall(t testing.TB, id string, size int) []byte {
	t.Helper()
	head := fmt.Sprintf(`{"type":"track","messageId":%q,"userId":"u-%s","event":"Signed Up","properties":{"pad":"`, id, id)
	tail := `"}}`
	pad := size - len(head) - len(tail)
	if pad < 0 {
		t.Fatalf("a call of %d bytes is too small for id %q", size, id)
	}
	return []byte(head + strings.Repeat("x", pad) + tail)
}

func batch(calls ...[]byte) []byte {
	return []byte(`{"batch":[` + string(bytes.Join(calls, []byte(","))) + `]}`)
}

// batchOfSize returns a batch body of exactly n bytes whose calls are each
// within the per-call limit, and the number of calls in it.
func batchOfSize(t *testing.T, n int) ([]byte, int) {
	t.Helper()
	const callSize = 30_000
	overhead := len(batch())
	var calls [][]byte
	used := overhead
	for i := 0; ; i++ {
		sep := 0
		if i > 0 {
			sep = 1
		}
		left := n - used - sep
		if left <= callSize+1000 { // the last call takes the rest
			calls = append(calls, trackCall(t, fmt.Sprint(i), left))
			break
		}
		calls = append(calls, trackCall(t, fmt.Sprint(i), callSize))
		used += sep + callSize
	}
	b := batch(calls...)
	if len(b) != n {
		t.Fatalf("built a %d-byte batch, want %d", len(b), n)
	}
	return b, len(calls)
}

// errorMessage returns the message of a JSON error body: the Track and App
// APIs' {"meta":{"error":…}}, or the CDP API's {"meta":{"errors":[…]}},
// its entries joined by "; ".
func errorMessage(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Meta struct {
			Error  string
			Errors []string
		}
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || (e.Meta.Error == "") == (len(e.Meta.Errors) == 0) {
		t.Fatalf("body %q is not a JSON error: %v", body, err)
	}
	if e.Meta.Error != "" {
		return e.Meta.Error
	}
	return strings.Join(e.Meta.Errors, "; ")
}

func lastRequest(t *testing.T, s *ciotest.Server) ciotest.Request {
	t.Helper()
	rs := s.Requests()
	if len(rs) == 0 {
		t.Fatal("no request recorded")
	}
	return rs[len(rs)-1]
}

func TestCDPAuth(t *testing.T) {
	body := batch(trackCall(t, "a", 200))
	tests := []struct {
		name   string
		auth   func(*http.Request)
		status int
	}{
		{"key with blank password", func(r *http.Request) { r.SetBasicAuth(cdpKey, "") }, http.StatusOK},
		{"no Authorization", func(r *http.Request) { r.Header.Del("Authorization") }, http.StatusUnauthorized},
		{"wrong user", func(r *http.Request) { r.SetBasicAuth("other-key", "") }, http.StatusUnauthorized},
		{"non-blank password", func(r *http.Request) { r.SetBasicAuth(cdpKey, "x") }, http.StatusUnauthorized},
		{"key as password", func(r *http.Request) { r.SetBasicAuth("", cdpKey) }, http.StatusUnauthorized},
		{"Bearer key", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+cdpKey) }, http.StatusUnauthorized},
		{"Track credentials", func(r *http.Request) { r.SetBasicAuth(siteID, trackKey) }, http.StatusUnauthorized},
		{"two Authorization headers", func(r *http.Request) {
			r.SetBasicAuth(cdpKey, "")
			r.Header.Add("Authorization", "Bearer "+cdpKey)
		}, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			req := cdpRequest(t, s, "/batch", body)
			tt.auth(req)
			a := do(t, req)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", a.status, tt.status, a.body)
			}
			r := lastRequest(t, s)
			if tt.status == http.StatusOK {
				if !r.AuthOK || len(s.Delivered()) != 1 {
					t.Fatalf("AuthOK %v, delivered %d; want true, 1", r.AuthOK, len(s.Delivered()))
				}
				return
			}
			if r.AuthOK || r.Outcome != ciotest.OutcomeUnauthorized || len(s.Delivered()) != 0 {
				t.Fatalf("AuthOK %v, outcome %s, delivered %d; want false, unauthorized, 0", r.AuthOK, r.Outcome, len(s.Delivered()))
			}
			errorMessage(t, a.body)
		})
	}
}

func TestCDPBatchSizeLimit(t *testing.T) {
	tests := []struct {
		size    int
		outcome ciotest.Outcome
	}{
		{ciotest.MaxBatchBytes, ciotest.OutcomeAccepted},
		{ciotest.MaxBatchBytes + 1, ciotest.OutcomeDroppedOverLimit},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.size), func(t *testing.T) {
			s := newServer(t)
			body, n := batchOfSize(t, tt.size)
			a := postBatch(t, s, body)
			if a.status != http.StatusOK {
				t.Fatalf("status %d, want 200 either way (%s)", a.status, a.body)
			}
			r := lastRequest(t, s)
			st := s.Stats()
			if r.Outcome != tt.outcome || r.BodyBytes != tt.size || len(r.Calls) != n {
				t.Fatalf("outcome %s, %d bytes, %d calls; want %s, %d, %d", r.Outcome, r.BodyBytes, len(r.Calls), tt.outcome, tt.size, n)
			}
			if st.MaxBodyBytes != tt.size {
				t.Errorf("MaxBodyBytes %d, want %d", st.MaxBodyBytes, tt.size)
			}
			if tt.outcome == ciotest.OutcomeAccepted {
				if got := len(s.Delivered()); got != n || st.CallsAccepted != n || st.BatchesAccepted != 1 {
					t.Fatalf("delivered %d, CallsAccepted %d, BatchesAccepted %d; want %d, %d, 1", got, st.CallsAccepted, st.BatchesAccepted, n, n)
				}
				return
			}
			if got := len(s.Delivered()); got != 0 {
				t.Fatalf("delivered %d calls from a dropped batch", got)
			}
			if st.RequestsDroppedOverLimit != 1 || st.CallsDroppedOverLimit != n || st.CallsAccepted != 0 {
				t.Fatalf("stats %+v: want 1 request and %d calls dropped, none accepted", st, n)
			}
		})
	}
}

func TestCDPCallSizeLimit(t *testing.T) {
	tests := []struct {
		name    string
		path    string
		body    func(call []byte) []byte
		size    int
		outcome ciotest.Outcome
	}{
		{"batch call at limit", "/batch", func(c []byte) []byte { return batch(trackCall(t, "s", 100), c) }, ciotest.MaxCallBytes, ciotest.OutcomeAccepted},
		{"batch call over limit", "/batch", func(c []byte) []byte { return batch(trackCall(t, "s", 100), c) }, ciotest.MaxCallBytes + 1, ciotest.OutcomeDroppedOverLimit},
		{"single call at limit", "/track", func(c []byte) []byte { return c }, ciotest.MaxCallBytes, ciotest.OutcomeAccepted},
		{"single call over limit", "/track", func(c []byte) []byte { return c }, ciotest.MaxCallBytes + 1, ciotest.OutcomeDroppedOverLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			call := trackCall(t, "big", tt.size)
			a := do(t, cdpRequest(t, s, tt.path, tt.body(call)))
			if a.status != http.StatusOK {
				t.Fatalf("status %d, want 200 either way (%s)", a.status, a.body)
			}
			r := lastRequest(t, s)
			if r.Outcome != tt.outcome {
				t.Fatalf("outcome %s (%s), want %s", r.Outcome, r.Reason, tt.outcome)
			}
			delivered := s.Delivered()
			if tt.outcome != ciotest.OutcomeAccepted {
				if len(delivered) != 0 {
					t.Fatalf("delivered %d calls from a dropped request", len(delivered))
				}
				// The dropped calls are still named.
				last := r.Calls[len(r.Calls)-1]
				if last.MessageID != "big" || last.Size != tt.size {
					t.Fatalf("dropped call recorded as %q, %d bytes; want big, %d", last.MessageID, last.Size, tt.size)
				}
				return
			}
			last := delivered[len(delivered)-1]
			if !bytes.Equal(last.Raw, call) || last.Size != tt.size || last.Type != "track" {
				t.Fatalf("delivered call: type %q, %d bytes, exact %v", last.Type, last.Size, bytes.Equal(last.Raw, call))
			}
			if st := s.Stats(); st.MaxCallBytes != tt.size {
				t.Fatalf("MaxCallBytes %d, want %d", st.MaxCallBytes, tt.size)
			}
		})
	}
}

func TestCDPRejects(t *testing.T) {
	tests := []struct {
		name   string
		path   string // default /batch
		method string // default POST
		ctype  string // default application/json; "-" for none
		body   string
		status int
		reason string // substring of the error
	}{
		{name: "valid identify", body: `{"batch":[{"type":"identify","userId":"u1"}]}`, status: 200},
		{name: "valid identify by anonymousId", body: `{"batch":[{"type":"identify","anonymousId":"a1"}]}`, status: 200},
		{name: "valid numeric userId", body: `{"batch":[{"type":"page","userId":42}]}`, status: 200},
		{name: "valid screen", body: `{"batch":[{"type":"screen","userId":"u","name":"Home"}]}`, status: 200},
		{name: "valid group", body: `{"batch":[{"type":"group","anonymousId":"a","groupId":"g"}]}`, status: 200},
		{name: "valid alias", body: `{"batch":[{"type":"alias","userId":"u","previousId":"p"}]}`, status: 200},
		{name: "valid with envelope fields", body: `{"messageId":"b1","sentAt":"2024-01-01T00:00:00Z","context":{"library":{"name":"cio-relay"}},"batch":[{"type":"track","userId":"u","event":"e"}]}`, status: 200},
		{name: "charset utf-8", ctype: "application/json; charset=UTF-8", body: `{"batch":[{"type":"identify","userId":"u1"}]}`, status: 200},

		{name: "identify without user", body: `{"batch":[{"type":"identify","traits":{}}]}`, status: 400, reason: "identify needs userId or anonymousId"},
		{name: "identify empty userId", body: `{"batch":[{"type":"identify","userId":""}]}`, status: 400, reason: "identify needs userId or anonymousId"},
		{name: "identify null userId", body: `{"batch":[{"type":"identify","userId":null}]}`, status: 400, reason: "identify needs userId or anonymousId"},
		{name: "track without user", body: `{"batch":[{"type":"track","event":"e"}]}`, status: 400, reason: "track needs userId or anonymousId"},
		{name: "track without event", body: `{"batch":[{"type":"track","userId":"u"}]}`, status: 400, reason: "track needs event"},
		{name: "track numeric event", body: `{"batch":[{"type":"track","userId":"u","event":1}]}`, status: 400, reason: "track needs event"},
		{name: "page without user", body: `{"batch":[{"type":"page","name":"p"}]}`, status: 400, reason: "page needs userId or anonymousId"},
		{name: "screen without user", body: `{"batch":[{"type":"screen","name":"s"}]}`, status: 400, reason: "screen needs userId or anonymousId"},
		{name: "screen without name", body: `{"batch":[{"type":"screen","userId":"u"}]}`, status: 400, reason: "screen needs name"},
		{name: "group without groupId", body: `{"batch":[{"type":"group","userId":"u"}]}`, status: 400, reason: "group needs groupId"},
		{name: "group without user", body: `{"batch":[{"type":"group","groupId":"g"}]}`, status: 400, reason: "group needs userId or anonymousId"},
		{name: "alias without userId", body: `{"batch":[{"type":"alias","anonymousId":"a","previousId":"p"}]}`, status: 400, reason: "alias needs userId"},
		{name: "alias without previousId", body: `{"batch":[{"type":"alias","userId":"u"}]}`, status: 400, reason: "alias needs previousId"},
		{name: "missing type", body: `{"batch":[{"userId":"u","event":"e"}]}`, status: 400, reason: "missing type"},
		{name: "unknown type", body: `{"batch":[{"type":"purchase","userId":"u"}]}`, status: 400, reason: `unknown type "purchase"`},
		{name: "type not a string", body: `{"batch":[{"type":1,"userId":"u"}]}`, status: 400, reason: "type must be a string"},
		{name: "call not an object", body: `{"batch":[{"type":"identify","userId":"u"},"x"]}`, status: 400, reason: "batch[1]"},
		{name: "one bad call rejects all", body: `{"batch":[{"type":"identify","userId":"u"},{"type":"track","messageId":"m2","userId":"u"}]}`, status: 400, reason: `batch[1] (messageId "m2"): track needs event`},
		{name: "duplicate messageId key", body: `{"batch":[{"type":"track","messageId":"a","userId":"u","event":"e","messageId":"b"}]}`, status: 400, reason: "messageId appears more than once"},
		{name: "messageId not a string", body: `{"batch":[{"type":"track","messageId":7,"userId":"u","event":"e"}]}`, status: 400, reason: "messageId must be a string"},
		{name: "traits not an object", body: `{"batch":[{"type":"identify","userId":"u","traits":"vip"}]}`, status: 400, reason: "traits must be an object, not string"},
		{name: "properties an array", body: `{"batch":[{"type":"track","userId":"u","event":"e","properties":[1]}]}`, status: 400, reason: "properties must be an object, not array"},
		{name: "context null", body: `{"batch":[{"type":"page","userId":"u","context":null}]}`, status: 400, reason: "context must be an object, not null"},
		{name: "integrations a string", body: `{"batch":[{"type":"page","userId":"u","integrations":"all"}]}`, status: 400, reason: "integrations must be an object"},
		{name: "second traits not an object", body: `{"batch":[{"type":"identify","userId":"u","traits":{},"traits":1}]}`, status: 400, reason: "traits must be an object, not number"},
		{name: "timestamp a number", body: `{"batch":[{"type":"track","userId":"u","event":"e","timestamp":1700000000}]}`, status: 400, reason: "timestamp must be an ISO 8601 date-time string, not number"},
		{name: "timestamp not a date-time", body: `{"batch":[{"type":"track","userId":"u","event":"e","timestamp":"yesterday"}]}`, status: 400, reason: `timestamp "yesterday" is not an ISO 8601 date-time`},
		{name: "timestamp a date only", body: `{"batch":[{"type":"track","userId":"u","event":"e","timestamp":"2024-01-01"}]}`, status: 400, reason: "not an ISO 8601 date-time"},
		{name: "sentAt bad", body: `{"batch":[{"type":"track","userId":"u","event":"e","sentAt":"2024-13-01T00:00:00Z"}]}`, status: 400, reason: "sentAt"},
		{name: "originalTimestamp bad", body: `{"batch":[{"type":"track","userId":"u","event":"e","originalTimestamp":true}]}`, status: 400, reason: "originalTimestamp must be"},
		{name: "envelope context not an object", body: `{"context":[],"batch":[{"type":"track","userId":"u","event":"e"}]}`, status: 400, reason: "context must be an object"},
		{name: "envelope sentAt bad", body: `{"sentAt":"now","batch":[{"type":"track","userId":"u","event":"e"}]}`, status: 400, reason: `sentAt "now"`},
		{name: "valid typed fields", body: `{"batch":[{"type":"track","userId":"u","event":"e","properties":{},"context":{"ip":"1.2.3.4"},"integrations":{"All":true},"timestamp":"2024-01-01T12:00:00.123+02:00","sentAt":"2024-01-01T10:00:01Z","originalTimestamp":"2024-01-01T10:00:00Z"}]}`, status: 200},
		{name: "invalid JSON", body: `{"batch":[{"type":"identify","userId":"u"}]`, status: 400, reason: "invalid JSON"},
		{name: "trailing data", body: `{"batch":[{"type":"identify","userId":"u"}]} {}`, status: 400, reason: "invalid JSON"},
		{name: "invalid UTF-8", body: "{\"batch\":[{\"type\":\"identify\",\"userId\":\"\xff\"}]}", status: 400, reason: "UTF-8"},
		{name: "no batch", body: `{"calls":[]}`, status: 400, reason: `no "batch"`},
		{name: "batch not an array", body: `{"batch":{}}`, status: 400, reason: "not a JSON array"},
		{name: "empty batch", body: `{"batch":[]}`, status: 400, reason: "empty"},
		{name: "batch twice", body: `{"batch":[{"type":"identify","userId":"u"}],"batch":[]}`, status: 400, reason: "more than once"},
		{name: "body not an object", body: `[{"type":"identify","userId":"u"}]`, status: 400, reason: "not a JSON object"},
		{name: "no Content-Type", ctype: "-", body: `{"batch":[{"type":"identify","userId":"u"}]}`, status: 400, reason: "Content-Type"},
		{name: "text/plain", ctype: "text/plain", body: `{"batch":[{"type":"identify","userId":"u"}]}`, status: 400, reason: "Content-Type"},
		{name: "GET", method: http.MethodGet, status: 405},
		{name: "unknown endpoint", path: "/batches", body: `{}`, status: 404},

		{name: "single track", path: "/track", body: `{"userId":"u","event":"e"}`, status: 200},
		{name: "single track with type", path: "/track", body: ` {"type":"track","userId":"u","event":"e"} `, status: 200},
		{name: "single type mismatch", path: "/track", body: `{"type":"identify","userId":"u"}`, status: 400, reason: "sent to the track endpoint"},
		{name: "single alias without previousId", path: "/alias", body: `{"userId":"u"}`, status: 400, reason: "alias needs previousId"},
		{name: "single batch body", path: "/identify", body: `{"batch":[{"type":"identify","userId":"u"}]}`, status: 400, reason: "identify needs userId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			path := "/batch"
			if tt.path != "" {
				path = tt.path
			}
			req := cdpRequest(t, s, path, []byte(tt.body))
			if tt.method != "" {
				req.Method = tt.method
			}
			switch tt.ctype {
			case "":
			case "-":
				req.Header.Del("Content-Type")
			default:
				req.Header.Set("Content-Type", tt.ctype)
			}
			a := do(t, req)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", a.status, tt.status, a.body)
			}
			if tt.status == http.StatusOK {
				if n := len(s.Delivered()); n != 1 {
					t.Fatalf("delivered %d calls, want 1", n)
				}
				return
			}
			if msg := errorMessage(t, a.body); !strings.Contains(msg, tt.reason) {
				t.Errorf("error %q does not name %q", msg, tt.reason)
			}
			if tt.status == http.StatusBadRequest && !strings.HasPrefix(a.body, `{"meta":{"errors":[`) {
				t.Errorf("400 body %s is not the OpenAPI's {\"meta\":{\"errors\":[…]}}", a.body)
			}
			if n := len(s.Delivered()); n != 0 {
				t.Fatalf("delivered %d calls from a rejected request", n)
			}
			if r := lastRequest(t, s); r.Outcome != ciotest.OutcomeRejected || r.Status != tt.status {
				t.Fatalf("recorded %s/%d, want rejected/%d", r.Outcome, r.Status, tt.status)
			}
		})
	}
}

func TestCDPRecordsExactBytes(t *testing.T) {
	s := newServer(t)
	calls := []string{
		`{ "type" : "track", "messageId":"m\u00e9-1", "userId":"u1", "event":"<b>&", "properties":{"a":[1, 2]} }`,
		`{"type":"identify","anonymousId":"anon","traits":{}}`, // no messageId
		`{"type":"page","userId":7,"messageId":""}`,            // empty messageId counts as none
	}
	body := "{\"sentAt\":\"2024-01-01T00:00:00Z\", \"batch\" : [\n  " + strings.Join(calls, " ,\n  ") + "\n] }"
	if a := postBatch(t, s, []byte(body)); a.status != http.StatusOK {
		t.Fatalf("status %d: %s", a.status, a.body)
	}
	got := s.Delivered()
	want := []ciotest.Call{
		{Type: "track", MessageID: "mé-1", UserID: "u1", Raw: json.RawMessage(calls[0]), Size: len(calls[0])},
		{Type: "identify", Raw: json.RawMessage(calls[1]), Size: len(calls[1])},
		{Type: "page", UserID: "7", Raw: json.RawMessage(calls[2]), Size: len(calls[2])},
	}
	if len(got) != len(want) {
		t.Fatalf("delivered %d calls, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Type != w.Type || g.MessageID != w.MessageID || g.UserID != w.UserID || g.Size != w.Size || !bytes.Equal(g.Raw, w.Raw) {
			t.Errorf("call %d:\n got %+v (%s)\nwant %+v (%s)", i, g, g.Raw, w, w.Raw)
		}
	}
	if st := s.Stats(); st.CallsWithoutMessageID != 2 {
		t.Errorf("CallsWithoutMessageID %d, want 2", st.CallsWithoutMessageID)
	}
}

func TestCDPConcurrent(t *testing.T) {
	s := newServer(t)
	const workers, batches, perBatch = 20, 25, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for b := range batches {
				calls := make([][]byte, perBatch)
				for c := range calls {
					calls[c] = trackCall(t, fmt.Sprintf("%d-%d-%d", w, b, c), 150)
				}
				req := cdpRequest(t, s, "/batch", batch(calls...))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const total = workers * batches * perBatch
	if err := s.WaitDelivered(ctx, total); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := make(map[string]bool, total)
	for _, c := range s.Delivered() {
		if seen[c.MessageID] {
			t.Fatalf("messageId %s delivered twice", c.MessageID)
		}
		seen[c.MessageID] = true
	}
	st := s.Stats()
	if len(seen) != total || st.CallsAccepted != total || st.BatchesAccepted != workers*batches || st.ByStatus[200] != workers*batches {
		t.Fatalf("distinct %d, stats %+v; want %d calls in %d batches", len(seen), st, total, workers*batches)
	}
}

func TestWaitDelivered(t *testing.T) {
	s := newServer(t)
	done := make(chan error, 1)
	go func() { done <- s.WaitDelivered(t.Context(), 3) }()
	postBatch(t, s, batch(trackCall(t, "1", 100), trackCall(t, "2", 100)))
	select {
	case err := <-done:
		t.Fatalf("returned after 2 of 3 calls: %v", err)
	default:
	}
	postBatch(t, s, batch(trackCall(t, "3", 100)))
	if err := <-done; err != nil {
		t.Fatalf("after 3 calls: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := s.WaitDelivered(ctx, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting for more than arrive: %v, want DeadlineExceeded", err)
	}
}

func TestSuppressions(t *testing.T) {
	s := newServer(t)
	post := func(t *testing.T, id, action string, auth func(*http.Request)) answer {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, s.TrackURL()+"/customers/"+url.PathEscape(id)+"/"+action, nil)
		if err != nil {
			t.Fatal(err)
		}
		auth(req)
		return do(t, req)
	}
	good := func(r *http.Request) { r.SetBasicAuth(siteID, trackKey) }

	ids := []string{"a+b@x.io", "ünï/cödé", "cio_abc123", "a b%2F"}
	var want []ciotest.Suppression
	for _, id := range ids {
		for _, action := range []string{"suppress", "unsuppress"} {
			if a := post(t, id, action, good); a.status != http.StatusOK {
				t.Fatalf("%s %q: status %d (%s)", action, id, a.status, a.body)
			}
			want = append(want, ciotest.Suppression{Action: action, Identifier: id})
		}
	}
	got := s.Suppressions()
	if len(got) != len(want) {
		t.Fatalf("recorded %d suppressions, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Action != want[i].Action || got[i].Identifier != want[i].Identifier {
			t.Errorf("suppression %d: got %s %q, want %s %q", i, got[i].Action, got[i].Identifier, want[i].Action, want[i].Identifier)
		}
	}

	rejects := []struct {
		name   string
		id     string
		action string
		auth   func(*http.Request)
		status int
	}{
		{"no auth", "u", "suppress", func(*http.Request) {}, 401},
		{"wrong key", "u", "suppress", func(r *http.Request) { r.SetBasicAuth(siteID, "nope") }, 401},
		{"CDP key", "u", "suppress", func(r *http.Request) { r.SetBasicAuth(cdpKey, "") }, 401},
		{"unknown action", "u", "delete", good, 404},
		{"empty identifier", "", "suppress", good, 404},
	}
	for _, tt := range rejects {
		t.Run(tt.name, func(t *testing.T) {
			if a := post(t, tt.id, tt.action, tt.auth); a.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", a.status, tt.status, a.body)
			}
		})
	}
	if n := len(s.Suppressions()); n != len(want) {
		t.Fatalf("rejected requests recorded suppressions: %d, want %d", n, len(want))
	}
}

func TestBroadcastRateLimit(t *testing.T) {
	clk := &clock{now: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := newServer(t, func(o *ciotest.Options) { o.Now = clk.Now })
	steps := []struct {
		advance    time.Duration
		broadcast  int
		status     int
		retryAfter string
		id         int64
	}{
		{0, 7, 200, "", 1},
		{3200 * time.Millisecond, 7, 429, "7", 0}, // 6.8 s left, rounded up
		{0, 8, 200, "", 2},                        // other broadcasts are not affected
		{6 * time.Second, 7, 429, "1", 0},         // 0.8 s left; a 429 does not restart the interval
		{800 * time.Millisecond, 7, 200, "", 3},   // exactly 10 s after the first
		{500 * time.Millisecond, 7, 429, "10", 0}, // 9.5 s left
		{0, 8, 429, "3", 0},                       // 7.3 s after broadcast 8's first
		{2700 * time.Millisecond, 8, 200, "", 4},
	}
	for i, st := range steps {
		clk.Advance(st.advance)
		a := do(t, triggerRequest(t, s, strconv.Itoa(st.broadcast), `{"ids":["u1"]}`, "Bearer "+appKey))
		if a.status != st.status || a.header.Get("Retry-After") != st.retryAfter {
			t.Fatalf("step %d: status %d, Retry-After %q; want %d, %q (%s)", i, a.status, a.header.Get("Retry-After"), st.status, st.retryAfter, a.body)
		}
		if st.status != http.StatusOK {
			continue
		}
		var body struct{ ID int64 }
		if err := json.Unmarshal([]byte(a.body), &body); err != nil || body.ID != st.id {
			t.Fatalf("step %d: body %s, want id %d (%v)", i, a.body, st.id, err)
		}
	}
	trs := s.Triggers()
	if len(trs) != 4 || trs[2].BroadcastID != 7 || trs[2].TriggerID != 3 || string(trs[2].Body) != `{"ids":["u1"]}` {
		t.Fatalf("triggers %+v", trs)
	}
	if st := s.Stats(); st.RateLimited != 4 || st.ByStatus[429] != 4 {
		t.Fatalf("RateLimited %d, 429s %d; want 4, 4", st.RateLimited, st.ByStatus[429])
	}
}

func triggerRequest(t *testing.T, s *ciotest.Server, broadcast, body, auth string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.AppURL()+"/campaigns/"+broadcast+"/triggers", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	return req
}

func TestBroadcastRejects(t *testing.T) {
	bearer := "Bearer " + appKey
	tests := []struct {
		name      string
		broadcast string
		body      string
		auth      string
		status    int
		reason    string
	}{
		{"broadcast audience", "1", `{}`, bearer, 200, ""},
		{"data and ids", "1", `{"data":{"a":1},"ids":["a",2],"id_ignore_missing":true}`, bearer, 200, ""},
		{"emails", "1", `{"emails":["a@x.io"],"email_add_duplicates":false}`, bearer, 200, ""},
		{"per_user_data", "1", `{"per_user_data":[{"id":"a","data":{}},{"email":"b@x.io"}]}`, bearer, 200, ""},
		{"data_file_url", "1", `{"data_file_url":"https://x.io/f.ndjson"}`, bearer, 200, ""},
		{"recipients", "1", `{"recipients":{"segment":{"id":3}}}`, bearer, 200, ""},
		{"scheme in lower case", "1", `{}`, "bearer " + appKey, 200, ""},

		{"no auth", "1", `{}`, "", 401, ""},
		{"wrong token", "1", `{}`, "Bearer nope", 401, ""},
		{"CDP key as Basic", "1", `{}`, "Basic " + basic(cdpKey, ""), 401, ""},
		{"id zero", "0", `{}`, bearer, 404, ""},
		{"id negative", "-1", `{}`, bearer, 404, ""},
		{"id not a number", "abc", `{}`, bearer, 404, ""},
		{"id with leading zero", "01", `{}`, bearer, 404, ""},
		{"two audiences", "1", `{"ids":["a"],"emails":["a@x.io"]}`, bearer, 400, "at most one"},
		{"null audience counts", "1", `{"ids":["a"],"emails":null}`, bearer, 400, "emails"},
		{"invalid JSON", "1", `{"ids":[`, bearer, 400, "invalid JSON"},
		{"not an object", "1", `[]`, bearer, 400, "not a JSON object"},
		{"empty body", "1", ``, bearer, 400, "invalid JSON"},
		{"ids empty", "1", `{"ids":[]}`, bearer, 400, "must not be empty"},
		{"data not an object", "1", `{"data":"x"}`, bearer, 400, "data: must be an object"},
		{"per_user_data without id", "1", `{"per_user_data":[{"data":{}}]}`, bearer, 400, "exactly one of id or email"},
		{"data_file_url not http", "1", `{"data_file_url":"ftp://x.io/f"}`, bearer, 400, "not an http(s) URL"},
		{"flag not boolean", "1", `{"id_ignore_missing":"yes"}`, bearer, 400, "must be a boolean"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			a := do(t, triggerRequest(t, s, tt.broadcast, tt.body, tt.auth))
			if a.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", a.status, tt.status, a.body)
			}
			if tt.status != http.StatusOK {
				if msg := errorMessage(t, a.body); !strings.Contains(msg, tt.reason) {
					t.Errorf("error %q does not name %q", msg, tt.reason)
				}
			}
			wantTriggers := 0
			if tt.status == http.StatusOK {
				wantTriggers = 1
			}
			if n := len(s.Triggers()); n != wantTriggers {
				t.Fatalf("recorded %d triggers, want %d", n, wantTriggers)
			}
		})
	}

	t.Run("GET", func(t *testing.T) {
		s := newServer(t)
		req := triggerRequest(t, s, "1", "", bearer)
		req.Method = http.MethodGet
		if a := do(t, req); a.status != http.StatusMethodNotAllowed || a.header.Get("Allow") != "POST" {
			t.Fatalf("status %d, Allow %q; want 405, POST", a.status, a.header.Get("Allow"))
		}
	})
}

func basic(user, pass string) string {
	r, _ := http.NewRequest(http.MethodGet, "http://x", nil)
	r.SetBasicAuth(user, pass)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}

func TestFault(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	s := newServer(t, func(o *ciotest.Options) {
		o.Fault = func(r *ciotest.Request) *ciotest.Fault {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, string(r.Body))
			switch {
			case bytes.Contains(r.Body, []byte(`"reset"`)):
				return &ciotest.Fault{Reset: true, Delay: 10 * time.Millisecond}
			case bytes.Contains(r.Body, []byte(`"busy"`)):
				return &ciotest.Fault{Status: 503, RetryAfter: "3", Body: "try later"}
			}
			return nil
		}
	})

	resetBody := batch(trackCall(t, "reset", 100))
	resp, err := http.DefaultClient.Do(cdpRequest(t, s, "/batch", resetBody))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a reset answered %d, want a transport error", resp.StatusCode)
	}

	a := postBatch(t, s, batch(trackCall(t, "busy", 100)))
	if a.status != 503 || a.header.Get("Retry-After") != "3" || a.body != "try later" {
		t.Fatalf("fault answered %d, Retry-After %q, body %q", a.status, a.header.Get("Retry-After"), a.body)
	}

	if a := postBatch(t, s, batch(trackCall(t, "fine", 100))); a.status != http.StatusOK {
		t.Fatalf("no fault: status %d (%s)", a.status, a.body)
	}

	rs := s.Requests()
	wantStatus := []int{0, 503, 200}
	wantOutcome := []ciotest.Outcome{ciotest.OutcomeFault, ciotest.OutcomeFault, ciotest.OutcomeAccepted}
	if len(rs) != len(wantStatus) {
		t.Fatalf("recorded %d requests, want %d", len(rs), len(wantStatus))
	}
	for i, r := range rs {
		if r.Status != wantStatus[i] || r.Outcome != wantOutcome[i] {
			t.Errorf("request %d: %d %s, want %d %s", i, r.Status, r.Outcome, wantStatus[i], wantOutcome[i])
		}
	}
	if d := s.Delivered(); len(d) != 1 || d[0].MessageID != "fine" {
		t.Fatalf("delivered %+v, want only the call without a fault", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0] != string(resetBody) {
		t.Fatalf("Fault saw %d bodies; the first %.40q…", len(seen), seen[0])
	}
}

func BenchmarkBatch(b *testing.B) {
	s := ciotest.NewServer(b, ciotest.Options{CDPKey: cdpKey})
	calls := make([][]byte, 250)
	for i := range calls {
		calls[i] = trackCall(b, strconv.Itoa(i), 1900)
	}
	body := batch(calls...)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, s.CDPURL()+"/batch", bytes.NewReader(body))
		req.SetBasicAuth(cdpKey, "")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	b.ReportMetric(float64(len(s.Delivered()))/b.Elapsed().Seconds(), "calls/s")
}

// TestFaultRedirect: a 3xx Fault with a Location sends a client to
// MovedURL, which answers 200 to anything and delivers nothing: what a
// client that follows redirects would take for success.
func TestFaultRedirect(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			var s *ciotest.Server
			s = newServer(t, func(o *ciotest.Options) {
				o.Fault = func(r *ciotest.Request) *ciotest.Fault {
					if r.API != ciotest.APICDP {
						return nil
					}
					return &ciotest.Fault{Status: status, Location: s.MovedURL() + "/v1/batch"}
				}
			})
			noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := noFollow.Do(cdpRequest(t, s, "/batch", batch(trackCall(t, "r", 100))))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != status || resp.Header.Get("Location") != s.MovedURL()+"/v1/batch" {
				t.Fatalf("answered %d Location %q, want %d to the moved URL", resp.StatusCode, resp.Header.Get("Location"), status)
			}
			// A client that follows lands on 200, GET or POST alike.
			if a := postBatch(t, s, batch(trackCall(t, "f", 100))); a.status != http.StatusOK {
				t.Fatalf("following the redirect: %d %s, want 200", a.status, a.body)
			}
			rs := s.Requests()
			if last := rs[len(rs)-1]; last.API != ciotest.APIMoved || last.Outcome != ciotest.OutcomeMoved {
				t.Errorf("last request %s/%s, want moved/moved", last.API, last.Outcome)
			}
			if d := s.Delivered(); len(d) != 0 {
				t.Errorf("%d calls delivered through a redirect", len(d))
			}
		})
	}
}

// TestFailCalls: the fault follows the call, not the request: any batch
// holding it fails, any batch without it goes through.
func TestFailCalls(t *testing.T) {
	s := newServer(t, func(o *ciotest.Options) {
		o.Fault = ciotest.FailCalls(ciotest.Fault{Status: 500, Body: "boom"}, "poison")
	})
	if a := postBatch(t, s, batch(trackCall(t, "a", 150), trackCall(t, "poison", 150))); a.status != 500 {
		t.Errorf("batch with the call: %d, want 500", a.status)
	}
	if a := do(t, cdpRequest(t, s, "/track", trackCall(t, "poison", 150))); a.status != 500 {
		t.Errorf("the call alone on /track: %d, want 500", a.status)
	}
	// Only the messageId counts, not the text appearing elsewhere.
	other := []byte(`{"type":"track","messageId":"b","userId":"u","event":"e","properties":{"messageId":"poison"}}`)
	if a := postBatch(t, s, batch(trackCall(t, "a", 100), other)); a.status != 200 {
		t.Errorf("batch without the call: %d %s, want 200", a.status, a.body)
	}
}

// TestCDPPermissiveMode: without X-Strict-Mode: 1, Customer.io answers a
// request that fails its validation with 200 and drops what failed: the
// calls are gone and the client cannot tell. Valid calls in the same
// request are delivered. The stand-in counts what it dropped.
func TestCDPPermissiveMode(t *testing.T) {
	good := `{"type":"track","messageId":"ok-1","userId":"u","event":"e"}`
	badTraits := `{"type":"identify","messageId":"bad-1","userId":"u","traits":"vip"}`
	badTime := `{"type":"track","messageId":"bad-2","userId":"u","event":"e","timestamp":"yesterday"}`
	noUser := `{"type":"track","messageId":"bad-3","event":"e"}`
	tests := []struct {
		name          string
		strict        string // X-Strict-Mode value; "" for none
		body          string
		status        int
		delivered     []string // messageIds
		dropped       []string // messageIds dropped as invalid
		outcome       ciotest.Outcome
		droppedBodies int // RequestsDroppedInvalid
	}{
		{name: "mixed batch", body: "{\"batch\":[" + good + "," + badTraits + "," + badTime + "," + noUser + "]}",
			status: 200, delivered: []string{"ok-1"}, dropped: []string{"bad-1", "bad-2", "bad-3"}, outcome: ciotest.OutcomeAccepted},
		{name: "only invalid calls", body: "{\"batch\":[" + badTraits + "]}",
			status: 200, dropped: []string{"bad-1"}, outcome: ciotest.OutcomeDroppedInvalid, droppedBodies: 1},
		{name: "invalid JSON", body: `{"batch":[`, status: 200, outcome: ciotest.OutcomeDroppedInvalid, droppedBodies: 1},
		{name: "any other value is permissive", strict: "true", body: "{\"batch\":[" + good + "," + badTime + "]}",
			status: 200, delivered: []string{"ok-1"}, dropped: []string{"bad-2"}, outcome: ciotest.OutcomeAccepted},
		{name: "strict: nothing accepted", strict: "1", body: "{\"batch\":[" + good + "," + badTraits + "," + badTime + "]}",
			status: 400, outcome: ciotest.OutcomeRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			req := cdpRequest(t, s, "/batch", []byte(tt.body))
			req.Header.Del(ciotest.StrictModeHeader)
			if tt.strict != "" {
				req.Header.Set(ciotest.StrictModeHeader, tt.strict)
			}
			a := do(t, req)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", a.status, tt.status, a.body)
			}
			if tt.status == 400 {
				msg := errorMessage(t, a.body)
				for _, want := range []string{`"bad-1"`, "traits must be an object", `"bad-2"`, "timestamp"} {
					if !strings.Contains(msg, want) {
						t.Errorf("strict error %q does not name %s: every failing call is listed", msg, want)
					}
				}
			}
			ids := func(calls []ciotest.Call) []string {
				var out []string
				for _, c := range calls {
					out = append(out, c.MessageID)
				}
				return out
			}
			if got := ids(s.Delivered()); fmt.Sprint(got) != fmt.Sprint(tt.delivered) {
				t.Errorf("delivered %v, want %v", got, tt.delivered)
			}
			dropped := s.DroppedInvalid()
			if got := ids(dropped); fmt.Sprint(got) != fmt.Sprint(tt.dropped) {
				t.Errorf("dropped %v, want %v", got, tt.dropped)
			}
			for _, c := range dropped {
				if c.Problem == "" {
					t.Errorf("dropped call %s has no Problem", c.MessageID)
				}
			}
			st := s.Stats()
			if st.CallsDroppedInvalid != len(tt.dropped) || st.RequestsDroppedInvalid != tt.droppedBodies || st.CallsAccepted != len(tt.delivered) {
				t.Errorf("stats: %d calls and %d requests dropped invalid, %d accepted; want %d, %d, %d",
					st.CallsDroppedInvalid, st.RequestsDroppedInvalid, st.CallsAccepted, len(tt.dropped), tt.droppedBodies, len(tt.delivered))
			}
			if r := lastRequest(t, s); r.Outcome != tt.outcome {
				t.Errorf("outcome %s, want %s", r.Outcome, tt.outcome)
			}
		})
	}
}

// TestCDPRule: Options.Rule refuses calls the documented rules let through,
// answered like any invalid call in the request's mode.
func TestCDPRule(t *testing.T) {
	s := newServer(t, func(o *ciotest.Options) {
		o.Rule = func(c ciotest.Call) error {
			if strings.HasPrefix(c.MessageID, "refused") {
				return errors.New("refused by the workspace")
			}
			return nil
		}
	})
	body := batch(trackCall(t, "fine", 150), trackCall(t, "refused-1", 150))
	a := postBatch(t, s, body)
	if a.status != 400 || !strings.Contains(errorMessage(t, a.body), `batch[1] (messageId "refused-1"): refused by the workspace`) {
		t.Fatalf("strict: %d %s, want 400 naming the refused call", a.status, a.body)
	}
	req := cdpRequest(t, s, "/batch", body)
	req.Header.Del(ciotest.StrictModeHeader)
	if a := do(t, req); a.status != 200 {
		t.Fatalf("permissive: %d %s, want 200", a.status, a.body)
	}
	if d, st := s.Delivered(), s.Stats(); len(d) != 1 || d[0].MessageID != "fine" || st.CallsDroppedInvalid != 1 {
		t.Fatalf("permissive: delivered %d (%v…), %d dropped; want only the fine call, 1 dropped", len(d), d, st.CallsDroppedInvalid)
	}
}

// TestFaultAfterApplying: Customer.io acts, and the answer is lost on the
// way (a gateway's 504, a dropped connection): the trigger exists and is
// listed, the calls are delivered, and the client sees only the fault.
func TestFaultAfterApplying(t *testing.T) {
	s := newServer(t, func(o *ciotest.Options) {
		o.Fault = func(r *ciotest.Request) *ciotest.Fault {
			switch {
			case strings.Contains(r.Path, "/campaigns/7/"):
				return &ciotest.Fault{Status: 504, Body: "<html>504 Gateway Time-out</html>", AfterApplying: true}
			case strings.Contains(r.Path, "/campaigns/8/"):
				return &ciotest.Fault{Reset: true, AfterApplying: true}
			case r.API == ciotest.APICDP:
				return &ciotest.Fault{Status: 502, AfterApplying: true}
			}
			return nil
		}
	})
	a := do(t, triggerRequest(t, s, "7", `{"ids":["u1"]}`, "Bearer "+appKey))
	if a.status != 504 || !strings.Contains(a.body, "504 Gateway") {
		t.Fatalf("trigger answered %d %q, want the fault's 504", a.status, a.body)
	}
	if resp, err := http.DefaultClient.Do(triggerRequest(t, s, "8", `{"ids":["u1"]}`, "Bearer "+appKey)); err == nil {
		resp.Body.Close()
		t.Fatalf("a reset answered %d, want a transport error", resp.StatusCode)
	}
	if a := postBatch(t, s, batch(trackCall(t, "lost-answer", 200))); a.status != 502 {
		t.Fatalf("batch answered %d, want the fault's 502", a.status)
	}
	trs := s.Triggers()
	if len(trs) != 2 || trs[0].BroadcastID != 7 || trs[1].BroadcastID != 8 {
		t.Fatalf("triggers %+v, want broadcasts 7 and 8 triggered although their answers were lost", trs)
	}
	if d := s.Delivered(); len(d) != 1 || d[0].MessageID != "lost-answer" {
		t.Fatalf("delivered %+v, want the call whose answer was lost", d)
	}
	// What was created is what the reads list.
	req, err := http.NewRequest(http.MethodGet, s.AppURL()+"/broadcasts/7/triggers", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+appKey)
	if a := do(t, req); a.status != 200 || !strings.Contains(a.body, `"id":1,"broadcast_id":7`) {
		t.Fatalf("GET triggers answered %d %s, want trigger 1 listed", a.status, a.body)
	}
	wantStatus := []int{504, 0, 502, 200}
	rs := s.Requests()
	for i, r := range rs {
		if i < len(wantStatus) && (r.Status != wantStatus[i] || (i < 3 && r.Outcome != ciotest.OutcomeAccepted)) {
			t.Errorf("request %d: %d %s, want %d, accepted", i, r.Status, r.Outcome, wantStatus[i])
		}
	}
}
