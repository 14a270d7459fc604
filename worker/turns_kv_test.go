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

// TestKVTurnsOnARealBucket checks what turns rely on against a real
// server: Create takes an absent key only; Replace is compare-and-set and
// sets a new TTL, after which the server removes the key by itself; Free
// is compare-and-set and leaves the key free at once.
func TestKVTurnsOnARealBucket(t *testing.T) {
	ctx := context.Background()
	_, js := natstest.Start(t).Connect(t)
	kv, err := js.CreateKeyValue(ctx, TurnsConfig("CIO"))
	if err != nil {
		t.Fatal(err)
	}
	s := newKVTurns(js, kv)

	rev, err := s.Create(ctx, "7", "sending 55 a", 55*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "7", "sending 55 b", 55*time.Second); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("second Create = %v, want ErrKeyExists", err)
	}
	if e, err := s.Get(ctx, "7"); err != nil || e.value != "sending 55 a" || time.Since(e.created).Abs() > 5*time.Second {
		t.Fatalf("Get = %+v, %v", e, err)
	}
	if _, err := s.Replace(ctx, "7", "answered 1 b", rev+100, time.Second); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("Replace at a wrong revision = %v, want ErrKeyRevisionMismatch", err)
	}
	answered := time.Now()
	if _, err := s.Replace(ctx, "7", "answered 1 a", rev, time.Second); err != nil {
		t.Fatal(err)
	}
	// The server's expiry has no event to await from here: poll its state.
	for {
		_, err := s.Get(ctx, "7")
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(answered) > 10*time.Second {
			t.Fatal("the answered turn did not expire within 10s of its 1s TTL")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gone := time.Since(answered); gone < time.Second {
		t.Errorf("the answered turn expired %v after it was written, before its 1s TTL", gone)
	} else {
		t.Logf("a turn answered with a TTL of 1s expired after %v", gone)
	}

	// Expired: the key can be taken again, and freed by its holder only.
	if rev, err = s.Create(ctx, "7", "sending 55 b", 55*time.Second); err != nil {
		t.Fatalf("Create after expiry: %v", err)
	}
	if err := s.Free(ctx, "7", rev+100); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		t.Fatalf("Free at a wrong revision = %v, want ErrKeyRevisionMismatch", err)
	}
	if err := s.Free(ctx, "7", rev); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "7", "sending 55 c", 55*time.Second); err != nil {
		t.Fatalf("Create after Free: %v", err)
	}
}

// TestTurnsNeedPerKeyTTLs: a bucket made without per-key TTLs (an
// operator's `nats kv add` without --marker-ttl) refuses the turn, so the
// replica falls back rather than taking turns that never expire.
func TestTurnsNeedPerKeyTTLs(t *testing.T) {
	ctx := context.Background()
	_, js := natstest.Start(t).Connect(t)
	cfg := TurnsConfig("CIO")
	cfg.LimitMarkerTTL = 0
	kv, err := js.CreateKeyValue(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = newKVTurns(js, kv).Create(ctx, "7", "sending 55 a", 55*time.Second)
	if err == nil || errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("Create with a TTL in a bucket without per-key TTLs = %v, want a refusal", err)
	}
	if !strings.Contains(strings.ToLower(err.Error()), "ttl") {
		t.Errorf("refusal %q does not say why", err)
	}
}
