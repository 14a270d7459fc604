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
