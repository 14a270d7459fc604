package ciotest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// The scanners below walk JSON that encoding/json has already validated
// (json.Valid on the whole body; every value inside it is valid too). They
// only find where values start and end, so they need no error paths, never
// copy, and run several times faster than a json.Decoder, which matters when
// an end-to-end test pushes a million calls through the stand-in.

// span locates one JSON value inside the bytes that were scanned.
type span struct{ start, end int }

var (
	errNotObject = errors.New("not a JSON object")
	errNotArray  = errors.New("not a JSON array")
)

// eachMember calls fn with the key and value of each member of the object
// data, in order. data must be valid JSON; it returns errNotObject if it is
// another kind of value. Keys are decoded ("user\u0049d" is userId), as any
// JSON parser would; key is only valid during the call.
func eachMember(data []byte, fn func(key []byte, val span)) error {
	i := skipSpace(data, 0)
	if data[i] != '{' {
		return errNotObject
	}
	i = skipSpace(data, i+1)
	for data[i] != '}' {
		kEnd := endOfString(data, i)
		key := data[i+1 : kEnd-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var k string
			_ = json.Unmarshal(data[i:kEnd], &k) // valid JSON: cannot fail
			key = []byte(k)
		}
		i = skipSpace(data, kEnd) // at ':'
		vStart := skipSpace(data, i+1)
		vEnd := endOfValue(data, vStart)
		fn(key, span{vStart, vEnd})
		i = skipSpace(data, vEnd) // at ',' or '}'
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return nil
}

// elements returns where each element of the array data lies. data must be
// valid JSON; it returns errNotArray if it is another kind of value.
func elements(data []byte) ([]span, error) {
	i := skipSpace(data, 0)
	if data[i] != '[' {
		return nil, errNotArray
	}
	var vs []span
	i = skipSpace(data, i+1)
	for data[i] != ']' {
		end := endOfValue(data, i)
		vs = append(vs, span{i, end})
		i = skipSpace(data, end)
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return vs, nil
}

// checkJSON returns nil when b is one valid JSON value, else an error
// saying where it is not.
func checkJSON(b []byte) error {
	if json.Valid(b) {
		return nil
	}
	var raw json.RawMessage
	err := json.Unmarshal(b, &raw)
	var se *json.SyntaxError
	if errors.As(err, &se) && se.Offset > 0 {
		return fmt.Errorf("invalid JSON body at byte %d: %w", se.Offset, err)
	}
	return fmt.Errorf("invalid JSON body: %w", err)
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// endOfString returns the index just past the string starting at b[i].
func endOfString(b []byte, i int) int {
	for j := i + 1; ; j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
}

// endOfValue returns the index just past the value starting at b[i].
func endOfValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return endOfString(b, i)
	case '{', '[':
		depth := 0
		for j := i; ; j++ {
			switch b[j] {
			case '"':
				j = endOfString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
	default: // number, true, false, null
		j := i + 1
		for j < len(b) && !endsLiteral(b[j]) {
			j++
		}
		return j
	}
}

func endsLiteral(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// jsonKind names the kind of the JSON value raw, judged by its first byte;
// raw must be valid JSON.
func jsonKind(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// stringValue decodes raw when it is a JSON string.
func stringValue(raw []byte) (string, bool) {
	if jsonKind(raw) != "string" {
		return "", false
	}
	if inner := raw[1 : len(raw)-1]; bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// isNonEmptyString reports whether raw is a JSON string other than "".
func isNonEmptyString(raw []byte) bool {
	// Any character, escaped or not, makes the decoded string non-empty.
	return jsonKind(raw) == "string" && len(raw) > 2
}

// isID reports whether raw is an identifier Customer.io accepts for userId,
// anonymousId, groupId or previousId: a non-empty string or a number.
func isID(raw []byte) bool {
	return jsonKind(raw) == "number" || isNonEmptyString(raw)
}

// idValue is the identifier raw as a string: a string decoded, a number as
// written, anything else "".
func idValue(raw []byte) string {
	if jsonKind(raw) == "number" {
		return string(raw)
	}
	s, _ := stringValue(raw)
	return s
}
