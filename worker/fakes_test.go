package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
)

// scriptedMsg is a jetstream.Msg that records how it was settled, for tests of
// the worker's policy without a server. Its reply subject carries its
// stream sequence and delivery count as JetStream's does.
type scriptedMsg struct {
	subject string
	data    []byte
	hdr     nats.Header
	reply   string
	err     error // returned by every settlement
	discard bool  // record nothing (benchmarks)

	mu       sync.Mutex
	settled  []string // "ack", "double_ack", "nak", "nak 30s", "term rejected"
	progress int
}

func newScriptedMsg(subject, data string, seq, deliveries uint64) *scriptedMsg {
	return &scriptedMsg{subject: subject, data: []byte(data), hdr: nats.Header{},
		reply: fmt.Sprintf("$JS.ACK.CIO.cio-relay.%d.%d.%d.%d.0", deliveries, seq, seq, time.Now().UnixNano())}
}

func (m *scriptedMsg) record(s string) error {
	if m.discard {
		return m.err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settled = append(m.settled, s)
	return m.err
}

// how is how the message was settled, "" if it was not, joined by "," if
// more than once.
func (m *scriptedMsg) how() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.settled, ",")
}

func (m *scriptedMsg) Metadata() (*jetstream.MsgMetadata, error) {
	seq, d, ts, ok := parseAckReply(m.reply)
	if !ok {
		return nil, jetstream.ErrNotJSMessage
	}
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: seq, Consumer: seq}, NumDelivered: d,
		Timestamp: time.Unix(0, ts), Stream: "CIO", Consumer: "cio-relay"}, nil
}
func (m *scriptedMsg) Data() []byte                       { return m.data }
func (m *scriptedMsg) Headers() nats.Header               { return m.hdr }
func (m *scriptedMsg) Subject() string                    { return m.subject }
func (m *scriptedMsg) Reply() string                      { return m.reply }
func (m *scriptedMsg) Ack() error                         { return m.record("ack") }
func (m *scriptedMsg) DoubleAck(context.Context) error    { return m.record("double_ack") }
func (m *scriptedMsg) Nak() error                         { return m.record("nak") }
func (m *scriptedMsg) NakWithDelay(d time.Duration) error { return m.record("nak " + d.String()) }
func (m *scriptedMsg) Term() error                        { return m.record("term") }
func (m *scriptedMsg) TermWithReason(r string) error      { return m.record("term " + r) }
func (m *scriptedMsg) InProgress() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.progress++
	return nil
}

// fakeJS is the JetStream a worker writes dead letters to; any other use
// panics (the embedded interface is nil).
type fakeJS struct {
	jetstream.JetStream
	mu      sync.Mutex
	letters []*nats.Msg
	fail    func(m *nats.Msg) error // nil: every publish succeeds
}

func (j *fakeJS) PublishMsg(_ context.Context, m *nats.Msg, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fail != nil {
		if err := j.fail(m); err != nil {
			return nil, err
		}
	}
	j.letters = append(j.letters, m)
	return &jetstream.PubAck{Stream: "CIO_DLQ", Sequence: uint64(len(j.letters))}, nil
}

// reasons are the dead letters' reasons, in order.
func (j *fakeJS) reasons() []deadletter.Reason {
	j.mu.Lock()
	defer j.mu.Unlock()
	var rs []deadletter.Reason
	for _, m := range j.letters {
		rs = append(rs, deadletter.Reason(m.Header.Get(deadletter.HeaderReason)))
	}
	return rs
}

// fakeSender answers each batch with what respond says, and records the
// bodies it was sent with the (virtual) time of each.
type fakeSender struct {
	respond func(ctx context.Context, n int, body []byte) error // n counts requests from 0
	mu      sync.Mutex
	bodies  []string
	at      []time.Time
}

func (s *fakeSender) SendBatch(ctx context.Context, body []byte) error {
	s.mu.Lock()
	n := len(s.bodies)
	s.bodies = append(s.bodies, string(body))
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
	if s.respond == nil {
		return nil
	}
	return s.respond(ctx, n, body)
}

func (s *fakeSender) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bodies)
}

// Scripted answers of Customer.io.
func statusErr(api sink.API, status int) error { return &sink.StatusError{API: api, Status: status} }
func retryAfterErr(api sink.API, d time.Duration) error {
	return &sink.StatusError{API: api, Status: 429, RetryAfter: d}
}
func transportErr(api sink.API) error {
	return &sink.TransportError{API: api, Err: errors.New("connection reset by peer")}
}

// slow answers 2xx after d, or the context's error if it ends first.
func slow(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newFakeWorker is a worker with fake JetStream and sender, and quick
// retries, for tests of delivery and settlement.
func newFakeWorker(t *testing.T, s Sender, opts Options) (*Worker, *fakeJS) {
	t.Helper()
	js := &fakeJS{}
	if opts.RetryInitial == 0 {
		opts.RetryInitial = 100 * time.Millisecond
	}
	if opts.RetryMaxInterval == 0 {
		opts.RetryMaxInterval = time.Second
	}
	if opts.RetryMaxElapsed == 0 {
		opts.RetryMaxElapsed = 5 * time.Second
	}
	if opts.MaxDeliver == 0 {
		opts.MaxDeliver = 3
	}
	w, err := New(js, s, opts)
	if err != nil {
		t.Fatal(err)
	}
	return w, js
}

// heldCalls holds batch call messages as the intake and reader do, each
// body a CDP call, delivered the given number of times.
func heldCalls(t *testing.T, w *Worker, deliveries uint64, bodies ...string) ([]*held, []*scriptedMsg) {
	t.Helper()
	leases := newLeases[*held](time.Hour)
	var hs []*held
	var ms []*scriptedMsg
	for i, b := range bodies {
		m := newScriptedMsg("cio.track", b, uint64(i+1), deliveries)
		h, ok := w.hold(m, "test.", leases, func() *held { return new(held) })
		if !ok {
			t.Fatal("not held")
		}
		h.call = []byte(b)
		hs = append(hs, h)
		ms = append(ms, m)
	}
	return hs, ms
}

func settledAs(ms []*scriptedMsg) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.how())
	}
	return out
}

// Conn is no connection: the worker's checks of it pass.
func (j *fakeJS) Conn() *nats.Conn { return nil }
