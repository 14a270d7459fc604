package deadletter_test

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/worker"
)

func TestRecordRoundTrip(t *testing.T) {
	at := time.Date(2026, 5, 4, 3, 2, 1, 123456789, time.UTC)
	tests := []deadletter.Record{
		{Reason: "rejected", Status: 422, Detail: "bad", Deliveries: 3, Stream: "CIO", StreamSeq: 42, FirstSeen: at,
			MessageID: "m-1", Origin: "CIO-abc-42", Version: "v1", DeadLettered: at.Add(time.Hour), Replays: 2},
		{Reason: "missing_event", Deliveries: 1, Stream: "CIO", StreamSeq: 1, DeadLettered: at}, // Origin: the fallback
		{Reason: "ambiguous", Deliveries: 1, Stream: "CIO", StreamSeq: 7, FirstSeen: at, DeadLettered: at.Add(time.Minute),
			RequestedAt: at.Add(30 * time.Second)},
	}
	for _, r := range tests {
		t.Run(string(r.Reason), func(t *testing.T) {
			m := deadletter.Msg("cio.track", nats.Header{"X-A": {"a"}}, []byte(`{}`), r)
			got, err := deadletter.ParseRecord(m.Header)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Errorf("ParseRecord(Msg(r)) =\n %+v\nwant\n %+v", got, r)
			}
		})
	}
}

// TestMsgReplaysFromRecord: the replay count a dead letter carries is the
// record's, not a header copied over from the original message.
func TestMsgReplaysFromRecord(t *testing.T) {
	h := nats.Header{deadletter.HeaderReplays: {"7"}}
	for _, n := range []int{0, 2} {
		m := deadletter.Msg("cio.track", h, nil, deadletter.Record{Reason: "rejected", Replays: n})
		if got := deadletter.ReplaysOf(m.Header); got != n {
			t.Errorf("Record.Replays %d: dead letter says %d", n, got)
		}
	}
}

// TestMsgRequestedAtFromRecord: the request time a dead letter carries is
// its own request's, never one copied from the original's headers (a
// replayed trigger's earlier dead letter).
func TestMsgRequestedAtFromRecord(t *testing.T) {
	old := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h := nats.Header{deadletter.HeaderRequestedAt: {old.Format(time.RFC3339Nano)}}
	for _, at := range []time.Time{{}, old.Add(time.Hour)} {
		m := deadletter.Msg("cio.broadcast", h, nil, deadletter.Record{Reason: "ambiguous", RequestedAt: at})
		r, err := deadletter.ParseRecord(m.Header)
		if err != nil {
			t.Fatal(err)
		}
		if !r.RequestedAt.Equal(at) {
			t.Errorf("Record.RequestedAt %v: dead letter says %v", at, r.RequestedAt)
		}
	}
}

func TestParseRecordMalformed(t *testing.T) {
	for _, h := range []nats.Header{
		{deadletter.HeaderReason: {"rejected"}, deadletter.HeaderReplays: {"x"}},
		{deadletter.HeaderReason: {"rejected"}, deadletter.HeaderReplays: {"-1"}},
		{deadletter.HeaderReason: {"rejected"}, deadletter.HeaderFirstSeen: {"yesterday"}},
		{deadletter.HeaderReason: {"ambiguous"}, deadletter.HeaderRequestedAt: {"soon"}},
		{},
	} {
		if _, err := deadletter.ParseRecord(h); err == nil {
			t.Errorf("ParseRecord(%v): no error", h)
		}
	}
}

func TestReplayable(t *testing.T) {
	for reason, want := range map[deadletter.Reason]bool{
		deadletter.ReasonRetriesExhausted: true, deadletter.ReasonRejected: true, deadletter.ReasonAmbiguous: true,
		"invalid_json": false, "missing_event": false, "too_large": false, "audience": false, "invalid_identifier": false,
		"some_future_reason": false, "": false,
	} {
		if got := deadletter.Replayable(reason); got != want {
			t.Errorf("Replayable(%q) = %v; want %v", reason, got, want)
		}
	}
}

func TestPublishedAt(t *testing.T) {
	stored := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	first := time.Date(2025, 12, 31, 23, 59, 59, 987654321, time.UTC)
	tests := []struct {
		name string
		h    nats.Header
		want time.Time
	}{
		{"no header", nil, stored},
		{"replayed", nats.Header{deadletter.HeaderPublished: {first.Format(time.RFC3339Nano)}}, first},
		{"offset", nats.Header{deadletter.HeaderPublished: {"2025-12-31T23:59:59.987654321-01:00"}}, first.Add(time.Hour)},
		{"malformed", nats.Header{deadletter.HeaderPublished: {"last week"}}, stored},
	}
	for _, tt := range tests {
		if got := deadletter.PublishedAt(tt.h, stored); !got.Equal(tt.want) {
			t.Errorf("%s: PublishedAt = %v; want %v", tt.name, got, tt.want)
		}
	}
}

func TestOmittedSize(t *testing.T) {
	m := deadletter.Msg("cio.broadcast", nil, make([]byte, 12345), deadletter.Record{Reason: "rejected"})
	if _, ok := deadletter.OmittedSize(m.Header); ok {
		t.Errorf("a dead letter with its body reads as a stub")
	}
	if n, ok := deadletter.OmittedSize(deadletter.Stub(m).Header); !ok || n != 12345 {
		t.Errorf("OmittedSize(Stub) = %d, %v; want 12345, true", n, ok)
	}
}

func TestReplayMsg(t *testing.T) {
	first := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	h := nats.Header{
		"X-Trace":                     {"t"},
		"Nats-Msg-Id":                 {"dlq-CIO-1"},
		deadletter.HeaderReason:       {"rejected"},
		deadletter.HeaderMessageID:    {"m-1"},
		deadletter.HeaderReplayedFrom: {"3"}, // from an earlier replay
		"cio-relay-error":             {"spelt otherwise"},
	}
	r := deadletter.Record{Reason: "rejected", FirstSeen: first, Replays: 2}
	m := deadletter.ReplayMsg("dlq.cio.track", h, []byte("body"), r, 9, "CIO_DLQ-9-x")
	want := nats.Header{
		"X-Trace":                     {"t"},
		deadletter.HeaderMessageID:    {"m-1"},
		deadletter.HeaderReplayedFrom: {"9"},
		deadletter.HeaderReplayOf:     {"CIO_DLQ-9-x"},
		deadletter.HeaderReplays:      {"3"},
		deadletter.HeaderPublished:    {"2026-01-02T03:04:05.000000006Z"},
		jetstream.MsgIDHeader:         {"replay-CIO_DLQ-9-x"},
	}
	if m.Subject != "cio.track" || string(m.Data) != "body" || !reflect.DeepEqual(m.Header, want) {
		t.Errorf("ReplayMsg = %s %q %v; want cio.track \"body\" %v", m.Subject, m.Data, m.Header, want)
	}
}

func TestIntentRoundTrip(t *testing.T) {
	m := deadletter.IntentMsg(17, "CIO_DLQ-17-x", "CIO", 99)
	if !deadletter.IsIntent(m.Subject) || deadletter.IsIntent("dlq.cio.track") {
		t.Fatalf("IsIntent(%q) false, or true for a dead letter's subject", m.Subject)
	}
	stored := time.Now()
	got, err := deadletter.ParseIntent(&jetstream.RawStreamMsg{Subject: m.Subject, Header: m.Header, Sequence: 40, Time: stored})
	want := deadletter.Intent{Letter: 17, ID: "CIO_DLQ-17-x", Stream: "CIO", After: 99, Seq: 40, Stored: stored}
	if err != nil || got != want {
		t.Errorf("ParseIntent = %+v, %v; want %+v", got, err, want)
	}
	if _, err := deadletter.ParseIntent(&jetstream.RawStreamMsg{Subject: "dlq.cio.track"}); err == nil {
		t.Errorf("ParseIntent of a dead letter: no error")
	}
}

// nopSender accepts every batch.
type nopSender struct{}

func (nopSender) SendBatch(context.Context, []byte) error { return nil }

// TestWorkerDeadLetterParsesBack: a dead letter the worker writes reads
// back as a Record that writes the same dead letter again, and a replay of
// it that fails again comes back with its replay count up and its original
// publish time and messageId.
func TestWorkerDeadLetterParsesBack(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx := t.Context()
	// The streams as the worker makes them, before it starts.
	if _, err := js.CreateStream(ctx, worker.StreamConfig("CIO")); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", time.Hour, -1)); err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(js, nopSender{}, worker.Options{ManageStreams: true, Version: "test-1", FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Dead letters are awaited as the stream stores them: a core
	// subscription would see one before the stream has it.
	dlq, err := js.Stream(ctx, "CIO_DLQ")
	if err != nil {
		t.Fatal(err)
	}
	letters, err := dlq.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"dlq.cio.track"}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}()
	in := nats.NewMsg("cio.track")
	in.Header.Set("X-Trace", "t-1")
	in.Data = []byte(`{"userId":"u-1","properties":{"a":1}}`) // no event: missing_event
	ack, err := js.PublishMsg(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	next := func() *jetstream.RawStreamMsg {
		t.Helper()
		m, err := letters.Next(jetstream.FetchMaxWait(20 * time.Second))
		if err != nil {
			t.Fatalf("no dead letter within 20s: %v", err)
		}
		meta, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := dlq.GetMsg(ctx, meta.Sequence.Stream)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	cio, err := js.Stream(ctx, "CIO")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := cio.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}

	dl := next()
	r, err := deadletter.ParseRecord(dl.Header)
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("CIO-%s-", strings.Split(r.Origin, "-")[1])
	want := deadletter.Record{
		Reason: "missing_event", Detail: r.Detail, Deliveries: 1, Stream: "CIO", StreamSeq: ack.Sequence,
		FirstSeen: orig.Time, MessageID: prefix + "1", Origin: prefix + "1", Version: "test-1", DeadLettered: r.DeadLettered,
	}
	if !r.FirstSeen.Equal(orig.Time) || r.Detail == "" || r.DeadLettered.IsZero() {
		t.Errorf("record %+v: first seen, detail or dead-lettered time missing", r)
	}
	r.FirstSeen = orig.Time // the same instant; the location may differ
	if !reflect.DeepEqual(r, want) {
		t.Errorf("ParseRecord =\n %+v\nwant\n %+v", r, want)
	}
	again := deadletter.Msg(orig.Subject, orig.Header, orig.Data, r)
	if !reflect.DeepEqual(again.Header, dl.Header) || string(again.Data) != string(dl.Data) || again.Subject != dl.Subject {
		t.Errorf("Msg(ParseRecord(dead letter)) =\n %v\nwant the dead letter\n %v", again.Header, dl.Header)
	}

	// Replayed as is, it fails the same way and comes back.
	rm := deadletter.ReplayMsg(dl.Subject, dl.Header, dl.Data, r, dl.Sequence, deadletter.ReplayID("CIO_DLQ", dl.Sequence, dl.Time))
	if _, err := js.PublishMsg(ctx, rm, jetstream.WithExpectStream("CIO")); err != nil {
		t.Fatal(err)
	}
	r2, err := deadletter.ParseRecord(next().Header)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Replays != 1 || !r2.FirstSeen.Equal(orig.Time) || r2.MessageID != r.MessageID || r2.StreamSeq == r.StreamSeq {
		t.Errorf("dead letter of the replay: %+v; want replays 1, first seen %v, messageId %s, a new sequence", r2, orig.Time, r.MessageID)
	}
}
