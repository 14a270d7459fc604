package event

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
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

func TestPrepareInvalid(t *testing.T) {
	big := `{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("x", MaxCallBytes) + `"}}`
	tests := []struct {
		name string
		typ  Type
		body string
		want Reason
	}{
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

func FuzzPrepare(f *testing.F) {
	for _, s := range []string{
		`{"userId":"u","event":"e"}`, `{"type":"track","messageId":"x","anonymousId":1,"event":"e"}`,
		`{}`, `{"a":[{"b":"}"}]}`, "{\"userId\":\"\xff\"}", `{"user\u0049d":"u","event":"\"}"}`,
		` { "userId" : "u" , "event" : "e" } `, `[]`, `nul`,
	} {
		f.Add(uint8(Track), []byte(s))
	}
	f.Fuzz(func(t *testing.T, typ uint8, body []byte) {
		var p Preparer
		tt := Type(typ % 7)
		out, err := p.Prepare(nil, tt, body, ID{Prefix: "f-", Seq: 1})
		if err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("error is not *InvalidError: %v", err)
			}
			return
		}
		if len(out) > MaxCallBytes {
			t.Fatalf("accepted %d bytes", len(out))
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("output not a JSON object: %v\n%s", err, out)
		}
		if m["type"] != tt.String() {
			t.Fatalf("type = %v, want %v: %s", m["type"], tt, out)
		}
		if s, _ := m["messageId"].(string); s == "" {
			t.Fatalf("no messageId: %s", out)
		}
	})
}

func BenchmarkPrepare(b *testing.B) {
	body := []byte(`{"userId":"user-123456","event":"Order Completed","properties":{"orderId":"o-98765","total":129.95,"currency":"EUR","products":[{"sku":"A-1","name":"Tea <green> & honey","qty":2},{"sku":"B-2","name":"Mug","qty":1}]},"context":{"ip":"203.0.113.9","library":{"name":"analytics-go","version":"3.3.0"}},"timestamp":"2026-11-29T01:02:03Z"}`)
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
