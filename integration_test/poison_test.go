package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// poison is a message no Customer.io API would accept, and the reason the
// worker must give for dead-lettering it.
type poison struct {
	name    string
	subject string
	body    []byte
	reason  event.Reason
}

// poisonCorpus returns the malformed inputs of TestPoisonCorpus, also the
// seeds of FuzzPrepareDeadLetter.
func poisonCorpus() []poison {
	big := `{"userId":"u-big","event":"Big","properties":{"pad":"` + strings.Repeat("x", event.MaxCallBytes) + `"}}`
	return []poison{
		{"not JSON", "cio.identify", []byte(`not json`), event.ReasonInvalidJSON},
		{"empty body", "cio.identify", []byte(``), event.ReasonInvalidJSON},
		{"truncated JSON", "cio.track", []byte(`{"userId":"u-1","event":"E"`), event.ReasonInvalidJSON},
		{"JSON array", "cio.identify", []byte(`[{"userId":"u-1"}]`), event.ReasonInvalidJSON},
		{"JSON string", "cio.identify", []byte(`"u-1"`), event.ReasonInvalidJSON},
		{"invalid UTF-8", "cio.track", []byte("{\"userId\":\"u-1\xff\",\"event\":\"E\"}"), event.ReasonInvalidUTF8},
		{"type/subject mismatch", "cio.track", []byte(`{"type":"identify","userId":"u-1","event":"E"}`), event.ReasonTypeMismatch},
		{"type not a string", "cio.track", []byte(`{"type":7,"userId":"u-1","event":"E"}`), event.ReasonInvalidField},
		{"missing userId", "cio.identify", []byte(`{"traits":{"email":"a@example.com"}}`), event.ReasonMissingUser},
		{"empty userId", "cio.page", []byte(`{"userId":"","name":"Home"}`), event.ReasonMissingUser},
		{"userId null", "cio.identify", []byte(`{"userId":null}`), event.ReasonMissingUser},
		{"track without event", "cio.track", []byte(`{"userId":"u-1","properties":{}}`), event.ReasonMissingEvent},
		{"track with empty event", "cio.track", []byte(`{"userId":"u-1","event":""}`), event.ReasonMissingEvent},
		{"screen without name", "cio.screen", []byte(`{"anonymousId":"a-1"}`), event.ReasonMissingName},
		{"group without groupId", "cio.group", []byte(`{"userId":"u-1","traits":{}}`), event.ReasonMissingGroupID},
		{"alias without previousId", "cio.alias", []byte(`{"userId":"u-1"}`), event.ReasonMissingPrevious},
		{"alias without userId", "cio.alias", []byte(`{"anonymousId":"a-1","previousId":"p-1"}`), event.ReasonMissingUser},
		{"call over 32,000 bytes", "cio.track", []byte(big), event.ReasonTooLarge},
		{"repeated userId", "cio.identify", []byte(`{"userId":"u-1","traits":{},"userId":"u-2"}`), event.ReasonInvalidField},
		{"repeated userId, escaped", "cio.identify", []byte(`{"userId":"u-1","user\u0049d":"u-2"}`), event.ReasonInvalidField},
		{"messageId null", "cio.identify", []byte(`{"userId":"u-1","messageId":null}`), event.ReasonInvalidField},
		{"messageId empty", "cio.identify", []byte(`{"userId":"u-1","messageId":""}`), event.ReasonInvalidField},
		{"messageId a number", "cio.identify", []byte(`{"userId":"u-1","messageId":42}`), event.ReasonInvalidField},
		{"traits a string", "cio.identify", []byte(`{"userId":"u-1","traits":"a@example.com"}`), event.ReasonInvalidField},
		{"properties null", "cio.track", []byte(`{"userId":"u-1","event":"E","properties":null}`), event.ReasonInvalidField},
		{"context an array", "cio.page", []byte(`{"userId":"u-1","context":[]}`), event.ReasonInvalidField},
		{"timestamp in unix seconds", "cio.track", []byte(`{"userId":"u-1","event":"E","timestamp":1764624546}`), event.ReasonInvalidField},
		{"timestamp without a time zone", "cio.track", []byte(`{"userId":"u-1","event":"E","timestamp":"2026-11-29T01:02:03"}`), event.ReasonInvalidField},
		{"sentAt not a calendar date", "cio.identify", []byte(`{"userId":"u-1","sentAt":"2026-02-30T01:02:03Z"}`), event.ReasonInvalidField},
		{"repeated timestamp", "cio.identify", []byte(`{"userId":"u-1","timestamp":"2026-11-29T01:02:03Z","timestamp":"2026-11-29T01:02:04Z"}`), event.ReasonInvalidField},
	}
}

// TestPoisonCorpus publishes malformed calls and checks that each one ends
// in the dead-letter stream with its reason, under dlq.<subject>, with its
// body byte for byte and its publisher's headers, and that none reaches
// Customer.io.
func TestPoisonCorpus(t *testing.T) {
	e := newEnv(t, ciotest.Options{})
	_, reg := e.runWorker(t, fastOptions(), 0)

	corpus := poisonCorpus()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seqs := map[uint64]poison{}
	for i, p := range corpus {
		m := nats.NewMsg(p.subject)
		m.Data = p.body
		m.Header.Set("X-Trace-Id", "trace-"+strconv.Itoa(i))
		m.Header.Set(jetstream.MsgIDHeader, "poison-"+strconv.Itoa(i))
		ack, err := e.js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatalf("publishing %s: %v", p.name, err)
		}
		seqs[ack.Sequence] = p
	}
	waitDeadLetters(t, e.js, uint64(len(corpus)), 30*time.Second)
	waitSettled(t, e.js, 10*time.Second)

	dead := readDLQ(t, e.js)
	if len(dead) != len(corpus) {
		t.Errorf("%d dead letters for %d poison messages", len(dead), len(corpus))
	}
	got := map[string]bool{}
	for _, d := range dead {
		p, ok := seqs[d.Record.StreamSeq]
		if !ok {
			t.Errorf("dead letter %d names stream sequence %d, which was not published", d.Seq, d.Record.StreamSeq)
			continue
		}
		got[p.name] = true
		r := d.Record
		if r.Reason != p.reason {
			t.Errorf("%s: reason %q, want %q (%s)", p.name, r.Reason, p.reason, r.Detail)
		}
		if d.Subject != "dlq."+p.subject {
			t.Errorf("%s: subject %q, want %q", p.name, d.Subject, "dlq."+p.subject)
		}
		if !bytes.Equal(d.Data, p.body) {
			t.Errorf("%s: dead letter body is not the published body byte for byte", p.name)
		}
		if r.Status != 0 || d.Header.Get(deadletter.HeaderStatus) != "" {
			t.Errorf("%s: %s = %q; no request was made", p.name, deadletter.HeaderStatus, d.Header.Get(deadletter.HeaderStatus))
		}
		if !strings.Contains(r.Detail, string(p.reason)) || !oneLine(r.Detail) {
			t.Errorf("%s: %s = %q, want one line naming the reason", p.name, deadletter.HeaderError, r.Detail)
		}
		if r.Deliveries != 1 || r.Stream != "CIO" || r.FirstSeen.IsZero() || r.DeadLettered.IsZero() {
			t.Errorf("%s: record %+v: want 1 delivery, from CIO, with times", p.name, r)
		}
		if want := "-" + strconv.FormatUint(r.StreamSeq, 10); !strings.HasPrefix(r.MessageID, "CIO-") || !strings.HasSuffix(r.MessageID, want) {
			t.Errorf("%s: %s = %q, want the derived CIO-…%s", p.name, deadletter.HeaderMessageID, r.MessageID, want)
		}
		// The publisher's headers are kept; its Nats-Msg-Id is replaced by
		// the dead letter's own, so a second dead-lettering of the same
		// message is dropped as a duplicate.
		if got, want := d.Header.Get("X-Trace-Id"), "trace-"+strconv.Itoa(slices.IndexFunc(corpus, func(c poison) bool { return c.name == p.name })); got != want {
			t.Errorf("%s: X-Trace-Id = %q, want %q kept", p.name, got, want)
		}
		// The derived id carries the stream's creation time, so the dedupe
		// id stays unique when the stream is recreated.
		if got, want := d.Header.Get(jetstream.MsgIDHeader), "dlq-"+r.MessageID; got != want {
			t.Errorf("%s: %s = %q, want %q", p.name, jetstream.MsgIDHeader, got, want)
		}
	}
	for _, p := range corpus {
		if !got[p.name] {
			t.Errorf("%s: not dead-lettered", p.name)
		}
	}
	if n := len(e.cio.Requests()); n != 0 {
		t.Errorf("the stand-in received %d requests; no poison message may be sent", n)
	}
	if got := metricValue(t, reg, "cio_relay_dead_letters_total"); got != float64(len(corpus)) {
		t.Errorf("cio_relay_dead_letters_total = %v, want %d", got, len(corpus))
	}
}

// FuzzPrepareDeadLetter feeds arbitrary bodies through event.Preparer and
// the dead-letter message builder, as the worker does with every message,
// without NATS: nothing may panic; a call is either prepared into a JSON
// object within Customer.io's limit that carries its type, a messageId and
// (room permitting) a timestamp, or refused with a known reason; and the dead-letter headers built for it
// read back as the record they were built from.
func FuzzPrepareDeadLetter(f *testing.F) {
	for _, p := range poisonCorpus() {
		f.Add(uint8(event.TypeOfSubject(p.subject)), p.body, "", uint64(7))
	}
	f.Add(uint8(event.Track), []byte(`{"userId":"u-1","event":"E","messageId":"m-1"}`), "", uint64(1))
	f.Add(uint8(event.Identify), []byte(` { "userId" : 12 , "traits" : { "a" : "<&>" } } `), "replayed-id", uint64(1<<40))
	f.Add(uint8(event.Alias), []byte(`{}`), "id with \"quotes\" and ü", uint64(0))
	f.Add(uint8(event.Unknown), []byte(`{"userId":"u"}`), "", uint64(3))

	types := []string{"", "identify", "track", "page", "screen", "group", "alias"}
	f.Fuzz(func(t *testing.T, typ uint8, body []byte, override string, seq uint64) {
		// The override is read from a NATS header, which carries text.
		override = strings.ToValidUTF8(override, "?")
		subject := "cio." + types[int(typ)%len(types)]
		et := event.TypeOfSubject(subject)
		id := event.ID{Prefix: "CIO-tp8abc-", Seq: seq, Override: override}
		var p event.Preparer
		published := time.Unix(1700000000, int64(seq%1e9))
		call, stamp, err := p.PrepareAt(nil, et, body, id, published)

		rec := deadletter.Record{
			Status: 0, Deliveries: seq%50 + 1, Stream: "CIO", StreamSeq: seq,
			FirstSeen: published, DeadLettered: time.Unix(1800000000, 0),
			MessageID: id.String(), Version: "fuzz",
		}
		if err != nil {
			var ie *event.InvalidError
			if !errors.As(err, &ie) || ie.Reason == "" {
				t.Fatalf("Prepare error %v (%T) is not an *event.InvalidError with a reason", err, err)
			}
			if len(call) != 0 {
				t.Fatalf("Prepare returned %d bytes with its error", len(call))
			}
			rec.Reason, rec.Detail = ie.Reason, err.Error()
		} else {
			checkPrepared(t, et, body, call, id, stamp, published)
			// A call Customer.io refused on its own.
			rec.Reason, rec.Status, rec.Detail = deadletter.ReasonRejected, 400, "customer.io cdp API answered 400: "+string(body)
		}

		hdr := nats.Header{"X-Trace-Id": {"t-1"}, jetstream.MsgIDHeader: {"publisher-id"}}
		m := deadletter.Msg(subject, hdr, body, rec)
		if m.Subject != "dlq."+subject || deadletter.OriginalSubject(m.Subject) != subject {
			t.Fatalf("dead-letter subject %q for %q", m.Subject, subject)
		}
		if !bytes.Equal(m.Data, body) {
			t.Fatal("dead-letter body differs from the original")
		}
		if m.Header.Get("X-Trace-Id") != "t-1" || m.Header.Get(jetstream.MsgIDHeader) != "dlq-CIO-"+strconv.FormatUint(seq, 10) {
			t.Fatalf("dead-letter headers %v: want X-Trace-Id kept and Nats-Msg-Id replaced", m.Header)
		}
		back, err := deadletter.ParseRecord(m.Header)
		if err != nil {
			t.Fatalf("ParseRecord: %v (headers %v)", err, m.Header)
		}
		// Detail is made header-safe; everything else reads back as built.
		want, gotDetail := rec, back.Detail
		want.Detail, back.Detail = "", ""
		if !want.FirstSeen.Equal(back.FirstSeen) || !want.DeadLettered.Equal(back.DeadLettered) {
			t.Fatalf("times read back %v, %v; built %v, %v", back.FirstSeen, back.DeadLettered, want.FirstSeen, want.DeadLettered)
		}
		want.FirstSeen, want.DeadLettered, back.FirstSeen, back.DeadLettered = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if back != want {
			t.Fatalf("record read back\n %+v\nbuilt\n %+v", back, want)
		}
		if !utf8.ValidString(gotDetail) || !oneLine(gotDetail) || len(gotDetail) > 1024+len("…") {
			t.Fatalf("%s = %q: want one line of valid UTF-8, at most 1024 bytes", deadletter.HeaderError, gotDetail)
		}
		if utf8.ValidString(rec.Detail) && oneLine(rec.Detail) && len(rec.Detail) <= 1024 && gotDetail != rec.Detail {
			t.Fatalf("%s = %q, want the detail %q unchanged", deadletter.HeaderError, gotDetail, rec.Detail)
		}
	})
}

// checkPrepared checks a call PrepareAt accepted: a JSON object within
// Customer.io's per-call limit, of the subject's type, with a messageId (the
// body's own, or else id), a timestamp (the body's own, or else the publish
// time unless stamp says it was omitted), and otherwise the body's members
// unchanged.
func checkPrepared(t *testing.T, et event.Type, body, call []byte, id event.ID, stamp event.Stamp, published time.Time) {
	t.Helper()
	if et == event.Unknown {
		t.Fatal("Prepare accepted a call for a subject with no call type")
	}
	if len(call) > event.MaxCallBytes {
		t.Fatalf("prepared call is %d bytes, over %d", len(call), event.MaxCallBytes)
	}
	var got, orig map[string]json.RawMessage
	if err := json.Unmarshal(call, &got); err != nil {
		t.Fatalf("prepared call %q is not a JSON object: %v", call, err)
	}
	if err := json.Unmarshal(body, &orig); err != nil {
		t.Fatalf("Prepare accepted %q, which is not a JSON object: %v", body, err)
	}
	var typ, mid string
	if json.Unmarshal(got["type"], &typ) != nil || typ != et.String() {
		t.Fatalf("prepared call has type %s, want %q", got["type"], et)
	}
	if json.Unmarshal(got["messageId"], &mid) != nil || mid == "" {
		t.Fatalf("prepared call has messageId %s, want a non-empty string", got["messageId"])
	}
	if _, given := orig["messageId"]; !given && mid != id.String() {
		t.Fatalf("prepared call has messageId %q, want the derived %q", mid, id.String())
	}
	for k, v := range orig {
		var c bytes.Buffer
		if err := json.Compact(&c, v); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[k], c.Bytes()) {
			t.Fatalf("member %q changed from %s to %s", k, c.Bytes(), got[k])
		}
	}
	_, hasOwn := orig["timestamp"]
	switch {
	case hasOwn && stamp != event.StampOwn, !hasOwn && stamp != event.StampInserted && stamp != event.StampOmitted:
		t.Fatalf("stamp %v for a body that has a timestamp: %v", stamp, hasOwn)
	case stamp == event.StampInserted:
		if want := `"` + published.UTC().Format("2006-01-02T15:04:05.000Z07:00") + `"`; string(got["timestamp"]) != want {
			t.Fatalf("prepared call has timestamp %s, want the publish time %s", got["timestamp"], want)
		}
	case stamp == event.StampOmitted:
		if _, ok := got["timestamp"]; ok || len(call)+len(`"timestamp":"2026-11-29T01:02:03.456Z",`) <= event.MaxCallBytes {
			t.Fatalf("timestamp omitted from a %d-byte call", len(call))
		}
	}
	if len(got) != len(orig)+boolInt(orig["type"] == nil)+boolInt(orig["messageId"] == nil)+boolInt(stamp == event.StampInserted) {
		t.Fatalf("prepared call has members %d, body %d: only type, messageId and timestamp may be added", len(got), len(orig))
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
