package integration_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// fastOptions are worker options that make every failure path take
// milliseconds: retries, naks and probes are short, partial batches flush
// at once, and a stop does not wait 25s for a held batch.
func fastOptions() worker.Options {
	return worker.Options{
		RetryInitial:     10 * time.Millisecond,
		RetryMaxInterval: 100 * time.Millisecond,
		NakDelay:         50 * time.Millisecond,
		FlushInterval:    20 * time.Millisecond,
		ProbeInterval:    50 * time.Millisecond,
		ShutdownTimeout:  2 * time.Second,
	}
}

// runWorker runs a worker delivering to the stand-in until the test ends,
// and fails the test if Run returns an error. It returns the Worker (for
// Ready) and its metrics registry: opts.Registerer if that is a
// *prometheus.Registry, a new one otherwise. clientTimeout bounds each HTTP
// request (0: 10s).
func (e *env) runWorker(t *testing.T, opts worker.Options, clientTimeout time.Duration) (*worker.Worker, *prometheus.Registry) {
	t.Helper()
	w, reg, stop := e.launchWorker(t, opts, clientTimeout)
	t.Cleanup(stop)
	return w, reg
}

// launchWorker is runWorker with the stop in the caller's hands: stop
// shuts the worker down as a SIGTERM would and waits for Run to return,
// failing the test if it returns an error. Once is enough; more are no-ops.
func (e *env) launchWorker(t *testing.T, opts worker.Options, clientTimeout time.Duration) (*worker.Worker, *prometheus.Registry, func()) {
	t.Helper()
	if clientTimeout == 0 {
		clientTimeout = 10 * time.Second
	}
	cdpOpts := sink.CDPOptions{
		URL:       e.cio.CDPURL(),
		APIKey:    func() string { return cdpKey },
		UserAgent: "cio-relay/test",
		Client:    sink.NewHTTPClient(4, clientTimeout),
	}
	if e.cdpOptions != nil {
		e.cdpOptions(&cdpOpts)
	}
	cdp, err := sink.NewCDP(cdpOpts)
	if err != nil {
		t.Fatal(err)
	}
	reg, ok := opts.Registerer.(*prometheus.Registry)
	if !ok {
		reg = prometheus.NewRegistry()
		opts.Registerer = reg
	}
	opts.ManageStreams = true
	w, err := worker.New(e.js, cdp, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("worker.Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("worker did not stop within 30s")
			}
		})
	}
	waitFor(t, 10*time.Second, "consumer to be created", func() bool {
		_, err := e.js.Consumer(context.Background(), "CIO", "cio-relay")
		return err == nil
	})
	return w, reg, stop
}

// metricValue sums the counters or gauges named name whose labels include
// the given name/value pairs; 0 when there are none.
func metricValue(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// consumerInfo returns the worker's consumer as the server sees it.
func consumerInfo(t *testing.T, js jetstream.JetStream) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, "CIO", "cio-relay")
	if err != nil {
		t.Fatalf("looking up consumer: %v", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	return info
}

// waitSettled waits until the consumer has nothing pending and nothing
// unacknowledged: every message acked or terminated.
func waitSettled(t *testing.T, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "consumer to settle every message", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, "CIO", "cio-relay")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// streamMsgs returns how many messages the stream holds; 0 when it does not
// exist.
func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0
	}
	if err != nil {
		t.Fatalf("looking up stream %s: %v", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	return info.State.Msgs
}

// waitDeadLetters waits until the dead-letter stream holds at least n
// messages.
func waitDeadLetters(t *testing.T, js jetstream.JetStream, n uint64, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "dead letters", func() bool { return streamMsgs(t, js, "CIO_DLQ") >= n })
}

// dlqEntry is one message of the dead-letter stream, with its parsed record.
type dlqEntry struct {
	Seq     uint64
	Subject string
	Header  nats.Header
	Data    []byte
	Record  deadletter.Record
}

// readDLQ returns every message of the dead-letter stream, in order. A
// message whose headers do not parse fails the test.
func readDLQ(t *testing.T, js jetstream.JetStream) []dlqEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "CIO_DLQ")
	if err != nil {
		t.Fatalf("looking up the dead-letter stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("dead-letter stream info: %v", err)
	}
	var out []dlqEntry
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("reading dead letter %d: %v", seq, err)
		}
		rec, err := deadletter.ParseRecord(m.Header)
		if err != nil {
			t.Fatalf("dead letter %d: %v (headers %v)", seq, err, m.Header)
		}
		out = append(out, dlqEntry{Seq: seq, Subject: m.Subject, Header: m.Header, Data: m.Data, Record: rec})
	}
	return out
}

// faultScript decides the stand-in's answers for one test: the first
// requests get first[0], first[1], … in order (nil: the normal answer);
// while hold is set and release has not been called, every request gets
// hold instead.
type faultScript struct {
	mu       sync.Mutex
	first    []*ciotest.Fault
	hold     *ciotest.Fault
	n        int
	released bool
}

func (s *faultScript) fault(*ciotest.Request) *ciotest.Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold != nil && !s.released {
		return s.hold
	}
	i := s.n
	s.n++
	if i < len(s.first) {
		return s.first[i]
	}
	return nil
}

// release ends hold: the next requests are answered normally.
func (s *faultScript) release() {
	s.mu.Lock()
	s.released = true
	s.mu.Unlock()
}

// statuses lists the status of each CDP request the stand-in received, in
// order (0: connection reset).
func statuses(reqs []ciotest.Request) []int {
	var out []int
	for _, r := range reqs {
		if r.API == ciotest.APICDP {
			out = append(out, r.Status)
		}
	}
	return out
}

// oneLine reports whether s fits a header value: no CR, LF or other
// control character.
func oneLine(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 })
}

// deliverTracks publishes n valid track calls of about size bytes (keys
// prefix-000, prefix-001, …, drawn from seed), waits until Customer.io has
// every one and the consumer has settled them within settle. It returns
// the calls and how often each messageId arrived.
func (e *env) deliverTracks(t *testing.T, seed uint64, prefix string, n, size int, settle time.Duration) ([]published, map[string]int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed))
	msgs := make([]published, 0, n)
	for i := range n {
		key := fmt.Sprintf("%s-%03d", prefix, i)
		msgs = append(msgs, published{subject: "cio.track", body: makeCall(r, event.Track, key, size, true), key: key, valid: true})
	}
	e.publishAll(t, msgs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, len(msgs)); err != nil {
		t.Fatal(err)
	}
	waitSettled(t, e.js, settle)
	seen := map[string]int{}
	for _, c := range e.cio.Delivered() {
		seen[c.MessageID]++
	}
	return msgs, seen
}

// extraCopies is how many calls arrived beyond the first of each.
func extraCopies(seen map[string]int) int {
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	return dups
}

// checkDeliveredOrdered fails the test unless the worker whose metrics reg
// holds delivered on the ordered path (RELAY_ORDERING): it holds the
// ordered delivery lease, which only that path takes. A test run both ways
// proves nothing about the ordered path if the option were lost.
func checkDeliveredOrdered(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	if got := metricValue(t, reg, "cio_relay_ordered_delivery_lease"); got != 1 {
		t.Errorf("cio_relay_ordered_delivery_lease = %v, want 1: the worker did not deliver on the ordered path", got)
	}
}
