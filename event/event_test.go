package event

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestTypeOfSubject(t *testing.T) {
	tests := []struct {
		subject string
		want    Type
	}{
		{"cio.identify", Identify},
		{"cio.track", Track},
		{"cio.page", Page},
		{"cio.screen", Screen},
		{"cio.group", Group},
		{"cio.alias", Alias},
		{"cio.track.eu", Unknown},
		{"cio.broadcast", Unknown},
		{"cio.", Unknown},
		{"track", Unknown},
		{"dlq.cio.track", Unknown},
		{"cio.Track", Unknown},
	}
	for _, tt := range tests {
		if got := TypeOfSubject(tt.subject); got != tt.want {
			t.Errorf("TypeOfSubject(%q) = %v, want %v", tt.subject, got, tt.want)
		}
	}
}

func TestPrepareValid(t *testing.T) {
	id := ID{Prefix: "CIO-x-", Seq: 42}
	tests := []struct {
		name string
		typ  Type
		body string
		want string
	}{
		{"inserts type and messageId", Track, `{"userId":"u1","event":"Signed Up"}`,
			`{"type":"track","messageId":"CIO-x-42","userId":"u1","event":"Signed Up"}`},
		{"keeps messageId", Track, `{"userId":"u1","event":"e","messageId":"m-1"}`,
			`{"type":"track","userId":"u1","event":"e","messageId":"m-1"}`},
		{"keeps matching type", Identify, `{"type":"identify","anonymousId":"a"}`,
			`{"messageId":"CIO-x-42","type":"identify","anonymousId":"a"}`},
		{"keeps both", Page, `{"type":"page","messageId":"m","userId":"u"}`,
			`{"type":"page","messageId":"m","userId":"u"}`},
		{"compacts whitespace only", Identify, "{ \"userId\" : \"u\",\n \"traits\": {\"bio\": \"a  <b> & c\", \"n\": [1, 2.50e3]} }",
			`{"type":"identify","messageId":"CIO-x-42","userId":"u","traits":{"bio":"a  <b> & c","n":[1,2.50e3]}}`},
		{"keeps escapes and multi-byte text as written", Track, `{"userId":"ü😀","event":"\u003c\/x>","properties":{"s":"\"}{,"}}`,
			`{"type":"track","messageId":"CIO-x-42","userId":"ü😀","event":"\u003c\/x>","properties":{"s":"\"}{,"}}`},
		{"numeric userId", Identify, `{"userId":123}`, `{"type":"identify","messageId":"CIO-x-42","userId":123}`},
		{"unknown fields pass through", Screen, `{"anonymousId":"a","name":"Home","x":{"y":[null,true]}}`,
			`{"type":"screen","messageId":"CIO-x-42","anonymousId":"a","name":"Home","x":{"y":[null,true]}}`},
		{"group", Group, `{"userId":"u","groupId":"g"}`, `{"type":"group","messageId":"CIO-x-42","userId":"u","groupId":"g"}`},
		{"alias", Alias, `{"userId":"u","previousId":"p"}`, `{"type":"alias","messageId":"CIO-x-42","userId":"u","previousId":"p"}`},
		{"escaped key is decoded", Track, `{"user\u0049d":"u","event":"e"}`, `{"type":"track","messageId":"CIO-x-42","user\u0049d":"u","event":"e"}`},
		{"typed fields of the right types", Track, `{"userId":"u","event":"e","properties":{},"context":{"ip":"x"},"integrations":{"All":true},"traits":{"a":1},"timestamp":"2026-11-29T01:02:03.456+01:00","sentAt":"2026-11-29T00:02:04Z","originalTimestamp":"2026-11-29T00:02:03.1Z"}`,
			`{"type":"track","messageId":"CIO-x-42","userId":"u","event":"e","properties":{},"context":{"ip":"x"},"integrations":{"All":true},"traits":{"a":1},"timestamp":"2026-11-29T01:02:03.456+01:00","sentAt":"2026-11-29T00:02:04Z","originalTimestamp":"2026-11-29T00:02:03.1Z"}`},
		{"escaped date-time is decoded", Identify, `{"userId":"u","timestamp":"2026-11-29T01:02:03\u005a"}`,
			`{"type":"identify","messageId":"CIO-x-42","userId":"u","timestamp":"2026-11-29T01:02:03\u005a"}`},
		{"typed names nested are not checked", Identify, `{"userId":"u","traits":{"timestamp":"yesterday","context":1}}`,
			`{"type":"identify","messageId":"CIO-x-42","userId":"u","traits":{"timestamp":"yesterday","context":1}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Preparer
			got, err := p.Prepare([]byte("prefix:"), tt.typ, []byte(tt.body), id)
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if string(got) != "prefix:"+tt.want {
				t.Errorf("Prepare =\n %s\nwant\n %s", got, "prefix:"+tt.want)
			}
			if !json.Valid(got[len("prefix:"):]) {
				t.Errorf("output is not valid JSON: %s", got)
			}
		})
	}
}

func TestPrepareOverrideID(t *testing.T) {
	var p Preparer
	got, err := p.Prepare(nil, Track, []byte(`{"userId":"u","event":"e"}`), ID{Prefix: "x-", Seq: 1, Override: "id \"quoted\" <&>"})
	if err != nil {
		t.Fatal(err)
	}
	var m struct{ MessageID string }
	if err := json.Unmarshal(got, &m); err != nil || m.MessageID != `id "quoted" <&>` {
		t.Fatalf("messageId = %q (%v) in %s", m.MessageID, err, got)
	}
}

func TestMessageIDOf(t *testing.T) {
	tests := []struct {
		body string
		want string
		ok   bool
	}{
		{`{"messageId":"m-1","userId":"u"}`, "m-1", true},
		{` { "messageId" : "a\"b" } `, `a"b`, true},
		{`{"userId":"u"}`, "", false},
		{`{"messageId":""}`, "", false},
		{`{"messageId":7}`, "", false},
		{`{"MessageId":"m"}`, "", false},
		{`not json`, "", false},
		{`["messageId"]`, "", false},
	}
	for _, tt := range tests {
		got, ok := MessageIDOf([]byte(tt.body))
		if got != tt.want || ok != tt.ok {
			t.Errorf("MessageIDOf(%s) = %q, %v; want %q, %v", tt.body, got, ok, tt.want, tt.ok)
		}
	}
}

// invalidCase is a body Prepare must refuse, and the reason it must give.
type invalidCase struct {
	name string
	typ  Type
	body string
	want Reason
}

func TestPrepareInvalid(t *testing.T) {
	big := `{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("x", MaxCallBytes) + `"}}`
	tests := []invalidCase{
		{"not JSON", Track, `not json`, ReasonInvalidJSON},
		{"truncated", Track, `{"userId":"u"`, ReasonInvalidJSON},
		{"trailing data", Track, `{"userId":"u","event":"e"} {}`, ReasonInvalidJSON},
		{"array", Track, `[{"userId":"u"}]`, ReasonInvalidJSON},
		{"string", Track, `"x"`, ReasonInvalidJSON},
		{"empty", Track, ``, ReasonInvalidJSON},
		{"invalid utf-8", Track, "{\"userId\":\"u\xff\",\"event\":\"e\"}", ReasonInvalidUTF8},
		{"unknown type", Unknown, `{"userId":"u"}`, ReasonUnknownType},
		{"type mismatch", Track, `{"type":"identify","userId":"u","event":"e"}`, ReasonTypeMismatch},
		{"type not a string", Track, `{"type":1,"userId":"u","event":"e"}`, ReasonInvalidField},
		{"messageId null", Track, `{"messageId":null,"userId":"u","event":"e"}`, ReasonInvalidField},
		{"messageId empty", Track, `{"messageId":"","userId":"u","event":"e"}`, ReasonInvalidField},
		{"identify without user", Identify, `{"traits":{}}`, ReasonMissingUser},
		{"empty userId", Identify, `{"userId":""}`, ReasonMissingUser},
		{"null userId", Identify, `{"userId":null}`, ReasonMissingUser},
		{"object userId", Identify, `{"userId":{}}`, ReasonMissingUser},
		{"wrong-case key is not userId", Identify, `{"UserId":"u"}`, ReasonMissingUser},
		{"track without user", Track, `{"event":"e"}`, ReasonMissingUser},
		{"track without event", Track, `{"userId":"u"}`, ReasonMissingEvent},
		{"track empty event", Track, `{"userId":"u","event":""}`, ReasonMissingEvent},
		{"page without user", Page, `{"name":"n"}`, ReasonMissingUser},
		{"screen without name", Screen, `{"userId":"u"}`, ReasonMissingName},
		{"group without groupId", Group, `{"userId":"u"}`, ReasonMissingGroupID},
		{"group without user", Group, `{"groupId":"g"}`, ReasonMissingUser},
		{"alias without userId", Alias, `{"anonymousId":"a","previousId":"p"}`, ReasonMissingUser},
		{"alias without previousId", Alias, `{"userId":"u"}`, ReasonMissingPrevious},
		{"too large", Track, big, ReasonTooLarge},
		{"repeated userId", Track, `{"userId":"a","event":"e","userId":"b"}`, ReasonInvalidField},
		{"repeated type", Track, `{"type":"track","userId":"a","event":"e","type":"track"}`, ReasonInvalidField},
	}
	// Customer.io's reference types these fields; null is neither an object
	// nor a date-time.
	for _, name := range []string{"traits", "properties", "context", "integrations"} {
		for _, v := range []string{`null`, `"x"`, `[]`, `[{}]`, `1`, `true`} {
			tests = append(tests, invalidCase{name + " " + v, Track, `{"userId":"u","event":"e","` + name + `":` + v + `}`, ReasonInvalidField})
		}
		tests = append(tests, invalidCase{"repeated " + name, Identify, `{"userId":"u","` + name + `":{},"` + name + `":{}}`, ReasonInvalidField})
	}
	for _, name := range []string{"timestamp", "sentAt", "originalTimestamp"} {
		for _, v := range []string{`null`, `1764624546`, `{}`, `[]`, `true`, `""`, `"2026-11-29"`, `"2026-11-29T01:02:03"`,
			`"2026-11-29 01:02:03Z"`, `"2026-02-30T01:02:03Z"`, `"2026-11-29T25:02:03Z"`, `"2026-11-29T01:02:03.Z"`,
			`"2026-11-29T01:02:03+0100"`, `"Sun, 29 Nov 2026 01:02:03 GMT"`, `"2026-11-29T01:02:03\u0020Z"`} {
			tests = append(tests, invalidCase{name + " " + v, Page, `{"userId":"u","` + name + `":` + v + `}`, ReasonInvalidField})
		}
		tests = append(tests, invalidCase{"repeated " + name, Identify, `{"userId":"u","` + name + `":"2026-11-29T01:02:03Z","` + name + `":"2026-11-29T01:02:03Z"}`, ReasonInvalidField})
	}
	tests = append(tests, invalidCase{"repeated timestamp, escaped", Identify, `{"userId":"u","timestamp":"2026-11-29T01:02:03Z","time\u0073tamp":"2026-11-29T01:02:03Z"}`, ReasonInvalidField})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Preparer
			dst := []byte("keep")
			got, err := p.Prepare(dst, tt.typ, []byte(tt.body), ID{Prefix: "p-", Seq: 1})
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("Prepare error = %v, want *InvalidError", err)
			}
			if ie.Reason != tt.want {
				t.Errorf("reason = %s (%v), want %s", ie.Reason, err, tt.want)
			}
			if string(got) != "keep" {
				t.Errorf("dst changed on error: %q", got)
			}
		})
	}
}

// TestPrepareSizeBoundary checks the 32,000-byte limit on the bytes produced,
// including what Prepare inserts.
func TestPrepareSizeBoundary(t *testing.T) {
	id := ID{Prefix: "m-", Seq: 7}
	var p Preparer
	base := `{"userId":"u","event":"e","properties":{"p":""}}`
	probe, err := p.Prepare(nil, Track, []byte(base), id)
	if err != nil {
		t.Fatal(err)
	}
	pad := MaxCallBytes - len(probe)
	mk := func(n int) []byte {
		return []byte(`{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("é", n/2) + strings.Repeat("a", n%2) + `"}}`)
	}
	got, err := p.Prepare(nil, Track, mk(pad), id)
	if err != nil || len(got) != MaxCallBytes {
		t.Fatalf("exactly %d bytes: len %d, err %v", MaxCallBytes, len(got), err)
	}
	if _, err := p.Prepare(nil, Track, mk(pad+1), id); err == nil {
		t.Fatalf("%d bytes accepted", MaxCallBytes+1)
	}
}

func TestPrepareAtTimestamp(t *testing.T) {
	at := time.Date(2026, 11, 29, 1, 2, 3, 456_789_000, time.FixedZone("CET", 3600))
	const ts = `"timestamp":"2026-11-29T00:02:03.456Z"`
	id := ID{Prefix: "CIO-x-", Seq: 42}
	tests := []struct {
		name      string
		typ       Type
		body      string
		published time.Time
		id        ID
		want      string
		stamp     Stamp
	}{
		{"inserted after type and messageId, in UTC", Track, `{"userId":"u","event":"e"}`, at, id,
			`{"type":"track","messageId":"CIO-x-42",` + ts + `,"userId":"u","event":"e"}`, StampInserted},
		{"inserted alone", Identify, `{"type":"identify","messageId":"m","userId":"u"}`, at, id,
			`{` + ts + `,"type":"identify","messageId":"m","userId":"u"}`, StampInserted},
		{"with an id read from a header", Alias, `{"userId":"u","previousId":"p"}`, at, ID{Override: `r"1`},
			`{"type":"alias","messageId":"r\"1",` + ts + `,"userId":"u","previousId":"p"}`, StampInserted},
		{"own timestamp kept as written", Track, `{"userId":"u","event":"e","timestamp":"2020-01-02T03:04:05+09:00"}`, at, id,
			`{"type":"track","messageId":"CIO-x-42","userId":"u","event":"e","timestamp":"2020-01-02T03:04:05+09:00"}`, StampOwn},
		{"own timestamp, escaped key", Track, `{"userId":"u","event":"e","time\u0073tamp":"2020-01-02T03:04:05Z"}`, at, id,
			`{"type":"track","messageId":"CIO-x-42","userId":"u","event":"e","time\u0073tamp":"2020-01-02T03:04:05Z"}`, StampOwn},
		{"sentAt and originalTimestamp are not a timestamp", Page, `{"userId":"u","sentAt":"2020-01-02T03:04:05Z","originalTimestamp":"2020-01-02T03:04:05Z"}`, at, id,
			`{"type":"page","messageId":"CIO-x-42",` + ts + `,"userId":"u","sentAt":"2020-01-02T03:04:05Z","originalTimestamp":"2020-01-02T03:04:05Z"}`, StampInserted},
		{"a nested timestamp is not the call's", Identify, `{"userId":"u","traits":{"timestamp":"x"}}`, at, id,
			`{"type":"identify","messageId":"CIO-x-42",` + ts + `,"userId":"u","traits":{"timestamp":"x"}}`, StampInserted},
		{"no publish time", Track, `{"userId":"u","event":"e"}`, time.Time{}, id,
			`{"type":"track","messageId":"CIO-x-42","userId":"u","event":"e"}`, StampNone},
		{"a publish time RFC 3339 cannot write", Track, `{"userId":"u","event":"e"}`, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), id,
			`{"type":"track","messageId":"CIO-x-42","userId":"u","event":"e"}`, StampNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p Preparer
			got, stamp, err := p.PrepareAt([]byte("prefix:"), tt.typ, []byte(tt.body), tt.id, tt.published)
			if err != nil {
				t.Fatalf("PrepareAt: %v", err)
			}
			if string(got) != "prefix:"+tt.want || stamp != tt.stamp {
				t.Errorf("PrepareAt = %s, %v\nwant     %s, %v", got, stamp, "prefix:"+tt.want, tt.stamp)
			}
			if !json.Valid(got[len("prefix:"):]) {
				t.Errorf("output is not valid JSON: %s", got)
			}
		})
	}
}

// TestPrepareAtSizeBoundary checks that the inserted timestamp counts
// towards the 32,000-byte limit and that a call is never refused for it.
func TestPrepareAtSizeBoundary(t *testing.T) {
	at := time.Unix(0, 1764624546123456789)
	const tsMember = len(`"timestamp":"2025-12-01T21:29:06.123Z",`)
	id := ID{Prefix: "m-", Seq: 7}
	var p Preparer
	// type and messageId present: nothing but the timestamp is inserted.
	mk := func(size int) []byte {
		head, tail := `{"type":"track","messageId":"m","userId":"u","event":"e","properties":{"p":"`, `"}}`
		n := size - len(head) - len(tail)
		return []byte(head + strings.Repeat("é", n/2) + strings.Repeat("a", n%2) + tail)
	}
	tests := []struct {
		size     int
		stamp    Stamp
		wantSize int // 0: too large
	}{
		{MaxCallBytes - tsMember - 1, StampInserted, MaxCallBytes - 1},
		{MaxCallBytes - tsMember, StampInserted, MaxCallBytes},
		{MaxCallBytes - tsMember + 1, StampOmitted, MaxCallBytes - tsMember + 1},
		{MaxCallBytes - 1, StampOmitted, MaxCallBytes - 1},
		{MaxCallBytes, StampOmitted, MaxCallBytes},
		{MaxCallBytes + 1, StampNone, 0},
	}
	for _, tt := range tests {
		body := mk(tt.size)
		if len(body) != tt.size {
			t.Fatalf("test bug: body is %d bytes, want %d", len(body), tt.size)
		}
		got, stamp, err := p.PrepareAt([]byte("keep"), Track, body, id, at)
		if tt.wantSize == 0 {
			var ie *InvalidError
			if !errors.As(err, &ie) || ie.Reason != ReasonTooLarge || string(got) != "keep" {
				t.Errorf("%d bytes: %q, %v; want too_large and dst unchanged", tt.size, got[:min(len(got), 8)], err)
			} else if want := strconv.Itoa(tt.size) + " bytes"; !strings.Contains(ie.Detail, want) {
				t.Errorf("%d bytes: detail %q, want the size without the relay's timestamp, %s", tt.size, ie.Detail, want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%d bytes: %v", tt.size, err)
			continue
		}
		got = got[len("keep"):]
		if len(got) != tt.wantSize || stamp != tt.stamp {
			t.Errorf("%d bytes: prepared %d bytes, %v; want %d, %v", tt.size, len(got), stamp, tt.wantSize, tt.stamp)
		}
		if stamp == StampOmitted && string(got) != string(body) {
			t.Errorf("%d bytes: omitted, but the call changed", tt.size)
		}
		if stamp == StampInserted && !strings.HasPrefix(string(got), `{"timestamp":"2025-12-01T21:29:06.123Z",`) {
			t.Errorf("%d bytes: inserted, but the call begins %.50s", tt.size, got)
		}
	}
}

// TestPrepareAtAllocs checks the hot path allocates nothing, timestamp
// insertion included, once its scratch buffer has grown.
func TestPrepareAtAllocs(t *testing.T) {
	body := []byte(`{"userId":"user-1","event":"Order Completed","properties":{"total":1},"context":{"ip":"x"},"sentAt":"2026-11-29T01:02:03.5+01:00"}`)
	var p Preparer
	dst := make([]byte, 0, 1024)
	at := time.Now()
	if n := testing.AllocsPerRun(100, func() {
		var err error
		if dst, _, err = p.PrepareAt(dst[:0], Track, body, ID{Prefix: "CIO-1-", Seq: 9}, at); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("PrepareAt allocates %v times per call", n)
	}
}

func FuzzPrepare(f *testing.F) {
	for _, s := range []string{
		`{"userId":"u","event":"e"}`, `{"type":"track","messageId":"x","anonymousId":1,"event":"e"}`,
		`{}`, `{"a":[{"b":"}"}]}`, "{\"userId\":\"\xff\"}", `{"user\u0049d":"u","event":"\"}"}`,
		` { "userId" : "u" , "event" : "e" } `, `[]`, `nul`,
		`{"userId":"u","event":"e","timestamp":"2026-11-29T01:02:03.4+01:00","context":{},"sentAt":"2026-11-29T01:02:03Z"}`,
		`{"userId":"u","event":"e","traits":null}`, `{"userId":"u","event":"e","time\u0073tamp":"2026-02-29T01:02:03Z"}`,
	} {
		f.Add(uint8(Track), []byte(s), int64(1764624546123456789))
	}
	f.Fuzz(func(t *testing.T, typ uint8, body []byte, publishedNs int64) {
		var p Preparer
		tt := Type(typ % 7)
		id := ID{Prefix: "f-", Seq: 1}
		published := time.Unix(0, publishedNs)
		plain, errPlain := p.Prepare(nil, tt, body, id)
		out, stamp, err := p.PrepareAt(nil, tt, body, id, published)
		// The relay's own timestamp never decides whether a call is valid.
		if (err == nil) != (errPlain == nil) {
			t.Fatalf("Prepare: %v; PrepareAt: %v", errPlain, err)
		}
		if err != nil {
			var ie, iePlain *InvalidError
			if !errors.As(err, &ie) || !errors.As(errPlain, &iePlain) {
				t.Fatalf("error is not *InvalidError: %v", err)
			}
			if ie.Reason != iePlain.Reason {
				t.Fatalf("reason %s with a publish time, %s without", ie.Reason, iePlain.Reason)
			}
			return
		}
		if len(out) > MaxCallBytes {
			t.Fatalf("accepted %d bytes", len(out))
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("output not a JSON object: %v\n%s", err, out)
		}
		var typName, mid string
		if json.Unmarshal(m["type"], &typName) != nil || typName != tt.String() {
			t.Fatalf("type = %s, want %v: %s", m["type"], tt, out)
		}
		if json.Unmarshal(m["messageId"], &mid) != nil || mid == "" {
			t.Fatalf("no messageId: %s", out)
		}
		// Customer.io's types, checked with encoding/json and time.Parse.
		for _, k := range []string{"traits", "properties", "context", "integrations"} {
			if v, ok := m[k]; ok && v[0] != '{' {
				t.Fatalf("%s accepted as %s", k, v)
			}
		}
		for _, k := range []string{"timestamp", "sentAt", "originalTimestamp"} {
			v, ok := m[k]
			if !ok {
				continue
			}
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				t.Fatalf("%s accepted as %s", k, v)
			}
			if _, err := time.Parse(time.RFC3339, s); err != nil {
				t.Fatalf("%s accepted as %s: %v", k, v, err)
			}
		}
		wantTS := string(appendTimestamp([]byte(`"`), published)) + `"`
		switch stamp {
		case StampOwn:
			if string(out) != string(plain) {
				t.Fatalf("a call with its own timestamp changed:\n%s\n%s", out, plain)
			}
		case StampInserted:
			if string(m["timestamp"]) != wantTS {
				t.Fatalf("inserted timestamp %s, want %s", m["timestamp"], wantTS)
			}
			if without := strings.Replace(string(out), `"timestamp":`+wantTS+`,`, "", 1); without != string(plain) {
				t.Fatalf("with the timestamp removed\n%s\ndiffers from Prepare's\n%s", without, plain)
			}
		case StampOmitted:
			if string(out) != string(plain) || len(plain)+len(`"timestamp":,`)+len(wantTS) <= MaxCallBytes {
				t.Fatalf("timestamp omitted from a %d-byte call", len(plain))
			}
		case StampNone:
			if canStamp(published) {
				t.Fatalf("no timestamp inserted for publish time %v", published)
			}
			if string(out) != string(plain) {
				t.Fatalf("nothing inserted, but the call changed:\n%s\n%s", out, plain)
			}
		default:
			t.Fatalf("stamp %v", stamp)
		}
	})
}

// benchPrepareBody is a track call of 330 bytes with its own timestamp.
var benchPrepareBody = []byte(`{"userId":"user-123456","event":"Order Completed","properties":{"orderId":"o-98765","total":129.95,"currency":"EUR","products":[{"sku":"A-1","name":"Tea <green> & honey","qty":2},{"sku":"B-2","name":"Mug","qty":1}]},"context":{"ip":"203.0.113.9","library":{"name":"analytics-go","version":"3.3.0"}},"timestamp":"2026-11-29T01:02:03Z"}`)

func BenchmarkPrepare(b *testing.B) {
	body := benchPrepareBody
	var p Preparer
	dst := make([]byte, 0, 1024)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		var err error
		dst, err = p.Prepare(dst[:0], Track, body, ID{Prefix: "CIO-1-", Seq: uint64(i)})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// TestPrepareInvalidFieldNamed checks that a mistyped field is named in the
// error, and that its value is not: the error is logged, and a misplaced
// value may be a person's email.
func TestPrepareInvalidFieldNamed(t *testing.T) {
	tests := []struct{ field, body string }{
		{"traits", `{"userId":"u","traits":"ann@example.com"}`},
		{"properties", `{"userId":"u","event":"e","properties":["ann@example.com"]}`},
		{"context", `{"userId":"u","event":"e","context":null}`},
		{"integrations", `{"userId":"u","event":"e","integrations":true}`},
		{"timestamp", `{"userId":"u","event":"e","timestamp":"ann@example.com"}`},
		{"sentAt", `{"userId":"u","event":"e","sentAt":1764624546}`},
		{"originalTimestamp", `{"userId":"u","event":"e","originalTimestamp":"2026-11-29"}`},
	}
	for _, tt := range tests {
		var p Preparer
		_, _, err := p.PrepareAt(nil, Track, []byte(tt.body), ID{Prefix: "p-", Seq: 1}, time.Now())
		var ie *InvalidError
		if !errors.As(err, &ie) || ie.Reason != ReasonInvalidField {
			t.Errorf("%s: error %v, want %s", tt.body, err, ReasonInvalidField)
			continue
		}
		if !strings.HasPrefix(ie.Detail, tt.field+" must be") {
			t.Errorf("%s: detail %q does not name %s", tt.body, ie.Detail, tt.field)
		}
		if strings.Contains(ie.Detail, "ann@") {
			t.Errorf("%s: detail %q repeats the value", tt.body, ie.Detail)
		}
	}
}

// BenchmarkPrepareAt is BenchmarkPrepare's call without its own timestamp,
// so the publish time is inserted.
func BenchmarkPrepareAt(b *testing.B) {
	body := []byte(`{"userId":"user-123456","event":"Order Completed","properties":{"orderId":"o-98765","total":129.95,"currency":"EUR","products":[{"sku":"A-1","name":"Tea <green> & honey","qty":2},{"sku":"B-2","name":"Mug","qty":1}]},"context":{"ip":"203.0.113.9","library":{"name":"analytics-go","version":"3.3.0"}}}`)
	var p Preparer
	dst := make([]byte, 0, 1024)
	at := time.Unix(0, 1764624546123456789)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		var err error
		dst, _, err = p.PrepareAt(dst[:0], Track, body, ID{Prefix: "CIO-1-", Seq: uint64(i)}, at)
		if err != nil {
			b.Fatal(err)
		}
	}
}

// TestKeyHashIsThePersonKey: the worker orders calls by KeyHash, so a
// person's calls must share it whatever else they carry, and userId wins
// over anonymousId.
func TestKeyHashIsThePersonKey(t *testing.T) {
	hash := func(typ Type, body string) uint64 {
		t.Helper()
		var p Preparer
		if _, err := p.Prepare(nil, typ, []byte(body), ID{Prefix: "x-", Seq: 1}); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		return p.KeyHash()
	}
	u1 := hash(Track, `{"userId":"u1","event":"a","properties":{"n":1}}`)
	tests := []struct {
		name string
		typ  Type
		body string
		same bool
	}{
		{"same user, other call", Identify, `{"traits":{"x":2}, "userId" : "u1"}`, true},
		{"userId wins over anonymousId", Track, `{"anonymousId":"a9","userId":"u1","event":"b"}`, true},
		{"alias by userId", Alias, `{"userId":"u1","previousId":"a9"}`, true},
		{"other user", Track, `{"userId":"u2","event":"a"}`, false},
		{"anonymous only", Track, `{"anonymousId":"u3","event":"a"}`, false},
	}
	for _, tt := range tests {
		if got := hash(tt.typ, tt.body) == u1; got != tt.same {
			t.Errorf("%s: same key as u1 = %v, want %v", tt.name, got, tt.same)
		}
	}
	if a, b := hash(Track, `{"anonymousId":"a9","event":"a"}`), hash(Page, `{"anonymousId":"a9"}`); a != b {
		t.Errorf("anonymousId key differs between calls: %x, %x", a, b)
	}
}
