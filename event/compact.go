package event

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"unicode/utf8"
)

// maxDepth matches encoding/json's nesting limit, so a body is valid here
// exactly when json.Valid says so.
const maxDepth = 10000

var (
	errSyntax = errors.New("invalid JSON syntax")
	errUTF8   = errors.New("invalid UTF-8")
)

// strStop marks the bytes a string scan must stop at: the closing quote, a
// backslash, the control characters JSON forbids inside strings, and the
// first byte of every multi-byte UTF-8 sequence, which is checked there.
var strStop = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	for c := 0x80; c < 0x100; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// isSpace reports whether c is JSON whitespace; most bytes tested are above
// ' ', and they take one comparison.
func isSpace(c byte) bool { return c <= ' ' && (c == ' ' || c == '\t' || c == '\n' || c == '\r') }

// field is a top-level member Prepare reads.
type field uint8

const (
	fieldType field = iota
	fieldUserID
	fieldAnonymousID
	fieldEvent
	fieldName
	fieldGroupID
	fieldPreviousID
	fieldMessageID
	fieldTraits
	fieldProperties
	fieldContext
	fieldIntegrations
	fieldTimestamp
	fieldSentAt
	fieldOriginalTimestamp
	numFields
	noField field = 0xff
)

var fieldNames = [numFields]string{
	"type", "userId", "anonymousId", "event", "name", "groupId", "previousId", "messageId",
	"traits", "properties", "context", "integrations", "timestamp", "sentAt", "originalTimestamp",
}

// fieldOf returns the field named key, or noField. A switch on the string
// conversion compiles to a comparison without allocating.
func fieldOf(key []byte) field {
	switch string(key) {
	case "type":
		return fieldType
	case "userId":
		return fieldUserID
	case "anonymousId":
		return fieldAnonymousID
	case "event":
		return fieldEvent
	case "name":
		return fieldName
	case "groupId":
		return fieldGroupID
	case "previousId":
		return fieldPreviousID
	case "messageId":
		return fieldMessageID
	case "traits":
		return fieldTraits
	case "properties":
		return fieldProperties
	case "context":
		return fieldContext
	case "integrations":
		return fieldIntegrations
	case "timestamp":
		return fieldTimestamp
	case "sentAt":
		return fieldSentAt
	case "originalTimestamp":
		return fieldOriginalTimestamp
	}
	return noField
}

// spans records where the values of the fields Prepare reads lie in the
// compacted output of compact: offsets from its start, end exclusive.
type spans struct {
	at  [numFields][2]int32
	set uint16 // bit f: field f was seen
	// dup is the first field seen twice, noField if none. Parsers disagree
	// on which of two values wins, so such a call is rejected; the scan
	// goes on, because a syntax or UTF-8 error later in the body takes
	// precedence.
	dup field
}

// fill sets in f the recorded values, as slices of c, the compacted output.
func (s *spans) fill(f *fields, c []byte) {
	for set := s.set; set != 0; set &= set - 1 {
		i := bits.TrailingZeros16(set)
		f[i] = c[s.at[i][0]:s.at[i][1]:s.at[i][1]]
	}
}

// appendCompact validates src as one JSON value and appends it to dst
// without insignificant whitespace: the output of json.Compact. Unlike
// json.Compact it also refuses strings that are not valid UTF-8
// (errUTF8). On error dst is returned unchanged.
func appendCompact(dst, src []byte) ([]byte, error) {
	start := len(dst)
	c, buf, err := compact(dst, src, nil)
	if err != nil {
		return dst[:start], err
	}
	if len(buf) == start { // nothing was copied: c is part of src
		buf = append(buf, c...)
	}
	return buf, nil
}

// compact validates src as one JSON value (encoding/json's grammar and depth
// limit, and valid UTF-8 in every string) and returns its compact form, the
// output of json.Compact, in one pass over src and without allocating (but
// for a top-level key written with escapes, decoded to be matched).
//
// A body is usually compact already, so nothing is copied unless src has
// whitespace to drop inside the value: c is then a slice of src. Otherwise
// the runs between whitespace are appended to buf, and c is the part of the
// returned buf past its original length. The caller keeps buf to reuse it.
//
// When sp is not nil and the value is an object, compact records in sp where
// the values of its top-level fields lie in c (keys written with escapes
// decoded first, as Customer.io's parser would).
//
// The error is errUTF8 when an invalid UTF-8 sequence is met before any
// syntax error, else errSyntax. A syntax error ends the scan, so src may
// hold invalid UTF-8 past it: a caller that ranks invalid UTF-8 first
// checks src again on errSyntax.
func compact(buf, src []byte, sp *spans) (c, _ []byte, err error) {
	var stack [64]byte // container kinds; deeper nesting spills to the heap
	st := stack[:0]
	base := len(buf)
	n := len(src)
	i := 0
	for i < n && isSpace(src[i]) {
		i++
	}
	from := i // start of the run of src not yet in buf
	// The offset in c of src[i] is len(buf)-base + i-from. No closures: they
	// would keep i and buf out of registers. Whitespace is tested for only
	// where the expected byte is not there, as the last case.
	pending := noField // the field whose value is being read
	var vStart int
	if sp != nil {
		sp.set, sp.dup = 0, noField
	}
value:
	// A value is expected at src[i].
	for {
		if i >= n {
			return nil, buf[:base], errSyntax
		}
		switch ch := src[i]; {
		case ch == '"':
			// A string (see scanStringSlow for the written-out loop).
			j := i + 1
			for {
				if j+8 > n {
					j, _ = scanStringSlow(src, j)
					break
				}
				x := binary.LittleEndian.Uint64(src[j:])
				m := stopMask(x)
				if m == 0 {
					j += 8
					continue
				}
				k := bits.TrailingZeros64(m)
				if j += k >> 3; byte(x>>(k&^7)) == '"' {
					j++
					break
				}
				j, _ = scanStringSlow(src, j)
				break
			}
			if j < 0 {
				return nil, buf[:base], scanErr(j)
			}
			i = j
			goto closed
		case ch == '{' || ch == '[':
			if len(st) >= maxDepth {
				return nil, buf[:base], errSyntax
			}
			i++
			if i < n && isSpace(src[i]) {
				buf, i = dropSpace(buf, src, from, i)
				from = i
			}
			if i < n && src[i] == ch+2 { // '{'+2 == '}', '['+2 == ']'
				i++
				goto closed
			}
			st = append(st, ch)
			if ch == '{' {
				goto key
			}
		case ch == '-' || (ch >= '0' && ch <= '9'):
			j, ok := scanNumber(src, i)
			if !ok {
				return nil, buf[:base], errSyntax
			}
			i = j
			goto closed
		case ch == 't' && hasLit(src, i, "true"), ch == 'n' && hasLit(src, i, "null"):
			i += 4
			goto closed
		case ch == 'f' && hasLit(src, i, "false"):
			i += 5
			goto closed
		case isSpace(ch):
			buf, i = dropSpace(buf, src, from, i)
			from = i
		default:
			return nil, buf[:base], errSyntax
		}
	}
closed:
	// A value ended at src[i]: close containers or expect the next member.
	for {
		if len(st) == 0 {
			// The whole value: trailing whitespace is dropped without
			// copying anything.
			end := i
			for i < n && isSpace(src[i]) {
				i++
			}
			if i != n {
				return nil, buf[:base], errSyntax
			}
			// Every run appended to buf is at least one byte, so an
			// unchanged buf means nothing was copied.
			if len(buf) == base {
				return src[from:end:end], buf, nil
			}
			buf = append(buf, src[from:end]...)
			return buf[base:], buf, nil
		}
		if len(st) == 1 && pending != noField {
			sp.at[pending] = [2]int32{int32(vStart), int32(len(buf) - base + i - from)}
			pending = noField
		}
		if i >= n {
			return nil, buf[:base], errSyntax
		}
		top := st[len(st)-1]
		switch src[i] {
		case ',':
			i++
			if top == '{' {
				goto key
			}
			goto value
		case top + 2:
			i++
			st = st[:len(st)-1]
		case ' ', '\t', '\n', '\r':
			buf, i = dropSpace(buf, src, from, i)
			from = i
		default:
			return nil, buf[:base], errSyntax
		}
	}
key:
	// A member is expected at src[i]: a string, ':' and a value.
	{
		if i < n && isSpace(src[i]) {
			buf, i = dropSpace(buf, src, from, i)
			from = i
		}
		if i >= n || src[i] != '"' {
			return nil, buf[:base], errSyntax
		}
		// The key, scanned as a string value is above.
		k, j, esc := i, i+1, false
		for {
			if j+8 > n {
				j, esc = scanStringSlow(src, j)
				break
			}
			x := binary.LittleEndian.Uint64(src[j:])
			m := stopMask(x)
			if m == 0 {
				j += 8
				continue
			}
			b := bits.TrailingZeros64(m)
			if j += b >> 3; byte(x>>(b&^7)) == '"' {
				j++
				break
			}
			j, esc = scanStringSlow(src, j)
			break
		}
		if j < 0 {
			return nil, buf[:base], scanErr(j)
		}
		i = j
		f := noField
		if len(st) == 1 && sp != nil {
			f = keyField(src[k:j], esc)
		}
		if i >= n || src[i] != ':' {
			if i < n && isSpace(src[i]) {
				buf, i = dropSpace(buf, src, from, i)
				from = i
			}
			if i >= n || src[i] != ':' {
				return nil, buf[:base], errSyntax
			}
		}
		i++
		switch {
		case f == noField:
		case sp.set&(1<<f) != 0:
			if sp.dup == noField {
				sp.dup = f
			}
		default:
			sp.set |= 1 << f
			pending = f
			// Whitespace after ':' is dropped: the value begins where the
			// output stands now.
			vStart = len(buf) - base + i - from
		}
	}
	goto value
}

// dropSpace appends the run src[from:i] to buf and returns the index past
// the whitespace at src[i], where the next run begins.
func dropSpace(buf, src []byte, from, i int) ([]byte, int) {
	buf = append(buf, src[from:i]...)
	for i < len(src) && isSpace(src[i]) {
		i++
	}
	return buf, i
}

// keyField returns the field a key names; key is the string as written,
// quotes included, and esc says it holds an escape, which is decoded first.
func keyField(key []byte, esc bool) field {
	if !esc {
		return fieldOf(key[1 : len(key)-1])
	}
	s, ok := stringValue(key) // rare: allocates
	if !ok {
		return noField
	}
	return fieldOf([]byte(s))
}

const (
	lows  = 0x0101010101010101
	highs = 0x8080808080808080
)

// stopMask flags, in the top bit of each byte of x, the bytes a string scan
// stops at (see strStop), eight at a time. Subtracting one from x^'"' sets
// the top bit of a byte that was '"' (0 wraps to 0xff), and of no byte
// below 0x80 but that; the same goes for '\\', and subtracting 0x20 sets it
// for the bytes below 0x20. Bytes from 0x80 up are flagged by x's own top
// bit, so the false flags the subtractions raise there need no masking. A
// borrow only moves upwards from a flagged byte, so the lowest flag is
// exact; those above it may not be, and only the first is used.
func stopMask(x uint64) uint64 {
	return (((x ^ (lows * '"')) - lows) | ((x ^ (lows * '\\')) - lows) | (x - lows*0x20) | x) & highs
}

// String scans return the index past the closing quote, or one of these.
const (
	badSyntax = -1
	badUTF8   = -2
)

// A string is scanned in compact's loop, written out at both places (a call
// would send every value live there to the stack and back): plain ASCII,
// most of a call, is skipped eight bytes at a time with stopMask, and a
// string that closes before any other stop byte is done. Anything else
// goes to scanStringSlow.

// scanStringSlow checks the rest of a string from src[j], inside it — its
// escapes, the absence of control characters, and its UTF-8 — and returns
// the index past its closing quote (or badSyntax, badUTF8) and whether it
// holds an escape. It runs for the last bytes of the input, escapes and
// multi-byte characters.
func scanStringSlow(src []byte, j int) (int, bool) {
	esc := false
	for {
		if j+8 <= len(src) {
			m := stopMask(binary.LittleEndian.Uint64(src[j:]))
			if m == 0 {
				j += 8
				continue
			}
			j += bits.TrailingZeros64(m) >> 3
		} else {
			for j < len(src) && !strStop[src[j]] {
				j++
			}
			if j >= len(src) {
				return badSyntax, false
			}
		}
		switch c := src[j]; {
		case c == '"':
			return j + 1, esc
		case c == '\\':
			esc = true
			if j+1 >= len(src) {
				return badSyntax, false
			}
			switch src[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if j+6 > len(src) || !isHex(src[j+2]) || !isHex(src[j+3]) || !isHex(src[j+4]) || !isHex(src[j+5]) {
					return badSyntax, false
				}
				j += 6
			default:
				return badSyntax, false
			}
		case c < 0x20:
			return badSyntax, false
		default: // the first byte of a multi-byte sequence
			r, size := utf8.DecodeRune(src[j:])
			if r == utf8.RuneError && size == 1 {
				return badUTF8, false
			}
			j += size
		}
	}
}

// scanErr is the error for a string scan's bad result.
func scanErr(j int) error {
	if j == badUTF8 {
		return errUTF8
	}
	return errSyntax
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber returns the index past the number at src[i].
func scanNumber(src []byte, i int) (int, bool) {
	n := len(src)
	if src[i] == '-' {
		i++
	}
	switch {
	case i < n && src[i] == '0':
		i++
	case i < n && src[i] >= '1' && src[i] <= '9':
		for i < n && isDigit(src[i]) {
			i++
		}
	default:
		return 0, false
	}
	if i < n && src[i] == '.' {
		i++
		if i >= n || !isDigit(src[i]) {
			return 0, false
		}
		for i < n && isDigit(src[i]) {
			i++
		}
	}
	if i < n && (src[i] == 'e' || src[i] == 'E') {
		i++
		if i < n && (src[i] == '+' || src[i] == '-') {
			i++
		}
		if i >= n || !isDigit(src[i]) {
			return 0, false
		}
		for i < n && isDigit(src[i]) {
			i++
		}
	}
	return i, true
}

func hasLit(src []byte, i int, lit string) bool {
	return len(src)-i >= len(lit) && string(src[i:i+len(lit)]) == lit
}
