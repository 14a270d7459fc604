package sink_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

func reasonOf(err error) event.Reason {
	var ie *event.InvalidError
	if errors.As(err, &ie) {
		return ie.Reason
	}
	return ""
}

func TestParseUnsubscribe(t *testing.T) {
	tests := []struct {
		body   string
		want   sink.Unsubscribe
		reason event.Reason
	}{
		{`{"delivery_id":"RPILAgABcRhIBqSp7kiPekGBIeVh"}`, sink.Unsubscribe{DeliveryID: "RPILAgABcRhIBqSp7kiPekGBIeVh", Unsubscribe: true}, ""},
		{`{"delivery_id":"d1","unsubscribe":true}`, sink.Unsubscribe{DeliveryID: "d1", Unsubscribe: true}, ""},
		{`{"delivery_id":"d1","unsubscribe":false,"type":"x"}`, sink.Unsubscribe{DeliveryID: "d1"}, ""},
		{`{"delivery_id":"d1","unsubscribe":null}`, sink.Unsubscribe{DeliveryID: "d1", Unsubscribe: true}, ""},
		{`{"delivery_id":"d1","unsubscribe":"false"}`, sink.Unsubscribe{}, event.ReasonInvalidField},
		{`{"delivery_id":"d1","unsubscribe":true,"unsubscribe":false}`, sink.Unsubscribe{}, event.ReasonInvalidField},
		{`{"unsubscribe":true}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`{"delivery_id":""}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`{"delivery_id":" "}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`{"delivery_id":42}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`{"delivery_id":".."}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`{"delivery_id":"a\u0000b"}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`{"delivery_id":"a","delivery_id":"b"}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`{"delivery_id":"` + strings.Repeat("x", sink.MaxDeliveryIDBytes+1) + `"}`, sink.Unsubscribe{}, sink.ReasonInvalidDeliveryID},
		{`[]`, sink.Unsubscribe{}, event.ReasonInvalidJSON},
		{`{"delivery_id":"d1"} x`, sink.Unsubscribe{}, event.ReasonInvalidJSON},
		{"{\"delivery_id\":\"\xff\"}", sink.Unsubscribe{}, event.ReasonInvalidUTF8},
	}
	for _, tt := range tests {
		got, err := sink.ParseUnsubscribe([]byte(tt.body))
		if r := reasonOf(err); r != tt.reason || (err != nil && tt.reason == "") {
			t.Errorf("ParseUnsubscribe(%.60s) error %v, want reason %q", tt.body, err, tt.reason)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("ParseUnsubscribe(%.60s) = %+v, want %+v", tt.body, got, tt.want)
		}
	}
}

func TestParseMetric(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		want   string // Body(at) as JSON; "" when invalid
		reason event.Reason
	}{
		{"email click", `{"delivery_id":"d1","metric":"clicked","timestamp":1700000000,"recipient":"a@x.io","href":"https://x.io/?a=1&b=<2>"}`,
			`{"delivery_id":"d1","metric":"clicked","timestamp":1700000000,"recipient":"a@x.io","href":"https://x.io/?a=1\u0026b=\u003c2\u003e"}`, ""},
		{"bounce with reason", `{"delivery_id":"d1","metric":"bounced","timestamp":1700000000,"reason":"mailbox full"}`,
			`{"delivery_id":"d1","metric":"bounced","timestamp":1700000000,"reason":"mailbox full"}`, ""},
		{"no timestamp: the publish time", `{"delivery_id":"d1","metric":"opened"}`,
			`{"delivery_id":"d1","metric":"opened","timestamp":1600000000}`, ""},
		{"in-app metadata passes", `{"delivery_id":"d1","metric":"clicked","metadata":{"action_name":"buy"}}`,
			`{"delivery_id":"d1","metric":"clicked","timestamp":1600000000,"metadata":{"action_name":"buy"}}`, ""},
		{"legacy push event", `{"delivery_id":"d1","event":"opened","device_id":"tok-123","timestamp":1700000000}`,
			`{"delivery_id":"d1","metric":"opened","timestamp":1700000000,"recipient":"tok-123"}`, ""},
		{"sms recipient a phone number, as the reference types it", `{"delivery_id":"d1","metric":"delivered","timestamp":1700000000,"recipient":15551234567}`,
			`{"delivery_id":"d1","metric":"delivered","timestamp":1700000000,"recipient":15551234567}`, ""},
		{"timestamp as float with no fraction", `{"delivery_id":"d1","metric":"delivered","timestamp":1700000000.0}`,
			`{"delivery_id":"d1","metric":"delivered","timestamp":1700000000}`, ""},

		{"milliseconds", `{"delivery_id":"d1","metric":"opened","timestamp":1700000000000}`, "", sink.ReasonInvalidTimestamp},
		{"fraction", `{"delivery_id":"d1","metric":"opened","timestamp":1700000000.5}`, "", sink.ReasonInvalidTimestamp},
		{"string timestamp", `{"delivery_id":"d1","metric":"opened","timestamp":"1700000000"}`, "", sink.ReasonInvalidTimestamp},
		{"negative", `{"delivery_id":"d1","metric":"opened","timestamp":-1}`, "", sink.ReasonInvalidTimestamp},
		{"year 3000", `{"delivery_id":"d1","metric":"opened","timestamp":32503680000}`, "", sink.ReasonInvalidTimestamp},
		{"no metric", `{"delivery_id":"d1"}`, "", sink.ReasonInvalidMetric},
		{"unknown metric", `{"delivery_id":"d1","metric":"read"}`, "", sink.ReasonInvalidMetric},
		{"metric not a string", `{"delivery_id":"d1","metric":1}`, "", sink.ReasonInvalidMetric},
		{"both shapes", `{"delivery_id":"d1","metric":"opened","event":"opened"}`, "", sink.ReasonInvalidMetric},
		{"legacy event not push", `{"delivery_id":"d1","event":"clicked","device_id":"t"}`, "", sink.ReasonInvalidMetric},
		{"legacy with a metrics field", `{"delivery_id":"d1","event":"opened","recipient":"t"}`, "", event.ReasonInvalidField},
		{"unknown member", `{"delivery_id":"d1","metric":"opened","extra":1}`, "", event.ReasonInvalidField},
		{"recipient a fraction", `{"delivery_id":"d1","metric":"opened","recipient":1.5}`, "", event.ReasonInvalidField},
		{"recipient negative", `{"delivery_id":"d1","metric":"opened","recipient":-1}`, "", event.ReasonInvalidField},
		{"recipient an object", `{"delivery_id":"d1","metric":"opened","recipient":{}}`, "", event.ReasonInvalidField},
		{"legacy device_id a number", `{"delivery_id":"d1","event":"opened","device_id":1}`, "", event.ReasonInvalidField},
		{"metadata not an object", `{"delivery_id":"d1","metric":"opened","metadata":[1]}`, "", event.ReasonInvalidField},
		{"repeated metric", `{"delivery_id":"d1","metric":"opened","metric":"clicked"}`, "", event.ReasonInvalidField},
		{"repeated timestamp", `{"delivery_id":"d1","metric":"opened","timestamp":1,"timestamp":2}`, "", sink.ReasonInvalidTimestamp},
		{"no delivery id", `{"metric":"opened"}`, "", sink.ReasonInvalidDeliveryID},
		{"not an object", `"x"`, "", event.ReasonInvalidJSON},
	}
	at := time.Unix(1600000000, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := sink.ParseMetric([]byte(tt.body))
			if r := reasonOf(err); r != tt.reason || (err != nil && tt.reason == "") {
				t.Fatalf("ParseMetric error %v, want reason %q", err, tt.reason)
			}
			if err != nil {
				return
			}
			body, err := m.Body(at)
			if err != nil || string(body) != tt.want {
				t.Errorf("Body = %s, %v\nwant   %s", body, err, tt.want)
			}
		})
	}
}

// TestParseMetricEveryChannel: every metric value Customer.io's reference
// lists for any channel is accepted, sent as given, and accepted by the
// stand-in; the union is exactly Metrics, the stand-in's list.
func TestParseMetricEveryChannel(t *testing.T) {
	s := directServer(t, nil)
	c, err := sink.NewTrack(sink.TrackOptions{URL: s.TrackURL(), UserAgent: "test", Client: sink.NewHTTPClient(2, 5*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	union := map[string]bool{}
	for channel, values := range sink.MetricsByChannel {
		for _, v := range values {
			union[v] = true
			m, err := sink.ParseMetric([]byte(`{"delivery_id":"d1","metric":"` + v + `","timestamp":1700000000}`))
			if err != nil {
				t.Errorf("%s metric %q: %v", channel, v, err)
				continue
			}
			body, err := m.Body(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if want := `{"delivery_id":"d1","metric":"` + v + `","timestamp":1700000000}`; string(body) != want {
				t.Errorf("%s metric %q sent as %s, want %s", channel, v, body, want)
			}
			if err := c.ReportMetric(context.Background(), body); err != nil {
				t.Errorf("%s metric %q refused by the stand-in: %v", channel, v, err)
			}
		}
	}
	var got []string
	for v := range union {
		got = append(got, v)
	}
	slices.Sort(got)
	if !slices.Equal(got, sink.Metrics) || !slices.Equal(sink.Metrics, ciotest.Metrics) {
		t.Errorf("channels' metrics %v, Metrics %v, the stand-in's %v: want one list", got, sink.Metrics, ciotest.Metrics)
	}
}

// TestTrackDeliveryCalls: unsubscribes go to the host root and metrics to
// /api/v1/metrics, with or without credentials; a malformed delivery id is
// a rejection, not a retry.
func TestTrackDeliveryCalls(t *testing.T) {
	s := directServer(t, nil)
	anonymous, err := sink.NewTrack(sink.TrackOptions{URL: s.TrackURL(), UserAgent: "test", Client: sink.NewHTTPClient(2, 5*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	withKey := newTrack(t, s, siteID, trackKey)
	ctx := context.Background()
	for _, c := range []*sink.Track{anonymous, withKey} {
		if err := c.Unsubscribe(ctx, sink.Unsubscribe{DeliveryID: "RPILAgABcRhIBqSp7kiPekGBIeVh", Unsubscribe: true}); err != nil {
			t.Fatalf("Unsubscribe: %v", err)
		}
		if err := c.Unsubscribe(ctx, sink.Unsubscribe{DeliveryID: "RPILAgABcRhIBqSp7kiPekGBIeVh"}); err != nil {
			t.Fatalf("re-subscribe: %v", err)
		}
		m, err := sink.ParseMetric([]byte(`{"delivery_id":"d1","metric":"opened","timestamp":1700000000}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := m.Body(time.Now())
		if err := c.ReportMetric(ctx, body); err != nil {
			t.Fatalf("ReportMetric: %v", err)
		}
	}
	err = anonymous.Unsubscribe(ctx, sink.Unsubscribe{DeliveryID: "not a delivery id!"})
	if sink.Classify(err) != sink.Reject || sink.StatusOf(err) != 400 {
		t.Errorf("malformed delivery id: %v (%v), want a 400 rejection", err, sink.Classify(err))
	}
	if err := anonymous.Suppress(ctx, "a@x.io"); err == nil {
		t.Error("Suppress without credentials succeeded")
	}
	unsubs := s.Unsubscribes()
	if len(unsubs) != 4 || !unsubs[0].Unsubscribe || unsubs[1].Unsubscribe || unsubs[0].DeliveryID != "RPILAgABcRhIBqSp7kiPekGBIeVh" {
		t.Errorf("unsubscribes %+v", unsubs)
	}
	if ms := s.Metrics(); len(ms) != 2 || ms[0].Metric != "opened" || ms[0].Timestamp != 1700000000 {
		t.Errorf("metrics %+v", ms)
	}
	for _, r := range s.Requests() {
		if strings.Contains(r.Path, "unsubscribe") && r.Path != "/unsubscribe/RPILAgABcRhIBqSp7kiPekGBIeVh" && r.Status == 200 {
			t.Errorf("unsubscribe sent to %s", r.Path)
		}
	}
}

// FuzzParseUnsubscribe: any body yields a delivery id that survives path
// escaping, or an *event.InvalidError; nothing panics.
func FuzzParseUnsubscribe(f *testing.F) {
	for _, s := range []string{`{"delivery_id":"d1"}`, `{"delivery_id":"d/1","unsubscribe":false}`, `{"delivery_id":""}`,
		`{"delivery_id":"."}`, `{"unsubscribe":1}`, `{}`, `x`, "{\"delivery_id\":\"a\x01\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		u, err := sink.ParseUnsubscribe(body)
		if err != nil {
			if reasonOf(err) == "" {
				t.Fatalf("error %v is not an *event.InvalidError with a reason", err)
			}
			return
		}
		checkFuzzedDeliveryID(t, u.DeliveryID)
	})
}

// FuzzParseMetric: any body yields a metric whose request body is valid
// JSON with a known metric and a timestamp in seconds, or an
// *event.InvalidError; nothing panics.
func FuzzParseMetric(f *testing.F) {
	for _, s := range []string{`{"delivery_id":"d1","metric":"clicked","href":"h","timestamp":1700000000}`,
		`{"delivery_id":"d1","event":"opened","device_id":"t","timestamp":1700000000}`,
		`{"delivery_id":"d1","metric":"opened","timestamp":1700000000000}`, `{"delivery_id":"d1","metric":"opened","metadata":{}}`,
		`{"delivery_id":"d1","metric":"opened","timestamp":1e9}`, `{}`, `x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := sink.ParseMetric(body)
		if err != nil {
			if reasonOf(err) == "" {
				t.Fatalf("error %v is not an *event.InvalidError with a reason", err)
			}
			return
		}
		checkFuzzedDeliveryID(t, m.DeliveryID)
		out, err := m.Body(time.Unix(1600000000, 0))
		if err != nil {
			t.Fatalf("Body: %v", err)
		}
		var back struct {
			Metric    string `json:"metric"`
			Timestamp int64  `json:"timestamp"`
		}
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("Body %s is not JSON: %v", out, err)
		}
		if !strings.Contains(strings.Join(sink.Metrics, " "), back.Metric) || back.Metric == "" || back.Timestamp <= 0 || back.Timestamp >= 1e10 {
			t.Fatalf("accepted metric %q at %d", back.Metric, back.Timestamp)
		}
	})
}

func checkFuzzedDeliveryID(t *testing.T, id string) {
	t.Helper()
	if strings.TrimSpace(id) == "" || len(id) > sink.MaxDeliveryIDBytes || !utf8.ValidString(id) {
		t.Fatalf("accepted delivery id %q", id)
	}
	back, err := url.PathUnescape(url.PathEscape(id))
	if err != nil || back != id {
		t.Fatalf("delivery id %q does not survive path escaping: %q, %v", id, back, err)
	}
}
