package ciotest_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// TestDeliveryEndpoints: POST /unsubscribe/{delivery_id} at the host root
// and POST /api/v1/metrics need no credentials, ignore any sent, and
// refuse what Customer.io would (400 for a malformed delivery id, a missing
// field, a timestamp in milliseconds).
func TestDeliveryEndpoints(t *testing.T) {
	s := newServer(t)
	root := strings.TrimSuffix(s.TrackURL(), "/api/v1")
	post := func(t *testing.T, method, url, body string, mod func(*http.Request)) answer {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if mod != nil {
			mod(req)
		}
		return do(t, req)
	}
	wrongKey := func(r *http.Request) { r.SetBasicAuth(siteID, "nope") }
	noType := func(r *http.Request) { r.Header.Del("Content-Type") }
	tests := []struct {
		name, method, url, body string
		mod                     func(*http.Request)
		status                  int
	}{
		{"unsubscribe", "POST", root + "/unsubscribe/RPILAgAB-_=", `{"unsubscribe":true}`, nil, 200},
		{"resubscribe with a wrong key", "POST", root + "/unsubscribe/RPILAgAB", `{"unsubscribe":false}`, wrongKey, 200},
		{"unsubscribe under /api/v1", "POST", s.TrackURL() + "/unsubscribe/RPILAgAB", `{"unsubscribe":true}`, nil, 404},
		{"malformed delivery id", "POST", root + "/unsubscribe/not%20an%20id", `{"unsubscribe":true}`, nil, 400},
		{"unsubscribe not a boolean", "POST", root + "/unsubscribe/RPILAgAB", `{"unsubscribe":"yes"}`, nil, 400},
		{"unsubscribe missing", "POST", root + "/unsubscribe/RPILAgAB", `{}`, nil, 400},
		{"unsubscribe without Content-Type", "POST", root + "/unsubscribe/RPILAgAB", `{"unsubscribe":true}`, noType, 400},
		{"unsubscribe GET", "GET", root + "/unsubscribe/RPILAgAB", ``, nil, 405},
		{"metric", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","metric":"clicked","timestamp":1700000000,"href":"https://x.io","recipient":"a@x.io"}`, nil, 200},
		{"sms metric, recipient a number", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","metric":"delivered","recipient":15551234567}`, nil, 200},
		{"recipient a fraction", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","metric":"delivered","recipient":1.5}`, nil, 400},
		{"recipient a boolean", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","metric":"delivered","recipient":true}`, nil, 400},
		{"metric with a wrong key", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","metric":"opened"}`, wrongKey, 200},
		{"metric in milliseconds", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","metric":"opened","timestamp":1700000000000}`, nil, 400},
		{"metric without delivery id", "POST", s.TrackURL() + "/metrics", `{"metric":"opened"}`, nil, 400},
		{"metric without metric", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB"}`, nil, 400},
		{"unknown metric", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","metric":"read"}`, nil, 400},
		{"legacy push shape", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"RPILAgAB","event":"opened","device_id":"t"}`, nil, 400},
		{"malformed delivery id in a metric", "POST", s.TrackURL() + "/metrics", `{"delivery_id":"a b","metric":"opened"}`, nil, 400},
		{"deprecated push endpoint", "POST", s.TrackURL() + "/push/events", `{"delivery_id":"RPILAgAB","event":"opened"}`, nil, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a := post(t, tt.method, tt.url, tt.body, tt.mod); a.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", a.status, tt.status, a.body)
			}
		})
	}
	unsubs := s.Unsubscribes()
	if len(unsubs) != 2 || unsubs[0] != (ciotest.Unsubscribe{DeliveryID: "RPILAgAB-_=", Unsubscribe: true, Time: unsubs[0].Time}) ||
		unsubs[1].Unsubscribe || unsubs[1].DeliveryID != "RPILAgAB" {
		t.Errorf("unsubscribes %+v", unsubs)
	}
	ms := s.Metrics()
	if len(ms) != 3 || ms[0].Metric != "clicked" || ms[0].Timestamp != 1700000000 || ms[0].Href != "https://x.io" || ms[0].Recipient != "a@x.io" ||
		ms[1].Metric != "delivered" || ms[1].Recipient != "15551234567" || ms[2].Metric != "opened" || ms[2].Timestamp != 0 {
		t.Errorf("metrics %+v", ms)
	}
}
