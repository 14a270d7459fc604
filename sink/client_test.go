package sink_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

func TestAPIString(t *testing.T) {
	for api, want := range map[sink.API]string{sink.APICDP: "cdp", sink.APIApp: "app", sink.APITrack: "track"} {
		if got := api.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", api, got, want)
		}
	}
}

// TestEveryClientAuthenticatesAndClassifiesAlike: the four clients share
// one request path, so each sends its credentials and the User-Agent, and
// turns the same refusal into the same *StatusError naming its own API.
func TestEveryClientAuthenticatesAndClassifiesAlike(t *testing.T) {
	const retryAfter = "7"
	s := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", SiteID: siteID, TrackKey: trackKey, AppKey: appKey,
		Fault: func(r *ciotest.Request) *ciotest.Fault {
			return &ciotest.Fault{Status: 403, RetryAfter: retryAfter, Body: `{"meta":{"errors":["not allowed"]}}`}
		}})
	clock := newFakeClock()
	reader, err := sink.NewAppReader(sink.AppReaderOptions{URL: s.AppURL(), APIKey: func() string { return appKey },
		UserAgent: "cio-relay/test", Client: sink.NewHTTPClient(1, 5*time.Second), Now: clock.Now, Sleep: clock.Sleep})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	clients := []struct {
		api  sink.API
		call func() error
	}{
		{sink.APICDP, func() error { return newCDP(t, s, "cdp").SendBatch(ctx, []byte(body)) }},
		{sink.APIApp, func() error {
			_, err := newApp(t, s, appKey).Trigger(ctx, 7, []byte(`{"ids":["u1"]}`))
			return err
		}},
		{sink.APIApp, func() error {
			_, err := reader.Segments(ctx)
			return err
		}},
		{sink.APITrack, func() error { return newTrack(t, s, siteID, trackKey).Suppress(ctx, "u1") }},
		{sink.APITrack, func() error { return newTrack(t, s, siteID, trackKey).ReportMetric(ctx, []byte(`{}`)) }},
	}
	for i, c := range clients {
		err := c.call()
		var se *sink.StatusError
		if !errors.As(err, &se) {
			t.Fatalf("client %d (%s): error %v, want a *StatusError", i, c.api, err)
		}
		if se.API != c.api || se.Status != 403 || se.Body != "not allowed" || se.RetryAfter != 7*time.Second {
			t.Errorf("client %d: %+v, want API %s, 403, the error text and Retry-After 7s", i, se, c.api)
		}
		if sink.Classify(err) != sink.Pause {
			t.Errorf("client %d: Classify = %s, want pause", i, sink.Classify(err))
		}
	}
	reqs := s.Requests()
	if len(reqs) != len(clients) {
		t.Fatalf("%d requests, want %d", len(reqs), len(clients))
	}
	for i, r := range reqs {
		if !r.AuthOK || r.Header.Get("User-Agent") != "cio-relay/test" {
			t.Errorf("request %d (%s %s): credentials right %v, User-Agent %q", i, r.Method, r.Path, r.AuthOK, r.Header.Get("User-Agent"))
		}
	}
}

// TestEveryClientReportsNoAnswerAlike: a connection reset is a
// *TransportError naming the API, from every client.
func TestEveryClientReportsNoAnswerAlike(t *testing.T) {
	s := directServer(t, func(*ciotest.Request) *ciotest.Fault { return &ciotest.Fault{Reset: true} })
	ctx := context.Background()
	for _, c := range []struct {
		api sink.API
		err error
	}{
		{sink.APICDP, newCDP(t, s, "cdp").SendBatch(ctx, []byte(body))},
		{sink.APIApp, func() error { _, err := newApp(t, s, appKey).Trigger(ctx, 7, []byte(`{}`)); return err }()},
		{sink.APITrack, newTrack(t, s, siteID, trackKey).Unsuppress(ctx, "u1")},
	} {
		var te *sink.TransportError
		if !errors.As(c.err, &te) || te.API != c.api || !sink.IsRetryable(c.err) {
			t.Errorf("%s: error %v, want a retryable *TransportError naming the API", c.api, c.err)
		}
	}
}
