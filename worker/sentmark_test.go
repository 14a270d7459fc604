package worker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/natstest"
)

func newTestMarks(t *testing.T) (*sentMarks, jetstream.KeyValue) {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	kv, err := js.CreateKeyValue(context.Background(), SentMarksConfig("CIO", 0))
	if err != nil {
		t.Fatal(err)
	}
	return &sentMarks{kv: kv, prefix: "inc1."}, kv
}

// TestSentMarks walks one trigger message through its markers against a
// real KV bucket: claimed, released after a definite failure, claimed
// again, recorded as sent; then every later claim of it, by this replica
// or another, finds it sent, and a message claimed and never answered is
// found in doubt.
func TestSentMarks(t *testing.T) {
	ctx := context.Background()
	s, kv := newTestMarks(t)
	a, b := &held{seq: 7}, &held{seq: 8}

	c, err := s.claim(ctx, []*held{a, b})
	if err != nil {
		t.Fatal(err)
	}
	// Another replica holding message 7 at the same time cannot claim it.
	other := &sentMarks{kv: kv, prefix: "inc1."}
	var conflict *markConflict
	if _, err := other.claim(ctx, []*held{{seq: 7}}); !errors.As(err, &conflict) || conflict.found[0].sent {
		t.Fatalf("second claim = %v, want a conflict with a marker in doubt", err)
	}
	// 429: not acted on. Released, the next try claims again.
	if n := s.release(ctx, c); n != 0 {
		t.Fatalf("%d markers not released", n)
	}
	if c, err = s.claim(ctx, []*held{a, b}); err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	if n := s.sent(ctx, c, 1234); n != 0 {
		t.Fatalf("%d markers not recorded as sent", n)
	}
	e, err := kv.Get(ctx, "inc1.7")
	if err != nil || string(e.Value()) != "sent 1234" {
		t.Fatalf("marker of 7 = %v, %v; want sent 1234", e, err)
	}

	// The ack was lost: message 7 comes back, with message 9 merged in.
	c9 := &held{seq: 9}
	_, err = s.claim(ctx, []*held{{seq: 7}, c9})
	if !errors.As(err, &conflict) || len(conflict.found) != 1 || !conflict.found[0].sent || conflict.found[0].h.seq != 7 {
		t.Fatalf("claim of a sent trigger = %v, want it found sent", err)
	}
	// The conflict took nothing: 9 is free for the request without 7.
	if _, err := kv.Get(ctx, "inc1.9"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("marker of 9 after a conflicting claim: %v, want none", err)
	}

	// A message held twice (redelivered while this replica still held
	// it) shares one marker: both ride on the same claim.
	c, err = s.claim(ctx, []*held{c9, {seq: 9}})
	if err != nil || len(c.keys) != 1 {
		t.Fatalf("claim of one message held twice = %v, %v; want one key", c, err)
	}
	// Never answered (the worker died): found in doubt, with its time.
	_, err = s.claim(ctx, []*held{{seq: 9}})
	if !errors.As(err, &conflict) || conflict.found[0].sent || time.Since(conflict.found[0].since) > time.Minute {
		t.Fatalf("claim of a trigger in doubt = %v", err)
	}
	// Another stream incarnation does not see these markers.
	if _, err := (&sentMarks{kv: kv, prefix: "inc2."}).claim(ctx, []*held{{seq: 7}}); err != nil {
		t.Fatalf("claim in a new stream incarnation: %v", err)
	}
}

// TestSentMarksUnreachable: without the bucket nothing is claimed, and the
// error says the markers could not be written.
func TestSentMarksUnreachable(t *testing.T) {
	ctx := context.Background()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	kv, err := js.CreateKeyValue(ctx, SentMarksConfig("CIO", 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, SentMarksBucket("CIO")); err != nil {
		t.Fatal(err)
	}
	var kvErr *markError
	_, err = (&sentMarks{kv: kv, prefix: "x."}).claim(ctx, []*held{{seq: 1}})
	if !errors.As(err, &kvErr) || !strings.Contains(err.Error(), "recording broadcast triggers") {
		t.Fatalf("claim without a bucket = %v, want a markError", err)
	}
}
