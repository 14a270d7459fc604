package sink_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

const (
	siteID   = "site-1"
	trackKey = "track-key"
	appKey   = "app-key"
)

func newTrack(t *testing.T, s *ciotest.Server, site, key string) *sink.Track {
	t.Helper()
	return must[*sink.Track](t)(sink.NewTrack(sink.TrackOptions{URL: s.TrackURL(), SiteID: site, APIKey: keyOf(key), UserAgent: testUA, Client: testClient()}))
}

func newApp(t *testing.T, s *ciotest.Server, key string) *sink.App {
	t.Helper()
	return must[*sink.App](t)(sink.NewApp(sink.AppOptions{URL: s.AppURL(), APIKey: keyOf(key), UserAgent: testUA, Client: testClient()}))
}

func directServer(t *testing.T, fault func(*ciotest.Request) *ciotest.Fault) *ciotest.Server {
	t.Helper()
	return ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", SiteID: siteID, TrackKey: trackKey, AppKey: appKey, Fault: fault})
}

func TestTrackSuppressions(t *testing.T) {
	tests := []struct {
		id   string
		path string // escaped identifier segment on the wire
	}{
		{"a+b@x.io", "a%2Bb@x.io"},
		{"ünï/cödé", "%C3%BCn%C3%AF%2Fc%C3%B6d%C3%A9"},
		{"cio_abc123", "cio_abc123"},
		{"a b?c#d%e", "a%20b%3Fc%23d%25e"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			s := directServer(t, nil)
			c := newTrack(t, s, siteID, trackKey)
			ctx := context.Background()
			if err := c.Suppress(ctx, tt.id); err != nil {
				t.Fatalf("Suppress: %v", err)
			}
			if err := c.Unsuppress(ctx, tt.id); err != nil {
				t.Fatalf("Unsuppress: %v", err)
			}
			got := s.Suppressions()
			if len(got) != 2 || got[0].Action != "suppress" || got[1].Action != "unsuppress" ||
				got[0].Identifier != tt.id || got[1].Identifier != tt.id {
				t.Fatalf("stand-in recorded %+v, want suppress then unsuppress of %q", got, tt.id)
			}
			reqs := s.Requests()
			for i, action := range []string{"suppress", "unsuppress"} {
				if want := "/api/v1/customers/" + tt.path + "/" + action; reqs[i].Path != want {
					t.Errorf("path %q, want %q", reqs[i].Path, want)
				}
				if ua := reqs[i].Header.Get("User-Agent"); ua != "cio-relay/test" {
					t.Errorf("User-Agent %q", ua)
				}
			}
		})
	}
}

func TestTrackErrors(t *testing.T) {
	tests := []struct {
		name      string
		site, key string
		id        string
		fault     *ciotest.Fault
		status    int          // *StatusError; 0: see reason
		reason    event.Reason // *event.InvalidError, nothing sent
		retryable bool
	}{
		{name: "wrong key", site: siteID, key: "nope", id: "u1", status: 401},
		{name: "wrong site", site: "site-2", key: trackKey, id: "u1", status: 401},
		{name: "rate limited", site: siteID, key: trackKey, id: "u1", fault: &ciotest.Fault{Status: 429, RetryAfter: "2"}, status: 429, retryable: true},
		{name: "blank identifier", site: siteID, key: trackKey, id: " ", reason: sink.ReasonInvalidIdentifier},
		{name: "dot segment", site: siteID, key: trackKey, id: "..", reason: sink.ReasonInvalidIdentifier},
		{name: "control character", site: siteID, key: trackKey, id: "a\nb", reason: sink.ReasonInvalidIdentifier},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := directServer(t, func(*ciotest.Request) *ciotest.Fault { return tt.fault })
			err := newTrack(t, s, tt.site, tt.key).Suppress(context.Background(), tt.id)
			if tt.reason != "" {
				var inv *event.InvalidError
				if !errors.As(err, &inv) || inv.Reason != tt.reason {
					t.Fatalf("Suppress = %v, want reason %s", err, tt.reason)
				}
				if n := len(s.Requests()); n != 0 {
					t.Fatalf("%d requests sent for an invalid identifier", n)
				}
				return
			}
			var se *sink.StatusError
			if !errors.As(err, &se) || se.Status != tt.status || se.API != "track" {
				t.Fatalf("Suppress = %v, want a track *StatusError %d", err, tt.status)
			}
			if sink.IsRetryable(err) != tt.retryable {
				t.Errorf("IsRetryable = %v", !tt.retryable)
			}
			if strings.Contains(err.Error(), tt.id) || strings.Contains(err.Error(), tt.key) {
				t.Errorf("error reveals the identifier or key: %v", err)
			}
			if len(s.Suppressions()) != 0 {
				t.Error("a refused suppression was recorded")
			}
		})
	}
}

func TestParseSuppression(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		want   string
		reason event.Reason
	}{
		{name: "email", body: `{"identifier":"a+b@x.io"}`, want: "a+b@x.io"},
		{name: "unicode and slash", body: `{"identifier":"\u00fcn\u00ef/c\u00f6d\u00e9"}`, want: "ünï/cödé"},
		{name: "other members ignored", body: `{"reason":"gdpr","identifier":"cio_abc123"}`, want: "cio_abc123"},
		{name: "at the byte limit", body: `{"identifier":"` + strings.Repeat("é", sink.MaxIdentifierBytes/2) + `"}`, want: strings.Repeat("é", sink.MaxIdentifierBytes/2)},

		{name: "not json", body: `{"identifier":`, reason: event.ReasonInvalidJSON},
		{name: "not an object", body: `"u1"`, reason: event.ReasonInvalidJSON},
		{name: "trailing data", body: `{"identifier":"u1"}x`, reason: event.ReasonInvalidJSON},
		{name: "invalid utf-8", body: "{\"identifier\":\"\xff\"}", reason: event.ReasonInvalidUTF8},
		{name: "missing", body: `{"id":"u1"}`, reason: sink.ReasonInvalidIdentifier},
		{name: "repeated", body: `{"identifier":"u1","identifier":"u2"}`, reason: sink.ReasonInvalidIdentifier},
		{name: "a number", body: `{"identifier":42}`, reason: sink.ReasonInvalidIdentifier},
		{name: "null", body: `{"identifier":null}`, reason: sink.ReasonInvalidIdentifier},
		{name: "empty", body: `{"identifier":""}`, reason: sink.ReasonInvalidIdentifier},
		{name: "blank", body: `{"identifier":" \t"}`, reason: sink.ReasonInvalidIdentifier},
		{name: "too long", body: `{"identifier":"` + strings.Repeat("a", sink.MaxIdentifierBytes+1) + `"}`, reason: sink.ReasonInvalidIdentifier},
		{name: "control character", body: `{"identifier":"u1\u0000"}`, reason: sink.ReasonInvalidIdentifier},
		{name: "C1 control character", body: `{"identifier":"u1\u0085"}`, reason: sink.ReasonInvalidIdentifier},
		{name: "dot", body: `{"identifier":"."}`, reason: sink.ReasonInvalidIdentifier},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sink.ParseSuppression([]byte(tt.body))
			if tt.reason == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ParseSuppression = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			var inv *event.InvalidError
			if !errors.As(err, &inv) || inv.Reason != tt.reason {
				t.Fatalf("ParseSuppression = %q, %v; want reason %s", got, err, tt.reason)
			}
		})
	}
}

func TestHashIdentifier(t *testing.T) {
	a, b := sink.HashIdentifier("a@x.io"), sink.HashIdentifier("b@x.io")
	if len(a) != 16 || strings.Trim(a, "0123456789abcdef") != "" {
		t.Fatalf("HashIdentifier = %q, want 16 hex digits", a)
	}
	if a == b || a != sink.HashIdentifier("a@x.io") {
		t.Fatalf("hashes %q %q: want stable and distinct", a, b)
	}
	// The first 8 bytes of SHA-256("a@x.io"), so logs can be matched by
	// anyone who can compute it (printf a@x.io | sha256sum).
	if want := "aa8a6b1226018606"; a != want {
		t.Errorf("HashIdentifier(a@x.io) = %s, want %s", a, want)
	}
}

func TestAppTrigger(t *testing.T) {
	s := directServer(t, nil)
	c := newApp(t, s, appKey)
	ctx := context.Background()
	body := []byte(`{"ids":["u1"],"data":{"s":"<&>"}}`)
	for i, bid := range []int64{7, 8} {
		id, err := c.Trigger(ctx, bid, body)
		if err != nil {
			t.Fatalf("Trigger(%d): %v", bid, err)
		}
		if id != int64(i+1) {
			t.Errorf("Trigger(%d) = id %d, want %d", bid, id, i+1)
		}
	}
	tr := s.Triggers()
	if len(tr) != 2 || tr[0].BroadcastID != 7 || string(tr[0].Body) != string(body) {
		t.Fatalf("stand-in recorded %+v", tr)
	}
	req := s.Requests()[0]
	if req.Path != "/v1/campaigns/7/triggers" {
		t.Errorf("path %q", req.Path)
	}
	for h, want := range map[string]string{"Authorization": "Bearer " + appKey, "Content-Type": "application/json", "User-Agent": "cio-relay/test"} {
		if got := req.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
}

func TestAppTriggerAnswers(t *testing.T) {
	tests := []struct {
		name       string
		key        string
		fault      *ciotest.Fault
		second     bool // trigger broadcast 7 once before, so this one is 429
		id         int64
		status     int // 0: success, -1: transport error
		retryAfter time.Duration
	}{
		{name: "extra members", key: appKey, fault: &ciotest.Fault{Status: 200, Body: `{"meta":{},"id":42,"state":"queued"}`}, id: 42},
		{name: "id as a string", key: appKey, fault: &ciotest.Fault{Status: 201, Body: `{"id":"43"}`}, id: 43},
		{name: "no id: accepted all the same", key: appKey, fault: &ciotest.Fault{Status: 200, Body: `{}`}, id: 0},
		{name: "not json: accepted all the same", key: appKey, fault: &ciotest.Fault{Status: 200, Body: `ok`}, id: 0},
		{name: "wrong key", key: "nope", status: 401},
		{name: "rate limited by the stand-in", key: appKey, second: true, status: 429, retryAfter: 10 * time.Second},
		{name: "server error", key: appKey, fault: &ciotest.Fault{Status: 503}, status: 503},
		{name: "connection reset", key: appKey, fault: &ciotest.Fault{Reset: true}, status: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := directServer(t, func(*ciotest.Request) *ciotest.Fault { return tt.fault })
			c := newApp(t, s, tt.key)
			ctx := context.Background()
			if tt.second {
				if _, err := c.Trigger(ctx, 7, []byte(`{"ids":["u0"]}`)); err != nil {
					t.Fatal(err)
				}
			}
			id, err := c.Trigger(ctx, 7, []byte(`{"ids":["u1"]}`))
			var se *sink.StatusError
			var te *sink.TransportError
			switch {
			case tt.status == 0:
				if err != nil || id != tt.id {
					t.Fatalf("Trigger = %d, %v; want %d", id, err, tt.id)
				}
			case tt.status < 0:
				if !errors.As(err, &te) || te.API != "app" {
					t.Fatalf("Trigger = %v, want an app *TransportError", err)
				}
			default:
				if !errors.As(err, &se) || se.API != "app" || se.Status != tt.status || se.RetryAfter != tt.retryAfter {
					t.Fatalf("Trigger = %v, want app status %d retry-after %v", err, tt.status, tt.retryAfter)
				}
				if strings.Contains(err.Error(), tt.key) {
					t.Errorf("error reveals the key: %v", err)
				}
			}
		})
	}
}

func TestAppTriggerRefusesBadBroadcastID(t *testing.T) {
	s := directServer(t, nil)
	if _, err := newApp(t, s, appKey).Trigger(context.Background(), 0, []byte(`{}`)); err == nil {
		t.Fatal("Trigger(0) succeeded")
	}
	if n := len(s.Requests()); n != 0 {
		t.Fatalf("%d requests sent", n)
	}
}

func TestNewDirectClientsNeedOptions(t *testing.T) {
	key := func() string { return "k" }
	client := &http.Client{}
	tests := []struct {
		name string
		err  error
	}{
		{"track without site", second(sink.NewTrack(sink.TrackOptions{URL: "u", APIKey: key, Client: client}))},
		{"track without key", second(sink.NewTrack(sink.TrackOptions{URL: "u", SiteID: "s", Client: client}))},
		{"app without url", second(sink.NewApp(sink.AppOptions{APIKey: key, Client: client}))},
		{"app without client", second(sink.NewApp(sink.AppOptions{URL: "u", APIKey: key}))},
	}
	for _, tt := range tests {
		if tt.err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

func second[T any](_ T, err error) error { return err }

// TestTrackErrorsNeverCarryTheIdentifier: an unreachable Track API must not
// put the identifier (often an email) in the error, which is logged and
// written to dead-letter headers.
func TestTrackErrorsNeverCarryTheIdentifier(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	tr, err := sink.NewTrack(sink.TrackOptions{URL: "http://" + addr + "/api/v1", SiteID: "site", APIKey: func() string { return "k" },
		Client: &http.Client{Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	err = tr.Suppress(context.Background(), "jane.doe@example.com")
	var te *sink.TransportError
	if !errors.As(err, &te) {
		t.Fatalf("Suppress = %v, want a *TransportError", err)
	}
	if strings.Contains(err.Error(), "jane.doe") {
		t.Errorf("error reveals the identifier: %v", err)
	}
}

// FuzzParseSuppression: any body yields an identifier that can go in a URL
// path and come back unchanged, or an *event.InvalidError; nothing panics.
func FuzzParseSuppression(f *testing.F) {
	for _, s := range []string{`{"identifier":"a+b@x.io"}`, `{"identifier":"ünï/cödé"}`, `{"identifier":"cio_abc"}`,
		`{"identifier":""}`, `{"identifier":"."}`, `{"identifier":1}`, `{}`, `x`, "{\"identifier\":\"a\x01\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		id, err := sink.ParseSuppression(body)
		if err != nil {
			var ie *event.InvalidError
			if !errors.As(err, &ie) || ie.Reason == "" {
				t.Fatalf("error %v is not an *event.InvalidError with a reason", err)
			}
			return
		}
		if id == "" || len(id) > sink.MaxIdentifierBytes || !utf8.ValidString(id) {
			t.Fatalf("accepted identifier %q", id)
		}
		back, err := url.PathUnescape(url.PathEscape(id))
		if err != nil || back != id {
			t.Fatalf("identifier %q does not survive path escaping: %q, %v", id, back, err)
		}
	})
}
