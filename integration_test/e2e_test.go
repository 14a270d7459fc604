// Package integration_test runs cio-relay end to end: a real NATS JetStream
// server (a container when a Docker engine is reachable, in-process
// otherwise; each test logs which), the worker, and a Customer.io stand-in
// that keeps the real API's behaviour, including the silent 200 on an
// over-limit request.
package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

const cdpKey = "test-cdp-key"

// env is one end-to-end setup: NATS, the stand-in and a JetStream client.
type env struct {
	nats *natstest.Server
	cio  *ciotest.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	// cdpOptions, when set, adjusts the CDP client runWorker builds.
	cdpOptions func(*sink.CDPOptions)
}

func newEnv(t *testing.T, opts ciotest.Options) *env {
	t.Helper()
	srv := natstest.Start(t)
	if opts.CDPKey == "" {
		opts.CDPKey = cdpKey
	}
	cio := ciotest.NewServer(t, opts)
	nc, js := srv.Connect(t)
	return &env{nats: srv, cio: cio, nc: nc, js: js}
}

// startWorker runs a worker delivering to the stand-in until the test ends,
// and fails the test if Run returns an error.
func (e *env) startWorker(t *testing.T, opts worker.Options) {
	t.Helper()
	e.runWorker(t, opts, 0)
}

// waitFor polls cond until it holds. It is for state that has no event to
// wait on (consumer info on the server), never for ordering.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publishAll publishes msgs with async publish and waits for every PubAck.
func (e *env) publishAll(t *testing.T, msgs []published) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// In windows of 500, below nats.go's bound on unacknowledged async
	// publishes, which a slow machine (or the race detector) would hit.
	const window = 500
	for start := 0; start < len(msgs); start += window {
		var futures []jetstream.PubAckFuture
		for _, m := range msgs[start:min(start+window, len(msgs))] {
			f, err := e.js.PublishAsync(m.subject, m.body)
			if err != nil {
				t.Fatalf("publish: %v", err)
			}
			futures = append(futures, f)
		}
		select {
		case <-e.js.PublishAsyncComplete():
		case <-ctx.Done():
			t.Fatal("publishing did not complete within 60s")
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				t.Fatalf("publish failed: %v", err)
			}
		}
	}
}

// checkExactlyOnce asserts that every valid message was delivered exactly
// once and no invalid one at all; seen counts deliveries by key.
func checkExactlyOnce(t *testing.T, msgs []published, seen map[string]int) {
	t.Helper()
	for _, m := range msgs {
		switch n := seen[m.key]; {
		case m.valid && n != 1:
			t.Errorf("call %s delivered %d times, want exactly once", m.key, n)
		case !m.valid && n != 0:
			t.Errorf("invalid call %s delivered %d times", m.key, n)
		}
	}
}

// published is one message put on the stream, and what must come of it.
type published struct {
	subject string
	body    []byte
	key     string // unique id: the messageId, or the userId when none is set
	valid   bool
}

// tricky is text that costs more when re-encoded by encoding/json, or that
// is several bytes per character.
var tricky = []string{"<b>", "&amp;", ">", "&", "ü", "日本語", "😀", "👩‍👩‍👧", "\\\"", "é"}

func pad(r *rand.Rand, n int) string {
	var b strings.Builder
	for b.Len() < n {
		if r.IntN(3) == 0 {
			b.WriteString(tricky[r.IntN(len(tricky))])
		} else {
			b.WriteByte('a' + byte(r.IntN(26)))
		}
	}
	s := b.String()
	// Trim to at most n bytes on a character boundary (never inside an
	// escape): drop whole characters from the end.
	for len(s) > n || strings.HasSuffix(s, "\\") {
		_, size := lastRune(s)
		s = s[:len(s)-size]
	}
	return s
}

func lastRune(s string) (rune, int) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i]&0xC0 != 0x80 {
			return rune(s[i]), len(s) - i
		}
	}
	return 0, 1
}

// makeCall builds a call of type typ with unique key whose wire form is
// exactly size bytes when withID is set (type, messageId and timestamp
// present, so nothing is inserted), padded with tricky text.
func makeCall(r *rand.Rand, typ event.Type, key string, size int, withID bool) []byte {
	var head string
	idField := ""
	if withID {
		idField = fmt.Sprintf(`"type":%q,"messageId":%q,"timestamp":"2026-11-29T01:02:03.456Z",`, typ.String(), key)
	}
	user := fmt.Sprintf(`"userId":%q`, key)
	switch typ {
	case event.Track:
		head = fmt.Sprintf(`{%s%s,"event":"Order <Completed> & paid","properties":{"note":"`, idField, user)
	case event.Screen:
		head = fmt.Sprintf(`{%s%s,"name":"Home ☕","properties":{"note":"`, idField, user)
	case event.Page:
		head = fmt.Sprintf(`{%s%s,"properties":{"note":"`, idField, user)
	case event.Group:
		head = fmt.Sprintf(`{%s%s,"groupId":"g-1","traits":{"note":"`, idField, user)
	case event.Alias:
		head = fmt.Sprintf(`{%s%s,"previousId":"anon-%s","context":{"note":"`, idField, user, key)
	default:
		head = fmt.Sprintf(`{%s%s,"traits":{"note":"`, idField, user)
	}
	tail := `"}}`
	body := head + pad(r, size-len(head)-len(tail)) + tail
	for len(body) < size { // pad stopped short on a multi-byte boundary
		body = body[:len(body)-len(tail)] + "x" + tail
	}
	return []byte(body)
}

// mix draws a call type with the benchmark's proportions.
func mix(r *rand.Rand) event.Type {
	switch n := r.IntN(100); {
	case n < 60:
		return event.Track
	case n < 80:
		return event.Identify
	case n < 90:
		return event.Page
	case n < 95:
		return event.Screen
	case n < 98:
		return event.Group
	default:
		return event.Alias
	}
}

// TestEndToEnd publishes 10,000+ mixed calls, including calls at and just over
// the 32,000-byte limit, and checks that every valid call reaches the stand-in
// exactly once, that nothing over a limit is sent, that batches are full, and
// that the consumer ends with nothing pending.
func TestEndToEnd(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	reg := prometheus.NewRegistry()

	r := rand.New(rand.NewPCG(7, 11))
	var msgs []published
	const n = 10000
	for i := range n {
		typ := mix(r)
		key := fmt.Sprintf("m-%05d", i)
		withID := i%10 != 0 // every tenth call gets a derived messageId
		size := 200 + r.IntN(1800)
		if r.IntN(100) == 0 {
			size = 4000 + r.IntN(26000)
		}
		valid := true
		switch {
		case i%500 == 1: // exactly at the limit
			size, withID = event.MaxCallBytes, true
		case i%500 == 2: // just under
			size, withID = event.MaxCallBytes-1-r.IntN(50), true
		case i%500 == 3: // just over: must never be sent
			size, withID, valid = event.MaxCallBytes+1+r.IntN(50), true, false
		}
		body := makeCall(r, typ, key, size, withID)
		if withID && len(body) != size {
			t.Fatalf("test bug: call %s is %d bytes, want %d", key, len(body), size)
		}
		msgs = append(msgs, published{subject: typ.Subject(), body: body, key: key, valid: valid})
	}
	// Calls the worker must reject before sending, whatever their size.
	for i, bad := range []struct{ subj, body string }{
		{"cio.track", `{"userId":"bad-1"}`},
		{"cio.identify", `not json`},
		{"cio.track", "{\"userId\":\"bad-3\xff\",\"event\":\"e\"}"},
		{"cio.track", `{"type":"identify","userId":"bad-4"}`},
		{"cio.alias", `{"userId":"bad-5"}`},
	} {
		msgs = append(msgs, published{subject: bad.subj, body: []byte(bad.body), key: fmt.Sprintf("bad-%d", i+1)})
	}
	wantValid := 0
	for _, m := range msgs {
		if m.valid && !strings.HasPrefix(m.key, "bad-") {
			wantValid++
		}
	}
	for i := range msgs {
		if strings.HasPrefix(msgs[i].key, "bad-") {
			msgs[i].valid = false
		}
	}

	// The calls wait in the stream before the worker starts, so batches
	// close for size and the fill below says something about packing, not
	// about the machine's speed: a worker that keeps up with a slow
	// publisher is drained after every few calls, and flushes on drain.
	// The flush interval is long beside the time a batch takes to fill on
	// a slow machine (the race detector: about 1,400 calls/s, a batch every
	// quarter second).
	e.createStream(t)
	e.publishAll(t, msgs)
	start := time.Now()
	e.startWorker(t, worker.Options{FlushInterval: 2 * time.Second, AckWait: 10 * time.Second, Registerer: reg})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, wantValid); err != nil {
		t.Fatalf("waiting for %d calls: %v (stats %+v)", wantValid, err, e.cio.Stats())
	}
	elapsed := time.Since(start)

	// The consumer must end with nothing pending or unacknowledged.
	waitFor(t, 30*time.Second, "consumer to settle every message", func() bool {
		c, err := e.js.Consumer(context.Background(), "CIO", "cio-relay")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})

	byKey := map[string]published{}
	for _, m := range msgs {
		byKey[m.key] = m
	}
	seen := map[string]int{}
	for _, c := range e.cio.Delivered() {
		var f struct {
			UserID    string `json:"userId"`
			MessageID string `json:"messageId"`
			Type      string `json:"type"`
		}
		if err := json.Unmarshal(c.Raw, &f); err != nil {
			t.Fatalf("delivered call does not parse: %v", err)
		}
		m, ok := byKey[f.UserID]
		if !ok {
			t.Fatalf("delivered call for unknown user %q", f.UserID)
		}
		if !m.valid {
			t.Errorf("call %s should have been rejected but was sent (%d bytes)", m.key, len(c.Raw))
		}
		if f.Type != event.TypeOfSubject(m.subject).String() {
			t.Errorf("call %s delivered as type %q, published on %s", m.key, f.Type, m.subject)
		}
		if f.MessageID == "" {
			t.Errorf("call %s delivered without a messageId", m.key)
		}
		if strings.Contains(string(m.body), `"messageId"`) && string(c.Raw) != string(m.body) {
			t.Errorf("call %s: delivered bytes differ from published bytes", m.key)
		}
		seen[f.UserID]++
	}
	checkExactlyOnce(t, msgs, seen)

	st := e.cio.Stats()
	if st.RequestsDroppedOverLimit != 0 || st.CallsDroppedOverLimit != 0 {
		t.Errorf("stand-in dropped over-limit requests: %+v", st)
	}
	if st.MaxBodyBytes > batcher.MaxBatchBytes {
		t.Errorf("largest request was %d bytes, over the %d limit", st.MaxBodyBytes, batcher.MaxBatchBytes)
	}
	batches := 0
	var bodyBytes int64
	for _, req := range e.cio.Requests() {
		if req.API == ciotest.APICDP && req.Outcome == ciotest.OutcomeAccepted {
			batches++
			bodyBytes += int64(req.BodyBytes)
		}
	}
	fill := float64(bodyBytes) / float64(batches*batcher.MaxBatchBytes)
	t.Logf("delivered %d calls in %d batches in %v: %.0f events/s, mean fill %.1f%% of %d bytes, mean %.0f calls/batch",
		wantValid, batches, elapsed.Round(time.Millisecond), float64(wantValid)/elapsed.Seconds(),
		100*fill, batcher.MaxBatchBytes, float64(wantValid)/float64(batches))
	// Every batch but the tail of the backlog is closed for size; with
	// 10,000 calls averaging ~1.4KB that is ~28 batches, so the mean must be
	// high. A packing regression (closing early) shows here.
	if fill < 0.80 {
		t.Errorf("mean batch fill %.1f%%, want at least 80%%", 100*fill)
	}

	// The metrics an operator scrapes must agree with what Customer.io got.
	invalid := len(msgs) - wantValid
	m := scrape(t, reg)
	for _, c := range []struct {
		series string
		want   float64
	}{
		{"cio_relay_calls_delivered_total", float64(st.CallsAccepted)},
		{`cio_relay_batches_total{outcome="delivered"}`, float64(st.BatchesAccepted)},
		{"cio_relay_batch_calls_count", float64(st.BatchesAccepted)},
		{"cio_relay_batch_bytes_sum", float64(bodyBytes)},
		{"cio_relay_dead_letters_total", float64(invalid)},
		{"cio_relay_messages_consumed_total", float64(len(msgs))},
		{`cio_relay_request_duration_seconds_count{api="cdp",status_class="2xx"}`, float64(st.BatchesAccepted)},
		{"cio_relay_batches_in_flight", 0},
	} {
		if got := m.sum(c.series); got != c.want {
			t.Errorf("metric %s = %v, want %v", c.series, got, c.want)
		}
	}
}

// metricsText is a scraped Prometheus text exposition.
type metricsText map[string]float64 // series (name{labels}) → value

// scrape serves reg over HTTP exactly as the worker's /metrics does and
// parses what a Prometheus server would read.
func scrape(t *testing.T, reg *prometheus.Registry) metricsText {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := metricsText{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// sum adds every series whose name is name (any labels), or returns the one
// series named exactly when name carries labels.
func (m metricsText) sum(name string) float64 {
	if strings.Contains(name, "{") {
		return m[name]
	}
	total := 0.0
	for series, v := range m {
		if series == name || strings.HasPrefix(series, name+"{") {
			total += v
		}
	}
	return total
}

// TestNothingAckedWithoutA2xx answers every batch with 503 and checks that
// no message is acked: all stay pending on the consumer and are redelivered.
// Then Customer.io recovers and every call is delivered.
func TestNothingAckedWithoutA2xx(t *testing.T) {
	var down = make(chan struct{})
	e := newEnv(t, ciotest.Options{Fault: func(*ciotest.Request) *ciotest.Fault {
		select {
		case <-down:
			return nil
		default:
			return &ciotest.Fault{Status: 503, Body: `{"error":"unavailable"}`}
		}
	}})
	e.startWorker(t, worker.Options{FlushInterval: 20 * time.Millisecond, NakDelay: 50 * time.Millisecond, AckWait: 5 * time.Second,
		NoRetry: true})

	r := rand.New(rand.NewPCG(1, 1))
	var msgs []published
	for i := range 50 {
		key := fmt.Sprintf("k-%d", i)
		msgs = append(msgs, published{subject: "cio.track", body: makeCall(r, event.Track, key, 300, true), key: key, valid: true})
	}
	e.publishAll(t, msgs)

	// Wait until the batch has failed, been nakked and been redelivered at
	// least once: proof that the failure released it without an ack.
	waitFor(t, 30*time.Second, "a redelivery after 503", func() bool {
		c, err := e.js.Consumer(context.Background(), "CIO", "cio-relay")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumRedelivered > 0
	})
	c, _ := e.js.Consumer(context.Background(), "CIO", "cio-relay")
	info, _ := c.Info(context.Background())
	if got := info.AckFloor.Stream; got != 0 {
		t.Fatalf("ack floor at stream seq %d while Customer.io answered only 503", got)
	}
	if n := len(e.cio.Delivered()); n != 0 {
		t.Fatalf("stand-in delivered %d calls while answering 503", n)
	}

	close(down)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, len(msgs)); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	waitFor(t, 30*time.Second, "every message acked", func() bool {
		info, err := c.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
}

// TestBindWithoutManagingStreams checks the error an operator sees when the
// stream does not exist and cio-relay may not create it.
func TestBindWithoutManagingStreams(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	w, err := worker.New(e.js, sink.NewDryRun(&strings.Builder{}), worker.Options{ManageStreams: false})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = w.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "stream CIO not found") || !strings.Contains(err.Error(), "RELAY_MANAGE_STREAMS=false") {
		t.Fatalf("Run = %v, want a clear stream-not-found error", err)
	}
}
