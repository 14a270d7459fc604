package sink_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

// testUA is the User-Agent the test clients send.
const testUA = "cio-relay/test"

// testClient is the HTTP client of the test clients.
func testClient() *http.Client { return sink.NewHTTPClient(2, 5*time.Second) }

// keyOf is an API key source that always returns key.
func keyOf(key string) func() string { return func() string { return key } }

// must returns a constructor's result, failing the test on its error:
// must(t)(sink.NewCDP(…)).
func must[T any](t *testing.T) func(T, error) T {
	return func(c T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

func newCDP(t *testing.T, s *ciotest.Server, key string) *sink.CDP {
	t.Helper()
	return must[*sink.CDP](t)(sink.NewCDP(sink.CDPOptions{URL: s.CDPURL(), APIKey: keyOf(key), UserAgent: testUA, Client: testClient()}))
}

const body = `{"batch":[{"type":"track","messageId":"m1","userId":"u","event":"e <&>"}]}`

func TestSendBatchDelivers(t *testing.T) {
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "k"})
	if err := newCDP(t, s, "k").SendBatch(context.Background(), []byte(body)); err != nil {
		t.Fatalf("SendBatch: %v", err)
	}
	d := s.Delivered()
	if len(d) != 1 || d[0].MessageID != "m1" {
		t.Fatalf("delivered %+v", d)
	}
	req := s.Requests()[0]
	if ua := req.Header.Get("User-Agent"); ua != "cio-relay/test" {
		t.Errorf("User-Agent = %q", ua)
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if req.Path != "/v1/batch" {
		t.Errorf("path = %q, want /v1/batch", req.Path)
	}
}

func TestSendBatchErrors(t *testing.T) {
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	tests := []struct {
		name       string
		key        string
		fault      *ciotest.Fault
		status     int // 0: transport error
		retryable  bool
		retryAfter time.Duration
		bodyHas    string
	}{
		{name: "wrong key", key: "nope", status: 401, retryable: false},
		{name: "rate limited", key: "k", fault: &ciotest.Fault{Status: 429, RetryAfter: "7"}, status: 429, retryable: true, retryAfter: 7 * time.Second},
		{name: "retry-after in the past", key: "k", fault: &ciotest.Fault{Status: 429, RetryAfter: past}, status: 429, retryable: true},
		{name: "server error", key: "k", fault: &ciotest.Fault{Status: 502, Body: "bad gateway"}, status: 502, retryable: true, bodyHas: "bad gateway"},
		{name: "bad request", key: "k", fault: &ciotest.Fault{Status: 400, Body: strings.Repeat("x", 5000)}, status: 400, retryable: false, bodyHas: "xxx"},
		{name: "connection reset", key: "k", fault: &ciotest.Fault{Reset: true}, retryable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ciotest.NewServer(t, ciotest.Options{CDPKey: "k", Fault: func(*ciotest.Request) *ciotest.Fault { return tt.fault }})
			err := newCDP(t, s, tt.key).SendBatch(context.Background(), []byte(body))
			if err == nil {
				t.Fatal("SendBatch succeeded")
			}
			if got := sink.IsRetryable(err); got != tt.retryable {
				t.Errorf("IsRetryable = %v, want %v (%v)", got, tt.retryable, err)
			}
			var se *sink.StatusError
			var te *sink.TransportError
			switch {
			case tt.status == 0:
				if !errors.As(err, &te) {
					t.Fatalf("error %v is not a *TransportError", err)
				}
			case !errors.As(err, &se):
				t.Fatalf("error %v is not a *StatusError", err)
			default:
				if se.Status != tt.status || se.RetryAfter != tt.retryAfter {
					t.Errorf("status %d retry-after %v, want %d %v", se.Status, se.RetryAfter, tt.status, tt.retryAfter)
				}
				if !strings.Contains(se.Body, tt.bodyHas) || len(se.Body) > 600 {
					t.Errorf("body %q (%d bytes): want it to contain %q and be trimmed", se.Body[:min(len(se.Body), 80)], len(se.Body), tt.bodyHas)
				}
			}
			if strings.Contains(err.Error(), tt.key) && tt.key != "k" {
				t.Errorf("error reveals the API key: %v", err)
			}
		})
	}
}

func TestSendBatchCancelled(t *testing.T) {
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "k"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := newCDP(t, s, "k").SendBatch(ctx, []byte(body))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("SendBatch on a cancelled context = %v, want context.Canceled", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-5", 0},
		{"12", 12 * time.Second},
		{" 3 ", 3 * time.Second},
		{"999999999", 24 * time.Hour},
		{"soon", 0},
		{"Sun, 29 Nov 2026 12:00:30 GMT", 30 * time.Second},
		{"Sun, 29 Nov 2026 11:00:00 GMT", 0},
	}
	for _, tt := range tests {
		if got := sink.ParseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestDryRunWritesOneLinePerBatch(t *testing.T) {
	var b strings.Builder
	d := sink.NewDryRun(&b)
	for range 2 {
		if err := d.SendBatch(context.Background(), []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if want := body + "\n" + body + "\n"; b.String() != want {
		t.Fatalf("dry run wrote %q", b.String())
	}
}

func TestClassify(t *testing.T) {
	dial := &sink.TransportError{API: "app", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	reset := &sink.TransportError{API: "app", Err: &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}}
	tests := []struct {
		name  string
		err   error
		class sink.Class
		maybe bool // MaybeDelivered
	}{
		{"ok", nil, sink.Delivered, false},
		{"429", &sink.StatusError{API: "cdp", Status: 429}, sink.Retry, false},
		{"503", &sink.StatusError{API: "cdp", Status: 503}, sink.Retry, false},
		{"408", &sink.StatusError{API: "cdp", Status: 408}, sink.Retry, false},
		{"401", &sink.StatusError{API: "cdp", Status: 401}, sink.Pause, false},
		{"403", &sink.StatusError{API: "track", Status: 403}, sink.Pause, false},
		{"404 from CDP: the URL", &sink.StatusError{API: "cdp", Status: 404}, sink.Pause, false},
		{"404 from the App API: no such broadcast", &sink.StatusError{API: "app", Status: 404}, sink.Reject, false},
		{"301 from CDP: the URL", &sink.StatusError{API: "cdp", Status: 301}, sink.Pause, false},
		{"307 from the App API: the URL", &sink.StatusError{API: "app", Status: 307}, sink.Pause, false},
		{"308 from the Track API: the URL", &sink.StatusError{API: "track", Status: 308}, sink.Pause, false},
		{"400", &sink.StatusError{API: "cdp", Status: 400}, sink.Reject, false},
		{"422", &sink.StatusError{API: "app", Status: 422}, sink.Reject, false},
		{"connect failed", dial, sink.Retry, false},
		{"reset after sending", reset, sink.Retry, true},
		{"cancelled", fmt.Errorf("x: %w", context.Canceled), sink.Cancelled, false},
	}
	for _, tt := range tests {
		if got := sink.Classify(tt.err); got != tt.class {
			t.Errorf("%s: Classify = %v, want %v", tt.name, got, tt.class)
		}
		if got := sink.MaybeDelivered(tt.err); got != tt.maybe {
			t.Errorf("%s: MaybeDelivered = %v, want %v", tt.name, got, tt.maybe)
		}
	}
}

// TestSendBatchStrictMode: every CDP request asks for strict validation
// unless Permissive is set, and a strict 400's {"meta":{"errors":[…]}} is
// reported as its messages.
func TestSendBatchStrictMode(t *testing.T) {
	bad := `{"batch":[{"type":"track","messageId":"m1","userId":"u","event":"e","traits":"vip"},` +
		`{"type":"track","messageId":"m2","userId":"u","event":"e","timestamp":"noon"}]}`
	for _, permissive := range []bool{false, true} {
		t.Run(fmt.Sprintf("permissive=%v", permissive), func(t *testing.T) {
			s := ciotest.NewServer(t, ciotest.Options{CDPKey: "k"})
			c, err := sink.NewCDP(sink.CDPOptions{URL: s.CDPURL(), APIKey: func() string { return "k" },
				Client: sink.NewHTTPClient(1, 5*time.Second), Permissive: permissive})
			if err != nil {
				t.Fatal(err)
			}
			err = c.SendBatch(context.Background(), []byte(bad))
			got := s.Requests()[0].Header.Get(sink.StrictModeHeader)
			if permissive {
				if got != "" || err != nil || s.Stats().CallsDroppedInvalid != 2 {
					t.Fatalf("permissive: header %q, err %v, %d dropped; want none, nil (the loss strict mode prevents), 2", got, err, s.Stats().CallsDroppedInvalid)
				}
				return
			}
			if got != "1" {
				t.Fatalf("%s = %q, want 1", sink.StrictModeHeader, got)
			}
			var se *sink.StatusError
			if !errors.As(err, &se) || se.Status != 400 || sink.Classify(err) != sink.Reject {
				t.Fatalf("SendBatch = %v, want a 400 rejection", err)
			}
			want := `batch[0] (messageId "m1"): traits must be an object, not string; batch[1] (messageId "m2"): timestamp "noon" is not an ISO 8601 date-time`
			if se.Body != want {
				t.Errorf("Body = %q, want the errors' messages %q", se.Body, want)
			}
		})
	}
}

// TestStatusErrorBodies: the CDP API's error list is read even when longer
// than what is kept; other shapes are kept as they are.
func TestStatusErrorBodies(t *testing.T) {
	many := make([]string, 100)
	for i := range many {
		many[i] = fmt.Sprintf(`"batch[%d]: bad"`, i)
	}
	tests := []struct {
		name, body, want string
	}{
		{"errors", `{"meta":{"errors":["one","two"]}}`, "one; two"},
		{"long errors", `{"meta":{"errors":[` + strings.Join(many, ",") + `]}}`, "batch[0]: bad; batch[1]: bad"},
		{"other JSON", `{"error":"bad call"}`, `{"error":"bad call"}`},
		{"empty errors", `{"meta":{"errors":[]}}`, `{"meta":{"errors":[]}}`},
		{"text", "nope", "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ciotest.NewServer(t, ciotest.Options{CDPKey: "k", Fault: func(*ciotest.Request) *ciotest.Fault {
				return &ciotest.Fault{Status: 400, Body: tt.body}
			}})
			var se *sink.StatusError
			if err := newCDP(t, s, "k").SendBatch(context.Background(), []byte(body)); !errors.As(err, &se) {
				t.Fatalf("SendBatch = %v", err)
			}
			if !strings.HasPrefix(se.Body, tt.want) || len(se.Body) > 512+len("…") {
				t.Errorf("Body = %q (%d bytes), want it to start %q, at most 512 bytes", se.Body, len(se.Body), tt.want)
			}
		})
	}
}
