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
	const prefix = "$JS.ACK."
	if !strings.HasPrefix(reply, prefix) {
		return 0, false
	}
	// Tokens after "$JS.ACK.": 7 in the short form, 9 or 10 in the long one.
	rest := reply[len(prefix):]
	n := strings.Count(rest, ".") + 1
	var idx int
	switch n {
	case 7:
		idx = 6
	case 9, 10:
		idx = 8
	default:
		return 0, false
	}
	for range idx {
		rest = rest[strings.IndexByte(rest, '.')+1:]
	}
	if i := strings.IndexByte(rest, '.'); i >= 0 {
		rest = rest[:i]
	}
	p, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return 0, false
	}
	return p, true
}
