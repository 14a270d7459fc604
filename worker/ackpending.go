package worker

import (
	"strconv"
	"strings"
)

// parseAckPending reads NumPending from a JetStream ack subject without
// allocating: how many messages matching the consumer's filter the server
// still held undelivered when it delivered this one. It is the last token
// of $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>,
// and the one before the random token in the form with domain and account
// hash ($JS.ACK.<domain>.<hash>.<stream>.….<pending>.<rand>).
//
// 0 on the message just read, with nothing left in the reader's buffer,
// means the consumer is drained: the batcher may send the open batch after
// its linger (batcher.Call.Drained) instead of waiting the flush interval.
func parseAckPending(reply string) (pending uint64, ok bool) {
	return ackToken(reply, 6, 8)
}

// ackToken reads the numeric token at index short (in the short form of a
// JetStream ack subject, 7 tokens after "$JS.ACK.") or long (in the form
// with domain and account hash, 9 or 10 tokens) without allocating.
func ackToken(reply string, short, long int) (uint64, bool) {
	const prefix = "$JS.ACK."
	if !strings.HasPrefix(reply, prefix) {
		return 0, false
	}
	rest := reply[len(prefix):]
	var idx int
	switch strings.Count(rest, ".") + 1 {
	case 7:
		idx = short
	case 9, 10:
		idx = long
	default:
		return 0, false
	}
	for range idx {
		rest = rest[strings.IndexByte(rest, '.')+1:]
	}
	if i := strings.IndexByte(rest, '.'); i >= 0 {
		rest = rest[:i]
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return n, err == nil
}

// parseAckReply reads the stream sequence, delivery count and timestamp
// from a JetStream ack subject without allocating:
// $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> or,
// with domain and account hash, $JS.ACK.<domain>.<hash>.<stream>.… .<rand>.
func parseAckReply(reply string) (seq, delivered uint64, ts int64, ok bool) {
	const prefix = "$JS.ACK."
	if !strings.HasPrefix(reply, prefix) {
		return 0, 0, 0, false
	}
	var tok [12]string
	n := 0
	rest := reply
	for n < len(tok) {
		i := strings.IndexByte(rest, '.')
		if i < 0 {
			tok[n] = rest
			n++
			break
		}
		tok[n] = rest[:i]
		n++
		rest = rest[i+1:]
		if n == len(tok) && rest != "" {
			return 0, 0, 0, false
		}
	}
	var off int
	switch {
	case n == 9:
		off = 4
	case n >= 11:
		off = 6
	default:
		return 0, 0, 0, false
	}
	d, err1 := strconv.ParseUint(tok[off], 10, 64)
	s, err2 := strconv.ParseUint(tok[off+1], 10, 64)
	t, err3 := strconv.ParseInt(tok[off+3], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, 0, false
	}
	return s, d, t, true
}
