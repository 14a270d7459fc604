package deadletter_test

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
)

// TestWriteParsesBack: what Write stores reads back (LetterOf) as the
// record, body and headers it was given, with its body or, for a body near
// max_payload, without it and then filled in from the original stream
// (ReadOmitted): nothing is lost either way.
func TestWriteParsesBack(t *testing.T) {
	nc, js := natstest.Start(t).Connect(t)
	ctx := t.Context()
	cio, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CIO", Subjects: []string{"cio.>"}})
	if err != nil {
		t.Fatal(err)
	}
	dlq, err := js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", time.Hour, -1))
	if err != nil {
		t.Fatal(err)
	}
	// Room for the original's own small headers, not for the dead-letter
	// ones on top.
	huge := append([]byte(`{"userId":"u-1","event":"E","properties":{"p":"`), bytes.Repeat([]byte("x"), int(nc.MaxPayload())-400)...)
	huge = append(huge, `"}}`...)
	for _, tt := range []struct {
		name    string
		body    []byte
		omitted bool
	}{
		{"with its body", []byte(`{"userId":"u-1","event":"E <&>"}`), false},
		{"body near max_payload", huge, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			orig := nats.NewMsg("cio.track")
			orig.Header.Set("X-Trace", "t-1")
			orig.Data = tt.body
			ack, err := js.PublishMsg(ctx, orig)
			if err != nil {
				t.Fatal(err)
			}
			stored, err := cio.GetMsg(ctx, ack.Sequence)
			if err != nil {
				t.Fatal(err)
			}
			at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
			rec := deadletter.Record{
				Reason: deadletter.ReasonRejected, Status: 422, Detail: "customer.io cdp API answered 422", Deliveries: 3,
				Stream: "CIO", StreamSeq: ack.Sequence, FirstSeen: stored.Time.UTC(), MessageID: "m-" + tt.name,
				Origin: "CIO-abc-" + tt.name, Version: "v1", DeadLettered: at, Replays: 2, RequestedAt: at.Add(-time.Second),
			}
			omitted, err := deadletter.Write(ctx, js, orig.Subject, stored.Header, stored.Data, rec)
			if err != nil || omitted != tt.omitted {
				t.Fatalf("Write = %v, %v; want omitted %v, no error", omitted, err, tt.omitted)
			}
			last, err := dlq.GetLastMsgForSubject(ctx, "dlq.cio.track")
			if err != nil {
				t.Fatal(err)
			}
			l := deadletter.LetterOf(last)
			got := l.Record
			got.FirstSeen, got.DeadLettered, got.RequestedAt = got.FirstSeen.UTC(), got.DeadLettered.UTC(), got.RequestedAt.UTC()
			if !reflect.DeepEqual(got, rec) {
				t.Errorf("record read back\n %+v\nwritten\n %+v", got, rec)
			}
			if _, ok := deadletter.OmittedSize(l.Header); ok != tt.omitted {
				t.Errorf("body omitted %v, want %v", ok, tt.omitted)
			}
			if err := deadletter.ReadOmitted(ctx, js, l, "CIO"); err != nil {
				t.Fatalf("ReadOmitted: %v", err)
			}
			if !bytes.Equal(l.Body, tt.body) || l.Header.Get("X-Trace") != "t-1" || l.OriginalSubject() != "cio.track" {
				t.Errorf("letter: subject %s, X-Trace %q, body %d bytes equal %v; want the original's",
					l.OriginalSubject(), l.Header.Get("X-Trace"), len(l.Body), bytes.Equal(l.Body, tt.body))
			}
			// Replayed, it is the original again, with its messageId.
			rm := deadletter.ReplayMsg(l.Subject, l.Header, l.Body, l.Record, l.Seq, deadletter.ReplayID("CIO_DLQ", l.Seq, l.Stored))
			if rm.Subject != "cio.track" || !bytes.Equal(rm.Data, tt.body) || rm.Header.Get("X-Trace") != "t-1" ||
				rm.Header.Get(deadletter.HeaderMessageID) != rec.MessageID || rm.Header.Get(deadletter.HeaderReplays) != "3" {
				t.Errorf("replay %s %v: want the original's subject, body and headers, messageId %s, replays 3", rm.Subject, rm.Header, rec.MessageID)
			}
			replayHeaders := []string{deadletter.HeaderMessageID, deadletter.HeaderReplays, deadletter.HeaderPublished,
				deadletter.HeaderReplayOf, deadletter.HeaderReplayedFrom}
			for k := range rm.Header {
				if strings.HasPrefix(k, "Cio-Relay-") && !slices.Contains(replayHeaders, k) {
					t.Errorf("replay carries dead-letter header %s", k)
				}
			}
		})
	}
}
