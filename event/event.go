package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxCallBytes is Customer.io's limit on one call, read the strict way its
// own Go library does (maxMessageBytes = 32000). A larger call is answered
// 200 and silently dropped, so it must never be sent.
const MaxCallBytes = 32000

// SubjectPrefix is the subject token every call is published under: a call
// of type track is published on "cio.track".
const SubjectPrefix = "cio."

// Type is the type of a CDP call.
type Type uint8

// The batchable CDP call types.
const (
	Unknown Type = iota
	Identify
	Track
	Page
	Screen
	Group
	Alias
)

var typeNames = [...]string{"", "identify", "track", "page", "screen", "group", "alias"}

// Types lists every batchable call type, in a stable order.
var Types = []Type{Identify, Track, Page, Screen, Group, Alias}

func (t Type) String() string {
	if int(t) < len(typeNames) && t != Unknown {
		return typeNames[t]
	}
	return "unknown"
}

// ParseType returns the Type named s, or Unknown.
func ParseType(s string) Type {
	for i, n := range typeNames {
		if i > 0 && n == s {
			return Type(i)
		}
	}
	return Unknown
}

// Subject returns the subject calls of type t are published on: "cio.track".
func (t Type) Subject() string { return SubjectPrefix + t.String() }

// TypeOfSubject returns the call type of a message published on subject
// ("cio.track" → Track), or Unknown for any other subject.
func TypeOfSubject(subject string) Type {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix)
	if !ok {
		return Unknown
	}
	return ParseType(rest)
}

// InvalidError reports a call that can never be delivered as published.
type InvalidError struct {
	Reason Reason
	Detail string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("invalid call (%s): %s", e.Reason, e.Detail)
}

func invalid(r Reason, format string, args ...any) *InvalidError {
	return &InvalidError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// Preparer validates calls and produces their wire form. Its zero value is
// ready to use; it keeps a scratch buffer between calls, so it is not safe
// for concurrent use.
type Preparer struct {
	scratch []byte
	members []int32 // where each top-level member of scratch begins
	key     uint64  // KeyHash of the call last prepared
}

// KeyHash returns a 64-bit hash of the person key of the call the last
// successful Prepare or PrepareAt prepared: its userId, else its
// anonymousId, as the compacted JSON value (quotes included). The worker
// orders a person's calls by it. Two keys that collide only share an order,
// which costs parallelism, never correctness. A key spelled with escapes
// ("\u0061" for "a") hashes apart from its plain spelling.
func (p *Preparer) KeyHash() uint64 { return p.key }

// keyHash is FNV-1a over b: no allocation, and good enough to spread keys
// over a few lanes.
func keyHash(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// ID is the messageId a call gets when its body has none: Prefix followed by
// the decimal Seq. Derived from the stream and sequence of the NATS message,
// it is the same on every redelivery, so Customer.io de-duplicates it.
//
// Override, when set, is used as is instead: a call replayed from the
// dead-letter stream keeps the id it was first derived with.
type ID struct {
	Prefix   string
	Seq      uint64
	Override string
}

// String returns the id.
func (id ID) String() string {
	if id.Override != "" {
		return id.Override
	}
	return id.Prefix + strconv.FormatUint(id.Seq, 10)
}

// Stamp says what became of a call's timestamp in [Preparer.PrepareAt]:
// whether the relay inserted the time the call was published, so
// Customer.io records when it happened rather than when it arrived.
type Stamp uint8

const (
	// StampNone: the call has no timestamp and none was inserted, because
	// no publish time was given (Prepare); Customer.io stamps it on
	// arrival.
	StampNone Stamp = iota
	// StampOwn: the call has its own timestamp, kept as written.
	StampOwn
	// StampInserted: the publish time was inserted as "timestamp".
	StampInserted
	// StampOmitted: the call fits MaxCallBytes only without the timestamp
	// the relay would insert, so it is sent without one rather than
	// refused for a field the relay itself added.
	StampOmitted
)

var stampNames = [...]string{"none", "own", "inserted", "omitted"}

func (s Stamp) String() string {
	if int(s) < len(stampNames) {
		return stampNames[s]
	}
	return "unknown"
}

// Prepare appends to dst the wire form of body, published as a call of type
// t, and returns the extended slice. It inserts no timestamp: it is
// [Preparer.PrepareAt] without a publish time, for callers that have none
// yet (a publisher, before JetStream has stored the call). On error dst is
// returned unchanged and the error is an *InvalidError.
func (p *Preparer) Prepare(dst []byte, t Type, body []byte, id ID) ([]byte, error) {
	dst, _, err := p.PrepareAt(dst, t, body, id, time.Time{})
	return dst, err
}

// PrepareAt is Prepare for a call published at published (the JetStream
// publish time of its message): a call without a "timestamp" gets
// published, in UTC with milliseconds ("2026-11-29T01:02:03.456Z"), as its
// timestamp, so Customer.io records when the event happened, not when a
// backlog drained. The inserted text counts towards MaxCallBytes like the
// inserted type and messageId; a call that fits only without it is
// prepared without it (StampOmitted). A call with its own timestamp is
// never changed. A zero published inserts nothing.
func (p *Preparer) PrepareAt(dst []byte, t Type, body []byte, id ID, published time.Time) ([]byte, Stamp, error) {
	if t == Unknown {
		return dst, StampNone, invalid(ReasonUnknownType, "no batchable call type for this subject")
	}
	if !utf8.Valid(body) {
		return dst, StampNone, invalid(ReasonInvalidUTF8, "body is not valid UTF-8")
	}
	p.members = p.members[:0]
	c, err := appendCompactMembers(p.scratch[:0], body, &p.members)
	if err != nil {
		// Rare: let encoding/json say where and why.
		var b bytes.Buffer
		return dst, StampNone, invalid(ReasonInvalidJSON, "%v", json.Compact(&b, body))
	}
	p.scratch = c
	if len(c) == 0 || c[0] != '{' {
		return dst, StampNone, invalid(ReasonInvalidJSON, "body must be a JSON object")
	}
	var f fields
	if err := scanObject(c, p.members, &f); err != nil {
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

// fields holds the raw JSON values of the top-level members validation reads;
// nil means absent.
type fields struct {
	typ, userID, anonymousID, event, name, groupID, previousID, messageID []byte
	// Typed by Customer.io's reference: objects, and date-time strings.
	traits, properties, context, integrations []byte
	timestamp, sentAt, originalTimestamp      []byte
}

func (f *fields) validate(t Type) error {
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

func objectOrAbsent(raw []byte) bool { return raw == nil || raw[0] == '{' }

func notObject(name string, raw []byte) error {
	return invalid(ReasonInvalidField, "%s must be an object, not %s", name, kindOf(raw))
}

func notDateTime(name string, raw []byte) error {
	what := kindOf(raw)
	if what == "a string" {
		what = "a string in another form (a real date, T, and Z or ±hh:mm are required)"
	}
	return invalid(ReasonInvalidField, "%s must be an RFC 3339 date-time string such as %q, not %s",
		name, "2026-11-29T01:02:03.456Z", what)
}

// isDateTimeString reports whether raw, a valid JSON value, is a string
// holding an RFC 3339 date-time (see isDateTime). Escapes are decoded
// first, as Customer.io's parser would; only then does this allocate.
func isDateTimeString(raw []byte) bool {
	if raw[0] != '"' {
		return false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return isDateTime(inner)
	}
	s, ok := stringValue(raw)
	return ok && isDateTime(s)
}

// kindOf names the JSON type of raw, a valid JSON value, for an error
// message. Never its text: the error is logged, and a misplaced value may
// be a person's email.
func kindOf(raw []byte) string {
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// isID reports whether raw is an identifier Customer.io accepts: a non-empty
// string or a number.
func isID(raw []byte) bool {
	if len(raw) == 0 {
		return false
	}
	if raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9') {
		return true
	}
	return isNonEmptyString(raw)
}

// isNonEmptyString reports whether raw, a valid JSON value, is a string
// other than "": any escape decodes to at least one character.
func isNonEmptyString(raw []byte) bool {
	return len(raw) > 2 && raw[0] == '"'
}

// stringIs reports whether raw, a valid JSON value, is a string written
// without escapes as s; without allocating.
func stringIs(raw []byte, s string) bool {
	return len(raw) == len(s)+2 && raw[0] == '"' && string(raw[1:len(raw)-1]) == s
}

// stringValue decodes raw when it is a JSON string.
func stringValue(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}

// scanObject reads the members of c, a compacted and valid JSON object
// whose members begin at the offsets members lists (appendCompactMembers),
// and records the values validation needs. A key written with escapes
// ("user\u0049d") is decoded first, as Customer.io's parser would.
func scanObject(c []byte, members []int32, f *fields) error {
	for m, kStart := range members {
		// A member ends at the comma before the next, the last at the
		// object's closing brace.
		vEnd := len(c) - 1
		if m+1 < len(members) {
			vEnd = int(members[m+1]) - 1
		}
		kEnd := endOfString(c, int(kStart))
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

// endOfString returns the index just past the string starting at c[i].
// c is valid JSON, so only a quote or a backslash can stop the scan.
func endOfString(c []byte, i int) int {
	j := i + 1
	for {
		for !strClass[c[j]] {
			j++
		}
		if c[j] == '"' {
			return j + 1
		}
		j += 2 // a backslash and the character it escapes
	}
}

// MessageIDOf returns the messageId a body carries, if it is a JSON object
// with a non-empty string messageId. It is for the rare paths (dead-lettering)
// that need the id without preparing the call.
func MessageIDOf(body []byte) (string, bool) {
	if !utf8.Valid(body) {
		return "", false
	}
	var members []int32
	c, err := appendCompactMembers(nil, body, &members)
	if err != nil {
		return "", false
	}
	if len(c) == 0 || c[0] != '{' {
		return "", false
	}
	var f fields
	if err := scanObject(c, members, &f); err != nil || f.messageID == nil {
		return "", false
	}
	s, ok := stringValue(f.messageID)
	return s, ok && s != ""
}
