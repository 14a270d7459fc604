package worker

import "testing"

func TestParseAckReply(t *testing.T) {
	for _, c := range []struct {
		reply    string
		seq, dlv uint64
		ts       int64
		ok       bool
	}{
		{"$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.5", 42, 1, 1700000000000000000, true},
		{"$JS.ACK.dom.ACCHASH.CIO.cio-relay.3.42.7.1700000000000000000.5.rand", 42, 3, 1700000000000000000, true},
		{"$JS.ACK.CIO.cio-relay.x.42.7.1.5", 0, 0, 0, false},
		{"_INBOX.x", 0, 0, 0, false},
	} {
		s, d, ts, ok := parseAckReply(c.reply)
		if s != c.seq || d != c.dlv || ts != c.ts || ok != c.ok {
			t.Errorf("%s: %d %d %d %v", c.reply, s, d, ts, ok)
		}
	}
	if n := testing.AllocsPerRun(100, func() { parseAckReply("$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.5") }); n != 0 {
		t.Errorf("%v allocs", n)
	}
}
