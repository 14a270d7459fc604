package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
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

// Reason names why a call is invalid. Reasons are stable identifiers: they
// label metrics and dead-letter headers.
type Reason string

// Reasons a call is rejected before it is ever sent.
const (
	ReasonInvalidJSON     Reason = "invalid_json"
	ReasonInvalidUTF8     Reason = "invalid_utf8"
	ReasonUnknownType     Reason = "unknown_type"
	ReasonTypeMismatch    Reason = "type_mismatch"
	ReasonInvalidField    Reason = "invalid_field"
	ReasonMissingUser     Reason = "missing_user"
	ReasonMissingEvent    Reason = "missing_event"
	ReasonMissingName     Reason = "missing_name"
	ReasonMissingGroupID  Reason = "missing_group_id"
	ReasonMissingPrevious Reason = "missing_previous_id"
	ReasonTooLarge        Reason = "too_large"
)

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

// Prepare appends to dst the wire form of body, published as a call of type
// t, and returns the extended slice. On error dst is returned unchanged and
// the error is an *InvalidError.
func (p *Preparer) Prepare(dst []byte, t Type, body []byte, id ID) ([]byte, error) {
	if t == Unknown {
		return dst, invalid(ReasonUnknownType, "no batchable call type for this subject")
	}
	if !utf8.Valid(body) {
		return dst, invalid(ReasonInvalidUTF8, "body is not valid UTF-8")
	}
	c, err := appendCompact(p.scratch[:0], body)
	if err != nil {
		// Rare: let encoding/json say where and why.
		var b bytes.Buffer
		return dst, invalid(ReasonInvalidJSON, "%v", json.Compact(&b, body))
	}
	p.scratch = c
	if len(c) == 0 || c[0] != '{' {
		return dst, invalid(ReasonInvalidJSON, "body must be a JSON object")
	}
	f, err := scanObject(c)
	if err != nil {
		return dst, err
	}
	if err := f.validate(t); err != nil {
		return dst, err
	}

	start := len(dst)
	dst = append(dst, '{')
	sep := func() {
		if len(c) > 2 { // the object has members of its own to follow
			dst = append(dst, ',')
		}
	}
	if f.typ == nil {
		dst = append(dst, `"type":"`...)
		dst = append(dst, t.String()...)
		dst = append(dst, '"')
		if f.messageID == nil {
			dst = append(dst, ',')
		} else {
			sep()
		}
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
		sep()
	}
	dst = append(dst, c[1:]...)
	if n := len(dst) - start; n > MaxCallBytes {
		return dst[:start], invalid(ReasonTooLarge, "call is %d bytes, Customer.io's limit is %d", n, MaxCallBytes)
	}
	return dst, nil
}

// fields holds the raw JSON values of the top-level members validation reads;
// nil means absent.
type fields struct {
	typ, userID, anonymousID, event, name, groupID, previousID, messageID []byte
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

// scanObject walks the members of c, a compacted and valid JSON object, and
// records the values validation needs. A key written with escapes
// ("user\u0049d") is decoded first, as Customer.io's parser would.
func scanObject(c []byte) (fields, error) {
	var f fields
	i := 1
	if c[i] == '}' {
		return f, nil
	}
	for {
		kStart, kEnd := i, endOfString(c, i)
		key := c[kStart+1 : kEnd-1]
		i = kEnd + 1 // past ':'
		vEnd := endOfValue(c, i)
		val := c[i:vEnd]
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
		}
		if slot != nil {
			if *slot != nil {
				// Parsers disagree on which of two values wins; a call
				// whose meaning depends on that is rejected.
				return f, invalid(ReasonInvalidField, "field %q appears more than once", key)
			}
			*slot = val
		}
		i = vEnd
		if c[i] != ',' {
			return f, nil
		}
		i++
	}
}

// endOfString returns the index just past the string starting at c[i].
func endOfString(c []byte, i int) int {
	for j := i + 1; ; j++ {
		switch c[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
}

// endOfValue returns the index just past the value starting at c[i].
func endOfValue(c []byte, i int) int {
	switch c[i] {
	case '"':
		return endOfString(c, i)
	case '{', '[':
		depth := 0
		for j := i; ; j++ {
			switch c[j] {
			case '"':
				j = endOfString(c, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
	default:
		j := i
		for j < len(c) && c[j] != ',' && c[j] != '}' && c[j] != ']' {
			j++
		}
		return j
	}
}

// MessageIDOf returns the messageId a body carries, if it is a JSON object
// with a non-empty string messageId. It is for the rare paths (dead-lettering)
// that need the id without preparing the call.
func MessageIDOf(body []byte) (string, bool) {
	if !utf8.Valid(body) {
		return "", false
	}
	c, err := appendCompact(nil, body)
	if err != nil {
		return "", false
	}
	if len(c) == 0 || c[0] != '{' {
		return "", false
	}
	f, err := scanObject(c)
	if err != nil || f.messageID == nil {
		return "", false
	}
	s, ok := stringValue(f.messageID)
	return s, ok && s != ""
}
