package integration_test

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// runDeliveryWorker runs a worker with no CDP, App or Track key: a dry-run
// CDP sink, and only a credential-less Track client for unsubscribes and
// metrics.
func (e *env) runDeliveryWorker(t *testing.T, opts worker.Options) *prometheus.Registry {
	t.Helper()
	delivery, err := sink.NewTrack(sink.TrackOptions{URL: e.cio.TrackURL(), UserAgent: "test", Client: sink.NewHTTPClient(4, 5*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	opts.Delivery, opts.Registerer, opts.ManageStreams = delivery, reg, true
	w, err := worker.New(e.js, sink.NewDryRun(io.Discard), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker.Run: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "the worker to be ready", func() bool { ok, _ := w.Ready(); return ok })
	return reg
}

// waitConsumerSettled waits until the named consumer has nothing pending
// and nothing unacknowledged.
func (e *env) waitConsumerSettled(t *testing.T, name string) {
	t.Helper()
	waitFor(t, 30*time.Second, name+" to settle every message", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := e.js.Consumer(ctx, "CIO", name)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// TestUnsubscribesAndMetrics: cio.unsubscribe reaches POST
// /unsubscribe/{delivery_id} at the host root, cio.metric (in the metrics
// shape and in the legacy push-event shape) POST /api/v1/metrics, from a
// worker with no CDP, App or Track key, through a 429 and a 503; bad bodies
// are dead-lettered with their reasons, and a delivery id Customer.io calls
// malformed (400) as rejected.
func TestUnsubscribesAndMetrics(t *testing.T) {
	var mu sync.Mutex
	failed := map[string]bool{}
	e := newEnv(t, ciotest.Options{Fault: func(r *ciotest.Request) *ciotest.Fault {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Path == "/api/v1/metrics" && strings.Contains(string(r.Body), "d-429") && !failed["429"]:
			failed["429"] = true
			return &ciotest.Fault{Status: 429, RetryAfter: "0"}
		case r.Path == "/unsubscribe/d1" && !failed["503"]:
			failed["503"] = true
			return &ciotest.Fault{Status: 503}
		}
		return nil
	}})
	opts := fastOptions()
	reg := e.runDeliveryWorker(t, opts)
	publishedAt := time.Now()

	valid := []published{
		{subject: worker.SubjectUnsubscribe, body: []byte(`{"delivery_id":"d1"}`)},
		{subject: worker.SubjectUnsubscribe, body: []byte(`{"delivery_id":"d2","unsubscribe":false}`)},
		{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d3","metric":"clicked","timestamp":1700000000,"recipient":"a+b@x.io","href":"https://x.io/?a=1&b=2"}`)},
		{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d4","metric":"delivered"}`)},
		{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d5","event":"opened","device_id":"device-token-1","timestamp":1700000001}`)},
		{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d-429","metric":"bounced","reason":"mailbox full","timestamp":1700000002}`)},
		{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d-sms","metric":"delivered","recipient":15551234567}`)},
	}
	invalid := []struct {
		published
		reason string
	}{
		{published{subject: worker.SubjectUnsubscribe, body: []byte(`{"unsubscribe":true}`)}, "invalid_delivery_id"},
		{published{subject: worker.SubjectUnsubscribe, body: []byte(`{"delivery_id":"d1","unsubscribe":"yes"}`)}, "invalid_field"},
		{published{subject: worker.SubjectUnsubscribe, body: []byte(`{"delivery_id":"not a delivery id!"}`)}, "rejected"},
		{published{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d6","metric":"opened","timestamp":1700000000000}`)}, "invalid_timestamp"},
		{published{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d7","metric":"read"}`)}, "invalid_metric"},
		{published{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d8","event":"clicked","device_id":"t"}`)}, "invalid_metric"},
		{published{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"d9","metric":"opened","extra":1}`)}, "invalid_field"},
		{published{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":`)}, "invalid_json"},
	}
	msgs := append([]published(nil), valid...)
	wantReasons := map[string]int{}
	for _, in := range invalid {
		msgs = append(msgs, in.published)
		wantReasons[in.reason]++
	}
	e.publishAll(t, msgs)
	e.waitConsumerSettled(t, "cio-relay-unsubscribe")
	e.waitConsumerSettled(t, "cio-relay-metric")

	unsubs := e.cio.Unsubscribes()
	if len(unsubs) != 2 || unsubs[0].DeliveryID != "d1" || !unsubs[0].Unsubscribe || unsubs[1].DeliveryID != "d2" || unsubs[1].Unsubscribe {
		t.Errorf("unsubscribes %+v, want d1 unsubscribed and d2 re-subscribed, once each", unsubs)
	}
	byDelivery := map[string]ciotest.MetricReport{}
	for _, m := range e.cio.Metrics() {
		if _, dup := byDelivery[m.DeliveryID]; dup {
			t.Errorf("metric for %s reported twice", m.DeliveryID)
		}
		byDelivery[m.DeliveryID] = m
	}
	if m := byDelivery["d3"]; m.Metric != "clicked" || m.Recipient != "a+b@x.io" || m.Href != "https://x.io/?a=1&b=2" || m.Timestamp != 1700000000 {
		t.Errorf("email click reported as %+v", m)
	}
	if m := byDelivery["d4"]; m.Metric != "delivered" || m.Timestamp < publishedAt.Unix()-5 || m.Timestamp > time.Now().Unix() {
		t.Errorf("metric without timestamp reported as %+v, want the publish time (%d)", m, publishedAt.Unix())
	}
	if m := byDelivery["d5"]; m.Metric != "opened" || m.Recipient != "device-token-1" || m.Timestamp != 1700000001 {
		t.Errorf("legacy push event reported as %+v, want metric opened, recipient the device token", m)
	}
	if m := byDelivery["d-429"]; m.Metric != "bounced" || m.Reason != "mailbox full" {
		t.Errorf("metric retried after 429 reported as %+v", m)
	}
	if m := byDelivery["d-sms"]; m.Metric != "delivered" || m.Recipient != "15551234567" || !strings.Contains(string(m.Body), `"recipient":15551234567`) {
		t.Errorf("SMS metric with a numeric recipient reported as %+v (%s), want the number sent as one", m, m.Body)
	}
	if len(byDelivery) != 5 {
		t.Errorf("%d metrics reported, want 5", len(byDelivery))
	}
	for _, r := range e.cio.Requests() {
		if r.Status == 404 {
			t.Errorf("request to %s answered 404", r.Path)
		}
	}

	reasons, dead := dlqReasons(t, e)
	for r, n := range wantReasons {
		if reasons[r] != n {
			t.Errorf("dead letters with reason %s: %d, want %d (all: %v)", r, reasons[r], n, reasons)
		}
	}
	if dead != len(invalid) {
		t.Errorf("%d dead letters, want %d", dead, len(invalid))
	}
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"cio_relay_direct_calls_total", []string{"api", "track", "outcome", "delivered"}, 7},
		{"cio_relay_direct_calls_total", []string{"api", "track", "outcome", "rejected"}, 1},
		{"cio_relay_unsubscribes_total", []string{"action", "unsubscribe"}, 1},
		{"cio_relay_unsubscribes_total", []string{"action", "resubscribe"}, 1},
		{"cio_relay_delivery_metrics_total", []string{"shape", "metrics"}, 4},
		{"cio_relay_delivery_metrics_total", []string{"shape", "push_events", "metric", "opened"}, 1},
		{"cio_relay_retries_total", []string{"reason", "status_429"}, 1},
		{"cio_relay_retries_total", []string{"reason", "status_5xx"}, 1},
	} {
		if got := metricValue(t, reg, m.name, m.labels...); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
	if _, err := e.js.Consumer(context.Background(), "CIO", "cio-relay-suppress"); err == nil {
		t.Error("a worker without Track credentials bound the suppression consumer")
	}
	t.Logf("%d unsubscribes and %d metrics delivered (one after a 503, one after a 429), %d dead letters by reason %v",
		len(unsubs), len(byDelivery), dead, reasons)
}

// TestRelayBinarySendsDeliveryCallsWithoutTrackOrAppKeys: the cio-relay
// binary with a CDP key and nothing else (no CIO_SITE_ID, CIO_TRACK_API_KEY
// or CIO_APP_API_KEY) sends unsubscribes to the root of CIO_TRACK_URL's
// host and metrics under it.
func TestRelayBinarySendsDeliveryCallsWithoutTrackOrAppKeys(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	keyFile := filepath.Join(t.TempDir(), "cdp-api-key")
	writeFileAtomic(t, keyFile, cdpKey+"\n")
	startRelay(t, "delivery", relayEnv(e.nats.URL(), e.cio.CDPURL(), keyFile, map[string]string{"CIO_TRACK_URL": e.cio.TrackURL()}))
	e.publishAll(t, []published{
		{subject: worker.SubjectUnsubscribe, body: []byte(`{"delivery_id":"bin-1"}`)},
		{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"bin-2","event":"delivered","device_id":"tok"}`)},
	})
	e.waitConsumerSettled(t, "cio-relay-unsubscribe")
	e.waitConsumerSettled(t, "cio-relay-metric")
	if u := e.cio.Unsubscribes(); len(u) != 1 || u[0].DeliveryID != "bin-1" || !u[0].Unsubscribe {
		t.Errorf("unsubscribes %+v", u)
	}
	if m := e.cio.Metrics(); len(m) != 1 || m[0].DeliveryID != "bin-2" || m[0].Metric != "delivered" || m[0].Recipient != "tok" || m[0].Timestamp == 0 {
		t.Errorf("metrics %+v", m)
	}
	if _, n := dlqReasons(t, e); n != 0 {
		t.Errorf("%d dead letters", n)
	}
}

// TestRelayBinarySendsDeliveryCallsWithoutCDPOrAppKeys: the cio-relay
// binary with Track credentials and neither a CDP nor an App key (a dry
// run for CDP calls: the only way it starts without a CDP key) sends
// unsubscribes to the root of CIO_TRACK_URL's host and metrics under it.
func TestRelayBinarySendsDeliveryCallsWithoutCDPOrAppKeys(t *testing.T) {
	e := newEnv(t, ciotest.Options{SiteID: "site-1", TrackKey: "track-key"})
	env := relayEnv(e.nats.URL(), e.cio.CDPURL(), "", map[string]string{
		"CIO_TRACK_URL": e.cio.TrackURL(), "CIO_SITE_ID": "site-1", "CIO_TRACK_API_KEY": "track-key",
		"RELAY_DRY_RUN": "true", "RELAY_DRY_RUN_FILE": filepath.Join(t.TempDir(), "dry-run.ndjson")})
	delete(env, "CIO_CDP_API_KEY_FILE")
	p := startRelay(t, "delivery-no-cdp", env)
	p.waitLog(t, 10*time.Second, "unsubscribes and delivery metrics enabled")
	e.publishAll(t, []published{
		{subject: worker.SubjectUnsubscribe, body: []byte(`{"delivery_id":"dry-1"}`)},
		{subject: worker.SubjectMetric, body: []byte(`{"delivery_id":"dry-2","metric":"clicked","href":"https://x.io/"}`)},
	})
	e.waitConsumerSettled(t, "cio-relay-unsubscribe")
	e.waitConsumerSettled(t, "cio-relay-metric")
	if u := e.cio.Unsubscribes(); len(u) != 1 || u[0].DeliveryID != "dry-1" || !u[0].Unsubscribe {
		t.Errorf("unsubscribes %+v", u)
	}
	if m := e.cio.Metrics(); len(m) != 1 || m[0].DeliveryID != "dry-2" || m[0].Metric != "clicked" || m[0].Href != "https://x.io/" || m[0].Timestamp == 0 {
		t.Errorf("metrics %+v", m)
	}
	for _, r := range e.cio.Requests() {
		if r.API == ciotest.APICDP || r.API == ciotest.APIApp {
			t.Errorf("a request to the %s API (%s) from a relay without its key", r.API, r.Path)
		}
	}
	if _, n := dlqReasons(t, e); n != 0 {
		t.Errorf("%d dead letters", n)
	}
}
