package worker

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/natstest"
)

func TestParseAckPending(t *testing.T) {
	for _, c := range []struct {
		reply   string
		pending uint64
		ok      bool
	}{
		{"$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.5", 5, true},
		{"$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.0", 0, true},
		{"$JS.ACK.dom.ACCHASH.CIO.cio-relay.3.42.7.1700000000000000000.17.rand", 17, true},
		{"$JS.ACK.dom.ACCHASH.CIO.cio-relay.3.42.7.1700000000000000000.17", 17, true},
		{"$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.x", 0, false},
		{"$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.", 0, false},
		{"$JS.ACK.CIO.cio-relay.1.42.7", 0, false},
		{"_INBOX.x", 0, false},
	} {
		p, ok := parseAckPending(c.reply)
		if p != c.pending || ok != c.ok {
			t.Errorf("%s: %d %v, want %d %v", c.reply, p, ok, c.pending, c.ok)
		}
	}
	if n := testing.AllocsPerRun(100, func() { parseAckPending("$JS.ACK.CIO.cio-relay.1.42.7.1700000000000000000.5") }); n != 0 {
		t.Errorf("%v allocs", n)
	}
}

// TestAckPendingFromServer reads the ack replies a real server sends: they
// count down to 0 on the last message of a backlog, and agree with the
// metadata nats.go parses.
func TestAckPendingFromServer(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "P", Subjects: []string{"p.>"}}); err != nil {
		t.Fatal(err)
	}
	const n = 5
	for range n {
		if _, err := js.Publish(ctx, "p.x", []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateConsumer(ctx, "P", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for msg := range batch.Messages() {
		p, ok := parseAckPending(msg.Reply())
		if !ok {
			t.Fatalf("reply %q not read", msg.Reply())
		}
		meta, err := msg.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		if p != meta.NumPending {
			t.Errorf("reply %q: pending %d, metadata says %d", msg.Reply(), p, meta.NumPending)
		}
		got = append(got, p)
	}
	if len(got) != n || got[0] != n-1 || got[n-1] != 0 {
		t.Errorf("pending per message %v, want %d down to 0", got, n-1)
	}
}
