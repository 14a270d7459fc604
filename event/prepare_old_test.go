package event

// The implementation of Prepare before it became one pass (issue 15), kept
// verbatim as the oracle of FuzzPrepareMatchesOld: the one-pass version
// must produce the same bytes, stamp, key and error for every input.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func oldIsSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// oldPreparer is the Preparer of the three-pass implementation.
type oldPreparer struct {
	scratch []byte
	members []int32
	key     uint64
}

var oldStrClass = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

func (p *oldPreparer) PrepareAt(dst []byte, t Type, body []byte, id ID, published time.Time) ([]byte, Stamp, error) {
	if t == Unknown {
		return dst, StampNone, invalid(ReasonUnknownType, "no batchable call type for this subject")
	}
	if !utf8.Valid(body) {
		return dst, StampNone, invalid(ReasonInvalidUTF8, "body is not valid UTF-8")
	}
	p.members = p.members[:0]
	c, err := oldAppendCompactMembers(p.scratch[:0], body, &p.members)
	if err != nil {
		// Rare: let encoding/json say where and why.
		var b bytes.Buffer
		return dst, StampNone, invalid(ReasonInvalidJSON, "%v", json.Compact(&b, body))
	}
	p.scratch = c
	if len(c) == 0 || c[0] != '{' {
		return dst, StampNone, invalid(ReasonInvalidJSON, "body must be a JSON object")
	}
	var f oldFields
	if err := oldScanObject(c, p.members, &f); err != nil {
		return dst, StampNone, err
	}
	if err := f.validate(t); err != nil {
		return dst, StampNone, err
	}
	if isID(f.userID) {
		p.key = keyHash(f.userID)
	} else {
		p.key = keyHash(f.anonymousID)
	}

	stamp := StampNone
	switch {
	case f.timestamp != nil:
		stamp = StampOwn
	case canStamp(published):
		stamp = StampInserted
	}
	// Members are inserted first, each followed by a comma; the body's own
	// members follow.
	start := len(dst)
	dst = append(dst, '{')
	if f.typ == nil {
		dst = append(dst, `"type":"`...)
		dst = append(dst, t.String()...)
		dst = append(dst, `",`...)
	}
	if f.messageID == nil {
		// The prefix comes from a stream name, which JetStream restricts to
		// characters that need no escaping in a JSON string.
		dst = append(dst, `"messageId":`...)
		if id.Override != "" {
			// Read from a header: any text, so encode it as JSON.
			q, _ := json.Marshal(id.Override) // a string always encodes
			dst = append(dst, q...)
		} else {
			dst = append(dst, '"')
			dst = append(dst, id.Prefix...)
			dst = strconv.AppendUint(dst, id.Seq, 10)
			dst = append(dst, '"')
		}
		dst = append(dst, ',')
	}
	tsStart := len(dst)
	if stamp == StampInserted {
		dst = append(dst, `"timestamp":"`...)
		dst = appendTimestamp(dst, published)
		dst = append(dst, `",`...)
	}
	tsEnd := len(dst)
	if len(c) > 2 {
		dst = append(dst, c[1:]...)
	} else {
		// No members of its own (validation refuses that today): the
		// last inserted member takes no comma.
		if dst[len(dst)-1] == ',' {
			dst = dst[:len(dst)-1]
		}
		dst = append(dst, '}')
	}
	n := len(dst) - start
	if n > MaxCallBytes && stamp == StampInserted {
		// Over the limit with the relay's own timestamp: a call is never
		// refused for that, so try it without.
		dst = append(dst[:tsStart], dst[tsEnd:]...)
		n -= tsEnd - tsStart
		stamp = StampOmitted
	}
	if n > MaxCallBytes {
		return dst[:start], StampNone, invalid(ReasonTooLarge, "call is %d bytes, Customer.io's limit is %d", n, MaxCallBytes)
	}
	return dst, stamp, nil
}

func oldScanObject(c []byte, members []int32, f *oldFields) error {
	for m, kStart := range members {
		// A member ends at the comma before the next, the last at the
		// object's closing brace.
		vEnd := len(c) - 1
		if m+1 < len(members) {
			vEnd = int(members[m+1]) - 1
		}
		kEnd := oldEndOfString(c, int(kStart))
		key := c[kStart+1 : kEnd-1]
		val := c[kEnd+1 : vEnd] // past ':'
		if bytes.IndexByte(key, '\\') >= 0 {
			k, _ := stringValue(c[kStart:kEnd])
			key = []byte(k)
		}
		var slot *[]byte
		switch string(key) {
		case "type":
			slot = &f.typ
		case "userId":
			slot = &f.userID
		case "anonymousId":
			slot = &f.anonymousID
		case "event":
			slot = &f.event
		case "name":
			slot = &f.name
		case "groupId":
			slot = &f.groupID
		case "previousId":
			slot = &f.previousID
		case "messageId":
			slot = &f.messageID
		case "traits":
			slot = &f.traits
		case "properties":
			slot = &f.properties
		case "context":
			slot = &f.context
		case "integrations":
			slot = &f.integrations
		case "timestamp":
			slot = &f.timestamp
		case "sentAt":
			slot = &f.sentAt
		case "originalTimestamp":
			slot = &f.originalTimestamp
		}
		if slot != nil {
			if *slot != nil {
				// Parsers disagree on which of two values wins; a call
				// whose meaning depends on that is rejected.
				return invalid(ReasonInvalidField, "field %q appears more than once", key)
			}
			*slot = val
		}
	}
	return nil
}

func oldEndOfString(c []byte, i int) int {
	j := i + 1
	for {
		for !oldStrClass[c[j]] {
			j++
		}
		if c[j] == '"' {
			return j + 1
		}
		j += 2 // a backslash and the character it escapes
	}
}

func oldMessageIDOf(body []byte) (string, bool) {
	if !utf8.Valid(body) {
		return "", false
	}
	var members []int32
	c, err := oldAppendCompactMembers(nil, body, &members)
	if err != nil {
		return "", false
	}
	if len(c) == 0 || c[0] != '{' {
		return "", false
	}
	var f oldFields
	if err := oldScanObject(c, members, &f); err != nil || f.messageID == nil {
		return "", false
	}
	s, ok := stringValue(f.messageID)
	return s, ok && s != ""
}

func oldAppendCompactMembers(dst, src []byte, members *[]int32) ([]byte, error) {
	var stack [64]byte // container kinds; deeper nesting spills to the heap
	st := stack[:0]
	start := len(dst)
	i, n := 0, len(src)
	fail := func() ([]byte, error) { return dst[:start], errSyntax }
	skip := func() {
		for i < n && oldIsSpace(src[i]) {
			i++
		}
	}
	for {
		// A value is expected at src[i].
		skip()
		if i >= n {
			return fail()
		}
		switch c := src[i]; {
		case c == '{' || c == '[':
			if len(st) >= maxDepth {
				return fail()
			}
			dst = append(dst, c)
			i++
			skip()
			if i < n && src[i] == c+2 { // '{'+2 == '}', '['+2 == ']'
				dst = append(dst, c+2)
				i++
				goto closed
			}
			st = append(st, c)
			if c == '{' {
				if i >= n || src[i] != '"' {
					return fail()
				}
				goto key
			}
			continue
		case c == '"':
			var ok bool
			if dst, i, ok = oldAppendString(dst, src, i); !ok {
				return fail()
			}
		case c == '-' || (c >= '0' && c <= '9'):
			j, ok := scanNumber(src, i)
			if !ok {
				return fail()
			}
			dst = append(dst, src[i:j]...)
			i = j
		case c == 't':
			if !hasLit(src, i, "true") {
				return fail()
			}
			dst = append(dst, "true"...)
			i += 4
		case c == 'f':
			if !hasLit(src, i, "false") {
				return fail()
			}
			dst = append(dst, "false"...)
			i += 5
		case c == 'n':
			if !hasLit(src, i, "null") {
				return fail()
			}
			dst = append(dst, "null"...)
			i += 4
		default:
			return fail()
		}
	closed:
		// A value ended: close containers or expect the next member.
		for {
			skip()
			if len(st) == 0 {
				if i != n {
					return fail()
				}
				return dst, nil
			}
			if i >= n {
				return fail()
			}
			top := st[len(st)-1]
			switch src[i] {
			case ',':
				dst = append(dst, ',')
				i++
				if top == '{' {
					skip()
					if i >= n || src[i] != '"' {
						return fail()
					}
					goto key
				}
				goto value
			case top + 2:
				dst = append(dst, top+2)
				i++
				st = st[:len(st)-1]
				continue
			default:
				return fail()
			}
		}
	key:
		if len(st) == 1 && members != nil {
			*members = append(*members, int32(len(dst)-start))
		}
		{
			var ok bool
			if dst, i, ok = oldAppendString(dst, src, i); !ok {
				return fail()
			}
			skip()
			if i >= n || src[i] != ':' {
				return fail()
			}
			dst = append(dst, ':')
			i++
		}
	value:
	}
}

func oldAppendString(dst, src []byte, i int) ([]byte, int, bool) {
	j := i + 1
	for {
		for j < len(src) && !oldStrClass[src[j]] {
			j++
		}
		if j >= len(src) || src[j] < 0x20 {
			return dst, 0, false
		}
		if src[j] == '"' {
			return append(dst, src[i:j+1]...), j + 1, true
		}
		// A backslash.
		if j+1 >= len(src) {
			return dst, 0, false
		}
		switch src[j+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			j += 2
		case 'u':
			if j+6 > len(src) || !isHex(src[j+2]) || !isHex(src[j+3]) || !isHex(src[j+4]) || !isHex(src[j+5]) {
				return dst, 0, false
			}
			j += 6
		default:
			return dst, 0, false
		}
	}
}

// differentialSeeds are bodies whose every branch the two implementations
// must agree on: whitespace in every place, escaped and duplicated keys,
// invalid UTF-8 before and after a syntax error, every mistyped field,
// non-objects, and sizes at the limit.
func differentialSeeds() []string {
	big := strings.Repeat("é", 15990)
	seeds := []string{
		`{"userId":"u","event":"e"}`, `{"type":"track","messageId":"x","anonymousId":1,"event":"e"}`,
		` { "userId" : "u" , "event" : "e" , "properties" : { "a" : [ 1 , 2 ] } } ` + "\n",
		"{\"userId\":\"u\",\"event\":\"e\"}\n", "\t{\"userId\":\"u\",\"event\":\"e\"}",
		`{"userId":"u","userId":"v","event":"e"}`, `{"user\u0049d":"u","event":"\"}"}`, `{"userId":"u","event":"e","event" :1,[}`,
		"{\"userId\":\"\xff\"}", "{\"userId\":\"u\",\"event\":\"e\"", "{\"userId\":\"u\", \"event\":\"e\xff\"", "{\"a\":[1,\"\xc3\"] ,}",
		`[]`, `[{"userId":"u"}]`, `"s"`, `1`, `nul`, `{}`, ` {} `, `{ }`, ``,
		`{"userId":"u","event":"e","traits":null}`, `{"userId":"u","event":"e","properties":[]}`,
		`{"userId":"u","event":"e","timestamp":"2026-02-29T01:02:03Z"}`, `{"userId":"u","event":"e","sentAt":"2026-11-29T01:02:03\u002e5Z"}`,
		`{"type":"page","userId":"u"}`, `{"type":1,"userId":"u"}`, `{"type":"tr\u0061ck","userId":"u","event":"e"}`,
		`{"messageId":"","userId":"u","event":"e"}`, `{"messageId":7,"userId":"u","event":"e"}`,
		`{"userId":"","anonymousId":"a","event":"e"}`, `{"userId":-1.5e3,"event":"e","groupId":"g","name":"n","previousId":"p"}`,
		`{"userId":"u","event":"e","nested":{"userId":"v","userId":"w","x":"\u00e9\t"}}`,
		`{"userId":"u","event":"e","properties":{"p":"` + big + `"}}`,
		`{"userId":"u","event":"e","properties":{"p":"` + big[:len(big)-100] + `"}}`,
		`{"type":"track","messageId":"m","userId":"u","event":"e","properties":{"p":"` + big[:len(big)-40] + `"}}`,
		`{"userId":"u","event":"e","properties":{"p":"` + strings.Repeat("a ", 15990) + `"}}`,
		`{"userId" : "u" , "event":"e","properties":{"p":"` + strings.Repeat(" ", 31950) + `"}}`,
		strings.Repeat(`{"a":`, 70) + `1` + strings.Repeat(`}`, 70),
	}
	return append(seeds, compactSeeds...)
}

// checkMatchesOld prepares body with both implementations and fails on any
// difference in bytes, stamp, error or key.
func checkMatchesOld(t *testing.T, typ Type, body []byte, id ID, published time.Time) {
	t.Helper()
	var p Preparer
	var o oldPreparer
	for _, at := range []time.Time{published, {}} {
		got, stamp, err := p.PrepareAt([]byte("dst:"), typ, body, id, at)
		want, wantStamp, wantErr := o.PrepareAt([]byte("dst:"), typ, body, id, at)
		if fmt.Sprint(err) != fmt.Sprint(wantErr) {
			t.Fatalf("%.200q: error %v, old %v", body, err, wantErr)
		}
		if err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("%.200q: error %T", body, err)
			}
		}
		if !bytes.Equal(got, want) || stamp != wantStamp {
			t.Fatalf("%.200q:\ngot %.300q, %v\nold %.300q, %v", body, got, stamp, want, wantStamp)
		}
		if err == nil && p.KeyHash() != o.key {
			t.Fatalf("%.200q: key %x, old %x", body, p.KeyHash(), o.key)
		}
	}
	gotID, gotOK := MessageIDOf(body)
	wantID, wantOK := oldMessageIDOf(body)
	if gotID != wantID || gotOK != wantOK {
		t.Fatalf("%.200q: MessageIDOf = %q, %v; old %q, %v", body, gotID, gotOK, wantID, wantOK)
	}
}

func TestPrepareMatchesOld(t *testing.T) {
	at := time.Unix(0, 1764624546123456789)
	for _, s := range differentialSeeds() {
		for typ := range Type(7) {
			checkMatchesOld(t, typ, []byte(s), ID{Prefix: "CIO-1-", Seq: 42}, at)
			checkMatchesOld(t, typ, []byte(s), ID{Override: "r\"1\u00e9"}, at)
		}
	}
}

// FuzzPrepareMatchesOld is the one-pass Prepare against the three-pass one
// it replaced: same bytes, stamp, error text and key for any input.
func FuzzPrepareMatchesOld(f *testing.F) {
	for _, s := range differentialSeeds() {
		f.Add(uint8(Track), []byte(s), int64(1764624546123456789), "")
	}
	f.Add(uint8(Identify), []byte(`{"userId":"u"}`), int64(-1), "over\"ride")
	f.Fuzz(func(t *testing.T, typ uint8, body []byte, publishedNs int64, override string) {
		checkMatchesOld(t, Type(typ%7), body, ID{Prefix: "f-", Seq: uint64(publishedNs), Override: override}, time.Unix(0, publishedNs))
	})
}

// BenchmarkPrepareOld is BenchmarkPrepare's call through the three-pass
// implementation, to compare the two on the same machine at the same time.
func BenchmarkPrepareOld(b *testing.B) {
	var o oldPreparer
	dst := make([]byte, 0, 1024)
	b.SetBytes(int64(len(benchPrepareBody)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		var err error
		dst, _, err = o.PrepareAt(dst[:0], Track, benchPrepareBody, ID{Prefix: "CIO-1-", Seq: uint64(i)}, time.Time{})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// oldFields holds the raw JSON values of the top-level members validation reads;
// nil means absent.
type oldFields struct {
	typ, userID, anonymousID, event, name, groupID, previousID, messageID []byte
	// Typed by Customer.io's reference: objects, and date-time strings.
	traits, properties, context, integrations []byte
	timestamp, sentAt, originalTimestamp      []byte
}

func (f *oldFields) validate(t Type) error {
	if f.typ != nil && !stringIs(f.typ, t.String()) {
		s, ok := stringValue(f.typ)
		if !ok {
			return invalid(ReasonInvalidField, "type must be a string")
		}
		if s != t.String() {
			return invalid(ReasonTypeMismatch, "type %q disagrees with the subject's %q", truncate(s), t)
		}
	}
	if f.messageID != nil && !isNonEmptyString(f.messageID) {
		return invalid(ReasonInvalidField, "messageId must be a non-empty string (omit it to have one derived)")
	}
	// Customer.io's reference types these; in strict mode it refuses a
	// call that breaks them, in permissive mode it drops it silently.
	// null is not an object or a date-time: the Segment libraries omit a
	// field they have no value for.
	switch {
	case !objectOrAbsent(f.traits):
		return notObject("traits", f.traits)
	case !objectOrAbsent(f.properties):
		return notObject("properties", f.properties)
	case !objectOrAbsent(f.context):
		return notObject("context", f.context)
	case !objectOrAbsent(f.integrations):
		return notObject("integrations", f.integrations)
	case f.timestamp != nil && !isDateTimeString(f.timestamp):
		return notDateTime("timestamp", f.timestamp)
	case f.sentAt != nil && !isDateTimeString(f.sentAt):
		return notDateTime("sentAt", f.sentAt)
	case f.originalTimestamp != nil && !isDateTimeString(f.originalTimestamp):
		return notDateTime("originalTimestamp", f.originalTimestamp)
	}
	hasUser := isID(f.userID)
	switch t {
	case Alias:
		if !hasUser {
			return invalid(ReasonMissingUser, "alias needs userId")
		}
		if !isID(f.previousID) {
			return invalid(ReasonMissingPrevious, "alias needs previousId")
		}
		return nil
	default:
		if !hasUser && !isID(f.anonymousID) {
			return invalid(ReasonMissingUser, "%s needs userId or anonymousId", t)
		}
	}
	switch t {
	case Track:
		if !isNonEmptyString(f.event) {
			return invalid(ReasonMissingEvent, "track needs event, a non-empty string")
		}
	case Screen:
		if !isNonEmptyString(f.name) {
			return invalid(ReasonMissingName, "screen needs name, a non-empty string")
		}
	case Group:
		if !isID(f.groupID) {
			return invalid(ReasonMissingGroupID, "group needs groupId")
		}
	}
	return nil
}
