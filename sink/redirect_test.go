package sink_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

// TestRedirectsAreNeverFollowed: every API answers each redirect status
// with a Location pointing at a URL that answers 200 to anything. A client
// that followed it would report success for a request Customer.io never
// saw (301/302/303 even turn the POST into a bodyless GET). Each client
// must stop at the 3xx, report it as a configuration problem (Pause), and
// say where the URL redirects without the Location's credentials, query
// or fragment, nor a suppression's identifier.
func TestRedirectsAreNeverFollowed(t *testing.T) {
	const identifier = "alice+redirect@example.com"
	apis := []struct {
		api  sink.API
		path string // appended to the moved base in Location
		call func(t *testing.T, s *ciotest.Server) error
	}{
		{sink.APICDP, "/v1/batch", func(t *testing.T, s *ciotest.Server) error {
			return newCDP(t, s, "cdp").SendBatch(context.Background(), []byte(body))
		}},
		{sink.APIApp, "/v1/campaigns/7/triggers", func(t *testing.T, s *ciotest.Server) error {
			_, err := newApp(t, s, appKey).Trigger(context.Background(), 7, []byte(`{"ids":["u1"]}`))
			return err
		}},
		{sink.APITrack, "/api/v1/customers/alice+redirect@example.com/suppress", func(t *testing.T, s *ciotest.Server) error {
			return newTrack(t, s, siteID, trackKey).Suppress(context.Background(), identifier)
		}},
	}
	for _, a := range apis {
		for _, status := range []int{301, 302, 303, 307, 308} {
			t.Run(a.api.String()+"/"+strconv.Itoa(status), func(t *testing.T) {
				var s *ciotest.Server
				s = directServer(t, func(r *ciotest.Request) *ciotest.Fault {
					if r.API == ciotest.APIMoved {
						return nil
					}
					moved := strings.Replace(s.MovedURL(), "http://", "http://user:hunter2@", 1)
					return &ciotest.Fault{Status: status, Location: moved + a.path + "?api_key=hunter2#frag"}
				})
				err := a.call(t, s)
				st := s.Stats()
				if n := st.ByOutcome[ciotest.OutcomeMoved]; n != 0 {
					t.Errorf("the redirect was followed: %d requests reached the redirect target", n)
				}
				if st.Requests != 1 {
					t.Errorf("%d requests, want 1", st.Requests)
				}
				var se *sink.StatusError
				if !errors.As(err, &se) || se.Status != status || se.API != a.api {
					t.Fatalf("error = %v, want a %s *StatusError %d", err, a.api, status)
				}
				if c := sink.Classify(err); c != sink.Pause {
					t.Errorf("Classify = %s, want pause: a redirect is a configuration problem", c)
				}
				msg := err.Error()
				wantLoc := strings.TrimPrefix(s.MovedURL(), "http://")
				if !strings.Contains(msg, "redirects to") || !strings.Contains(msg, wantLoc) {
					t.Errorf("error %q does not say the URL redirects to %s", msg, wantLoc)
				}
				for _, secret := range []string{"hunter2", "api_key", "frag", identifier, "alice"} {
					if strings.Contains(msg, secret) {
						t.Errorf("error %q reveals %q", msg, secret)
					}
				}
			})
		}
	}
}

// TestRedirectsRefusedWhateverTheClient: a client handed to the sink that
// would follow redirects (http.Client's default) is not trusted to refuse
// them.
func TestRedirectsRefusedWhateverTheClient(t *testing.T) {
	var s *ciotest.Server
	s = ciotest.NewServer(t, ciotest.Options{CDPKey: "k", Fault: func(r *ciotest.Request) *ciotest.Fault {
		if r.API == ciotest.APIMoved {
			return nil
		}
		return &ciotest.Fault{Status: 302, Location: s.MovedURL() + "/v1/batch"}
	}})
	follows := &http.Client{Timeout: 5 * time.Second}
	c, err := sink.NewCDP(sink.CDPOptions{URL: s.CDPURL(), APIKey: func() string { return "k" }, Client: follows})
	if err != nil {
		t.Fatal(err)
	}
	err = c.SendBatch(context.Background(), []byte(body))
	if sink.StatusOf(err) != 302 || s.Stats().ByOutcome[ciotest.OutcomeMoved] != 0 {
		t.Fatalf("SendBatch = %v, %d requests to the redirect target; want the 302, none", err, s.Stats().ByOutcome[ciotest.OutcomeMoved])
	}
	if follows.CheckRedirect != nil {
		t.Error("the caller's client was modified")
	}
}
