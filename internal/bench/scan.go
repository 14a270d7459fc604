package bench

import (
	"bytes"
	"errors"
)

// span is a byte range of a body.
type span struct{ start, end int }

var errBadBatch = errors.New(`body is not a compact {"batch":[{...},...]}`)

// batchPrefix and batchSuffix frame every body the worker sends.
const (
	batchPrefix = `{"batch":[`
	batchSuffix = `]}`
)

// scanBatch walks a batch body as the worker writes it (compact,
// {"batch":[obj,...]}) in one pass, appending to calls the span of each call
// and to ids the span of each call's top-level messageId string (its
// contents, without quotes; an empty span when the call has none). It skips
// string contents with bytes.IndexByte, so it costs little more than
// reading the body. It checks structure only as far as it must to find
// those spans: the worker's own validation is what the bench measures, not
// the stand-in's.
func scanBatch(b []byte, calls, ids []span) ([]span, []span, error) {
	if !bytes.HasPrefix(b, []byte(batchPrefix)) || !bytes.HasSuffix(b, []byte(batchSuffix)) {
		return calls, ids, errBadBatch
	}
	end := len(b) - len(batchSuffix)
	i := len(batchPrefix)
	if i == end {
		return calls, ids, nil
	}
	for {
		if i >= end || b[i] != '{' {
			return calls, ids, errBadBatch
		}
		start := i
		depth := 0
		key := true // the next string at depth 1 is a key
		wantID := false
		id := span{}
	call:
		for ; i < end; i++ {
			switch b[i] {
			case '"':
				j := stringEnd(b, i, end)
				if j < 0 {
					return calls, ids, errBadBatch
				}
				if depth == 1 {
					switch {
					case key:
						wantID = j-i == len(`"messageId"`) && string(b[i+1:j-1]) == "messageId"
						key = false
					case wantID:
						id = span{i + 1, j - 1}
						wantID = false
					}
				}
				i = j - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					i++
					break call
				}
			case ',':
				if depth == 1 {
					key, wantID = true, false
				}
			}
		}
		if depth != 0 {
			return calls, ids, errBadBatch
		}
		calls = append(calls, span{start, i})
		ids = append(ids, id)
		if i == end {
			return calls, ids, nil
		}
		if b[i] != ',' {
			return calls, ids, errBadBatch
		}
		i++
	}
}

// stringEnd returns the index just past the string that opens at b[i], or
// -1 when it does not close before end.
func stringEnd(b []byte, i, end int) int {
	j := i + 1
	for {
		k := bytes.IndexByte(b[j:end], '"')
		if k < 0 {
			return -1
		}
		q := j + k
		n := 0
		for q-1-n > i && b[q-1-n] == '\\' {
			n++
		}
		if n%2 == 0 {
			return q + 1
		}
		j = q + 1
	}
}
