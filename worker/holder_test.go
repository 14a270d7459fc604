package worker

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func TestDeliveryLeaseTTL(t *testing.T) {
	tests := []struct {
		request, ttl, every time.Duration
	}{
		{0, 42 * time.Second, 2500 * time.Millisecond}, // DefaultTriggerTimeout
		{30 * time.Second, 42 * time.Second, 2500 * time.Millisecond},
		{2 * time.Second, 6 * time.Second, 500 * time.Millisecond},
		{1500 * time.Millisecond, 6 * time.Second, 500 * time.Millisecond}, // 5.5s, in whole seconds
		{5 * time.Minute, 5*time.Minute + 12*time.Second, 2500 * time.Millisecond},
	}
	for _, tt := range tests {
		l := newDeliveryLease(nil, "c", "r", tt.request)
		if l.ttl != tt.ttl || l.renewEvery() != tt.every {
			t.Errorf("request timeout %v: ttl %v, renewed every %v; want %v, %v", tt.request, l.ttl, l.renewEvery(), tt.ttl, tt.every)
		}
		if l.ttl-leaseMargin-l.requestTimeout < 4*l.renewEvery() {
			t.Errorf("request timeout %v: a request may start only %v after a renewal, less than four renewals", tt.request, l.ttl-leaseMargin-l.requestTimeout)
		}
	}
}

// TestDeliveryLeaseNeverOverlaps plays two replicas against the lease
// store, in virtual time, and checks the property the ordered path rests
// on: by the time B takes the lease, every request A was allowed to start
// is over (its deadline passed) with the margin to spare.
func TestDeliveryLeaseNeverOverlaps(t *testing.T) {
	const request = 2 * time.Second
	tests := []struct {
		name string
		// a plays A after it took the lease: it returns the latest
		// deadline it was given for a request.
		a func(t *testing.T, a *deliveryLease, store *fakeTurnStore) time.Time
	}{
		{"A dies at once", func(t *testing.T, a *deliveryLease, _ *fakeTurnStore) time.Time {
			by, ok := a.sendBy()
			if !ok {
				t.Fatal("A may not send right after taking the lease")
			}
			return by
		}},
		{"A renews for a while, then dies", func(t *testing.T, a *deliveryLease, _ *fakeTurnStore) time.Time {
			var last time.Time
			for range 20 {
				if err := a.renew(context.Background()); err != nil {
					t.Fatalf("renew: %v", err)
				}
				by, ok := a.sendBy()
				if !ok {
					t.Fatal("A may not send right after renewing")
				}
				last = by
				time.Sleep(a.renewEvery())
			}
			return last
		}},
		{"A loses the store and keeps asking to send", func(t *testing.T, a *deliveryLease, store *fakeTurnStore) time.Time {
			store.down.Store(true)
			var last time.Time
			for {
				if err := a.renew(context.Background()); errors.Is(err, errLeaseLost) {
					break
				}
				if by, ok := a.sendBy(); ok {
					last = by
				}
				time.Sleep(100 * time.Millisecond)
			}
			if a.valid() {
				t.Error("A's lease is still valid after it was lost")
			}
			store.down.Store(false)
			return last
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				store := newFakeTurnStore()
				a := newDeliveryLease(store, "cio-relay", "a", request)
				b := newDeliveryLease(store, "cio-relay", "b", request)
				if ok, err := a.acquire(ctx); !ok || err != nil {
					t.Fatalf("A takes a free lease: %v, %v", ok, err)
				}
				if ok, err := b.acquire(ctx); ok || err != nil {
					t.Fatalf("B takes A's lease: %v, %v", ok, err)
				}
				lastBy := tt.a(t, a, store)
				var took time.Time
				for {
					ok, err := b.acquire(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if ok {
						took = time.Now()
						break
					}
					time.Sleep(leasePoll)
				}
				if lastBy.Add(leaseMargin).After(took) {
					t.Fatalf("B took the lease at %v, but A could send until %v (margin %v)", took, lastBy, leaseMargin)
				}
				if err := a.renew(ctx); !errors.Is(err, errLeaseLost) {
					t.Fatalf("A renews B's lease: %v", err)
				}
				if _, ok := a.sendBy(); ok {
					t.Fatal("A may send while B holds the lease")
				}
				if err := a.release(ctx); err != nil {
					t.Fatalf("A's release after losing it: %v", err)
				}
				if err := b.renew(ctx); err != nil {
					t.Fatalf("A's release took B's lease: %v", err)
				}
			})
		})
	}
}

// TestDeliveryLeaseReleasedIsFreeAtOnce: a replica that lets the lease go
// (it stops, or lost the pin) frees it for the next at once.
func TestDeliveryLeaseReleasedIsFreeAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		store := newFakeTurnStore()
		a := newDeliveryLease(store, "cio-relay", "a", 0)
		b := newDeliveryLease(store, "cio-relay", "b", 0)
		if ok, _ := a.acquire(ctx); !ok {
			t.Fatal("A could not take a free lease")
		}
		if err := a.release(ctx); err != nil {
			t.Fatal(err)
		}
		if a.valid() {
			t.Error("A's lease is valid after it let it go")
		}
		if ok, err := b.acquire(ctx); !ok || err != nil {
			t.Fatalf("B takes a released lease: %v, %v", ok, err)
		}
		if _, ok := b.sendBy(); !ok {
			t.Fatal("B may not send")
		}
	})
}

func TestParseDeliveryLease(t *testing.T) {
	l := newDeliveryLease(nil, "c", "pod-7f-1a2b3c", 0)
	replica, ttl, ok := parseDeliveryLease(l.value())
	if !ok || replica != "pod-7f-1a2b3c" || ttl != l.ttl {
		t.Errorf("parse(%q) = %q, %v, %v", l.value(), replica, ttl, ok)
	}
	for _, v := range []string{"", "sending 45 x", "delivering x r", "delivering 0 r", "delivering 5"} {
		if _, _, ok := parseDeliveryLease(v); ok {
			t.Errorf("parse(%q) ok", v)
		}
	}
}

// TestDeliveryLeaseRenewalHeardLate: a renewal that timed out on the way
// back but was written leaves the key at a revision the holder did not
// hear of; the next renewal finds the key still its own and goes on,
// instead of losing the lease and waiting out its own TTL.
func TestDeliveryLeaseRenewalHeardLate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		store := newFakeTurnStore()
		a := newDeliveryLease(store, "cio-relay", "a", 0)
		if ok, _ := a.acquire(ctx); !ok {
			t.Fatal("A could not take a free lease")
		}
		// The write of a renewal whose answer was lost.
		if _, err := store.Replace(ctx, a.key, a.value(), a.rev, a.ttl); err != nil {
			t.Fatal(err)
		}
		if err := a.renew(ctx); err != nil {
			t.Fatalf("renew after a renewal heard late: %v", err)
		}
		if _, ok := a.sendBy(); !ok {
			t.Fatal("A may not send")
		}
		// Another replica's key is not adopted.
		b := newDeliveryLease(store, "cio-relay", "b", 0)
		store.mu.Lock()
		store.keys[a.key] = fakeTurn{value: b.value(), rev: 99, expires: time.Now().Add(time.Hour)}
		store.mu.Unlock()
		if err := a.renew(ctx); !errors.Is(err, errLeaseLost) {
			t.Fatalf("A renewed B's key: %v", err)
		}
	})
}

// committingTimeoutStore is the turns bucket during a KV leader election:
// the next write is made but its answer is lost, so the caller sees a
// timeout.
type committingTimeoutStore struct {
	*fakeTurnStore
	loseNextAnswer bool
}

func (s *committingTimeoutStore) Create(ctx context.Context, key, value string, ttl time.Duration) (uint64, error) {
	rev, err := s.fakeTurnStore.Create(ctx, key, value, ttl)
	if err == nil && s.loseNextAnswer {
		s.loseNextAnswer = false
		return 0, errUnreachable
	}
	return rev, err
}

// TestDeliveryLeaseTakenButNotHeard: a take whose create was written but
// whose answer was lost leaves this replica's own key; the next try adopts
// it rather than waiting out the TTL, and no other replica can take it.
func TestDeliveryLeaseTakenButNotHeard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		store := &committingTimeoutStore{fakeTurnStore: newFakeTurnStore(), loseNextAnswer: true}
		a := newDeliveryLease(store, "cio-relay", "a-1a2b3c", 0)
		b := newDeliveryLease(store, "cio-relay", "b-4d5e6f", 0)
		if ok, err := a.acquire(ctx); ok || err == nil {
			t.Fatalf("a take with its answer lost: %v, %v; want a timeout", ok, err)
		}
		time.Sleep(leasePoll)
		if ok, err := b.acquire(ctx); ok || err != nil {
			t.Fatalf("B took A's key: %v, %v", ok, err)
		}
		if ok, err := a.acquire(ctx); !ok || err != nil {
			t.Fatalf("A's next take: %v, %v; want its own key adopted", ok, err)
		}
		if _, ok := a.sendBy(); !ok {
			t.Fatal("A may not send")
		}
	})
}
