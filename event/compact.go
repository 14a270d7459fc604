package event

import "errors"

// maxDepth matches encoding/json's nesting limit, so a body is valid here
// exactly when json.Valid says so.
const maxDepth = 10000

var errSyntax = errors.New("invalid JSON syntax")

// strClass marks the bytes a string scan must stop at: the closing quote, a
// backslash, and the control characters JSON forbids inside strings.
var strClass = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// appendCompact validates src as one JSON value (encoding/json's grammar
// and depth limit) and appends it to dst without insignificant whitespace:
// the output of json.Compact, in one pass and without its per-byte state
// machine. Strings, most of a call's bytes, are copied in runs.
func appendCompact(dst, src []byte) ([]byte, error) {
	return appendCompactMembers(dst, src, nil)
}

// appendCompactMembers is appendCompact that also appends to *members, when
// members is not nil, where each member of a top-level object begins (the
// offset of its key's quote from the start of the output), so the object's
// members can be read without walking the output again.
func appendCompactMembers(dst, src []byte, members *[]int32) ([]byte, error) {
	var stack [64]byte // container kinds; deeper nesting spills to the heap
	st := stack[:0]
	start := len(dst)
	i, n := 0, len(src)
	fail := func() ([]byte, error) { return dst[:start], errSyntax }
	skip := func() {
		for i < n && isSpace(src[i]) {
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
			if dst, i, ok = appendString(dst, src, i); !ok {
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
			if dst, i, ok = appendString(dst, src, i); !ok {
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

// appendString copies the string opening at src[i] to dst, checking its
// escapes, and returns the index past it.
func appendString(dst, src []byte, i int) ([]byte, int, bool) {
	j := i + 1
	for {
		for j < len(src) && !strClass[src[j]] {
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
