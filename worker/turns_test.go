package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// fakeTurnStore is the turns bucket as the NATS server keeps it, in a
// synctest bubble: a key expires at its TTL after the write by the
// server's clock (time.Now, shifted by skew for the times it reports), and
// it is stricter than the server about TTLs: one under a second or not a
// whole number of seconds is refused rather than truncated.
type fakeTurnStore struct {
	mu   sync.Mutex
	keys map[string]fakeTurn
	rev  uint64
	skew time.Duration // the server's clock minus the replicas'
	down atomic.Bool   // unreachable
}

type fakeTurn struct {
	value   string
	rev     uint64
	created time.Time
	expires time.Time
}

var errUnreachable = errors.New("nats: timeout")

func newFakeTurnStore() *fakeTurnStore { return &fakeTurnStore{keys: map[string]fakeTurn{}} }

// live returns key's turn unless absent or expired; s.mu is held.
func (s *fakeTurnStore) live(key string) (fakeTurn, bool) {
	k, ok := s.keys[key]
	if ok && !time.Now().Before(k.expires) {
		delete(s.keys, key)
		ok = false
	}
	return k, ok
}

func (s *fakeTurnStore) write(key, value string, ttl time.Duration) (uint64, error) {
	if ttl < time.Second || ttl%time.Second != 0 {
		return 0, fmt.Errorf("invalid per-message TTL %v", ttl)
	}
	s.rev++
	now := time.Now()
	s.keys[key] = fakeTurn{value: value, rev: s.rev, created: now, expires: now.Add(ttl)}
	return s.rev, nil
}

func (s *fakeTurnStore) Create(_ context.Context, key, value string, ttl time.Duration) (uint64, error) {
	if s.down.Load() {
		return 0, errUnreachable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.live(key); ok {
		return 0, jetstream.ErrKeyExists
	}
	return s.write(key, value, ttl)
}

func (s *fakeTurnStore) Get(_ context.Context, key string) (turnEntry, error) {
	if s.down.Load() {
		return turnEntry{}, errUnreachable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.live(key)
	if !ok {
		return turnEntry{}, jetstream.ErrKeyNotFound
	}
	return turnEntry{value: k.value, created: k.created.Add(s.skew), rev: k.rev}, nil
}

func (s *fakeTurnStore) Replace(_ context.Context, key, value string, rev uint64, ttl time.Duration) (uint64, error) {
	if s.down.Load() {
		return 0, errUnreachable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.live(key); !ok || k.rev != rev {
		return 0, jetstream.ErrKeyRevisionMismatch
	}
	return s.write(key, value, ttl)
}

func (s *fakeTurnStore) Free(_ context.Context, key string, rev uint64) error {
	if s.down.Load() {
		return errUnreachable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.live(key); !ok || k.rev != rev {
		return jetstream.ErrKeyRevisionMismatch
	}
	delete(s.keys, key)
	return nil
}

// countWarnings is a slog handler that counts warnings.
type countWarnings struct{ n atomic.Int64 }

func (c *countWarnings) Enabled(context.Context, slog.Level) bool { return true }
func (c *countWarnings) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		c.n.Add(1)
	}
	return nil
}
func (c *countWarnings) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *countWarnings) WithGroup(string) slog.Handler      { return c }

// value reads a gauge or counter.
func value(c prometheus.Collector) float64 {
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	mfs, _ := r.Gather()
	var sum float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}

func testTurns(store turnStore, interval time.Duration) (*turns, *countWarnings) {
	h := &countWarnings{}
	m := newTurnMetrics()
	m.bucket = "CIO_PACE"
	var s turnStore
	if store != nil {
		s = store
	}
	return newTurns(s, nil, interval, sendLimit(0), slog.New(h), m), h
}

// TestTurnsKeepReplicasApart: three replicas with no local pacing at all,
// each with its own request latency, send 10 requests each for one
// broadcast as fast as the turns let them, with the server's clock 3s off
// theirs. Every request reaches Customer.io at least an interval after the
// previous one's, and no replica is starved.
func TestTurnsKeepReplicasApart(t *testing.T) {
	for _, skew := range []time.Duration{0, 3 * time.Second, -3 * time.Second} {
		t.Run(fmt.Sprint("skew ", skew), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const interval = 10 * time.Second
				store := newFakeTurnStore()
				store.skew = skew
				var mu sync.Mutex
				var arrivals []time.Time
				sent := map[int]int{}
				var wg sync.WaitGroup
				start := time.Now()
				for r := range 3 {
					g, _ := testTurns(store, interval)
					latency := time.Duration(r+1) * 150 * time.Millisecond
					wg.Go(func() {
						for range 10 {
							turn, err := g.acquire(t.Context(), nil, 7)
							if err != nil || turn == nil {
								t.Errorf("acquire = %v, %v", turn, err)
								return
							}
							time.Sleep(latency / 2) // on the way to Customer.io
							mu.Lock()
							arrivals = append(arrivals, time.Now())
							sent[r]++
							mu.Unlock()
							time.Sleep(latency / 2) // the answer on its way back
							turn.answered(t.Context(), 0)
						}
					})
				}
				wg.Wait()
				slices.SortFunc(arrivals, time.Time.Compare)
				minGap := time.Duration(1<<63 - 1)
				for i := 1; i < len(arrivals); i++ {
					minGap = min(minGap, arrivals[i].Sub(arrivals[i-1]))
				}
				took := time.Since(start)
				t.Logf("30 requests by 3 replicas in %v, closest two %v apart", took, minGap)
				if minGap < interval {
					t.Errorf("two requests %v apart, want at least %v", minGap, interval)
				}
				// Each turn: latency, an interval, at most one poll late,
				// and at most the skew more.
				if limit := 30 * (interval + 450*time.Millisecond + turnPoll(interval) + max(skew, -skew)); took > limit {
					t.Errorf("took %v, want at most %v", took, limit)
				}
				for r := range 3 {
					if sent[r] != 10 {
						t.Errorf("replica %d sent %d, want 10", r, sent[r])
					}
				}
			})
		})
	}
}

// TestTurnOfACrashedReplicaIsFreedByItsTTL: replica A takes the turn and
// dies before the answer. B gets the turn only when the server expires A's
// key: no sooner than an interval after the latest answer A's request
// could have had (its send-by bound), and no later than the TTL.
func TestTurnOfACrashedReplicaIsFreedByItsTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 10 * time.Second
		store := newFakeTurnStore()
		a, _ := testTurns(store, interval)
		b, _ := testTurns(store, interval)
		ta, err := a.acquire(t.Context(), nil, 7)
		if err != nil || ta == nil {
			t.Fatalf("A: acquire = %v, %v", ta, err)
		}
		start := time.Now()
		tb, err := b.acquire(t.Context(), nil, 7)
		if err != nil || tb == nil {
			t.Fatalf("B: acquire = %v, %v", tb, err)
		}
		waited := time.Since(start)
		if earliest := ta.sendBy.Add(interval).Sub(start); waited < earliest {
			t.Errorf("B took the turn %v after A, want at least %v (A's send-by bound and an interval)", waited, earliest)
		}
		if latest := a.sendingTTL() + turnPoll(interval); waited > latest {
			t.Errorf("B took the turn %v after A, want at most %v", waited, latest)
		}
		t.Logf("B took a crashed A's turn after %v", waited)
	})
}

// TestTurnHeldForRetryAfter: a 429's Retry-After longer than the interval
// holds the turn that long for every replica.
func TestTurnHeldForRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 10 * time.Second
		store := newFakeTurnStore()
		a, _ := testTurns(store, interval)
		b, _ := testTurns(store, interval)
		ta, _ := a.acquire(t.Context(), nil, 7)
		ta.answered(t.Context(), 25*time.Second+time.Millisecond)
		start := time.Now()
		if tb, err := b.acquire(t.Context(), nil, 7); err != nil || tb == nil {
			t.Fatalf("B: acquire = %v, %v", tb, err)
		}
		if waited := time.Since(start); waited < 25*time.Second+time.Millisecond || waited > 27*time.Second {
			t.Errorf("B waited %v after a Retry-After of 25.001s, want 26s (whole seconds, rounded up)", waited)
		}
	})
}

// TestTurnTakenAtOnce: replica B takes a turn without waiting an interval
// when A gave its turn back unused, and when A's turn is another
// broadcast's (broadcast 8's turn never waits behind broadcast 7's).
func TestTurnTakenAtOnce(t *testing.T) {
	tests := []struct {
		name      string
		release   func(ctx context.Context, ta *turn)
		broadcast int64
	}{
		{"a turn given back unused", func(ctx context.Context, ta *turn) { ta.unused(ctx) }, 7},
		{"another broadcast's turn", func(ctx context.Context, ta *turn) { ta.answered(ctx, 0) }, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := newFakeTurnStore()
				a, _ := testTurns(store, 10*time.Second)
				b, _ := testTurns(store, 10*time.Second)
				ta, _ := a.acquire(t.Context(), nil, 7)
				tt.release(t.Context(), ta)
				start := time.Now()
				if tb, err := b.acquire(t.Context(), nil, tt.broadcast); err != nil || tb == nil {
					t.Fatalf("B: acquire = %v, %v", tb, err)
				}
				if waited := time.Since(start); waited != 0 {
					t.Errorf("B waited %v for broadcast %d, want 0", waited, tt.broadcast)
				}
			})
		})
	}
}

// TestTurnWaitEndsAtShutdown: a replica waiting for a turn stops when its
// reader is done, with an error that says nothing was sent.
func TestTurnWaitEndsAtShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newFakeTurnStore()
		a, _ := testTurns(store, 10*time.Second)
		b, _ := testTurns(store, 10*time.Second)
		ta, _ := a.acquire(t.Context(), nil, 7)
		ta.answered(t.Context(), 0)
		stopping := make(chan struct{})
		time.AfterFunc(3*time.Second, func() { close(stopping) })
		start := time.Now()
		tb, err := b.acquire(t.Context(), stopping, 7)
		if tb != nil || !errors.Is(err, errGaveUpBetweenTries) || !errors.Is(err, context.Canceled) {
			t.Fatalf("acquire at shutdown = %v, %v; want errStopWaiting", tb, err)
		}
		if waited := time.Since(start); waited != 3*time.Second {
			t.Errorf("stopped waiting after %v, want 3s", waited)
		}
	})
}

// TestTurnsFallBackWhenTheBucketIsUnreachable: without the bucket a
// request goes at once, paced by the replica alone, counted every time and
// logged once a minute; when the bucket answers again, turns are taken
// again.
func TestTurnsFallBackWhenTheBucketIsUnreachable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newFakeTurnStore()
		g, warnings := testTurns(store, 10*time.Second)
		store.down.Store(true)
		for range 10 {
			tn, err := g.acquire(t.Context(), nil, 7)
			if tn != nil || err != nil {
				t.Fatalf("acquire with the bucket down = %v, %v; want no turn, no error", tn, err)
			}
			tn.answered(t.Context(), 0) // a nil turn records nothing
			time.Sleep(10 * time.Second)
		}
		if got := value(g.m.fallback); got != 10 {
			t.Errorf("fallback counted %v times, want 10", got)
		}
		if got := warnings.n.Load(); got != 2 {
			t.Errorf("%d warnings in 100s, want 2 (once a minute)", got)
		}
		if got := value(g.m.global); got != 0 {
			t.Errorf("pacing_global %v while falling back, want 0", got)
		}
		store.down.Store(false)
		if tn, err := g.acquire(t.Context(), nil, 7); tn == nil || err != nil {
			t.Fatalf("acquire with the bucket back = %v, %v", tn, err)
		}
		if got := value(g.m.global); got != 1 {
			t.Errorf("pacing_global %v with the bucket back, want 1", got)
		}
	})
}

// TestTurnsFindAMissingBucketLater: a replica started without the bucket
// (RELAY_MANAGE_STREAMS=false) paces on its own and looks for the bucket
// once a minute, taking turns once it is there.
func TestTurnsFindAMissingBucketLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := newFakeTurnStore()
		var created atomic.Bool
		var looks atomic.Int32
		find := func(context.Context) (turnStore, error) {
			looks.Add(1)
			if !created.Load() {
				return nil, jetstream.ErrBucketNotFound
			}
			return store, nil
		}
		g := newTurns(nil, find, 10*time.Second, sendLimit(0), slog.New(slog.DiscardHandler), newTurnMetrics())
		for range 20 {
			if tn, _ := g.acquire(t.Context(), nil, 7); tn != nil {
				t.Fatal("a turn without the bucket")
			}
			time.Sleep(10 * time.Second)
		}
		created.Store(true)
		time.Sleep(time.Minute)
		if tn, _ := g.acquire(t.Context(), nil, 7); tn == nil {
			t.Fatal("no turn a minute after the bucket was created")
		}
		if n := looks.Load(); n != 4 {
			t.Errorf("looked for the bucket %d times in 260s, want 4 (once a minute)", n)
		}
	})
}

func TestTurnWait(t *testing.T) {
	const interval = 10 * time.Second
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		value   string
		created time.Time
		want    time.Duration
	}{
		{"answered: until it expires", "answered 10 ab", now.Add(-4 * time.Second), 6 * time.Second},
		{"answered, Retry-After", "answered 30 ab", now.Add(-4 * time.Second), 26 * time.Second},
		{"answered, the server's clock ahead: at most its TTL", "answered 10 ab", now.Add(3 * time.Second), 10 * time.Second},
		{"answered, expired by our clock (server behind)", "answered 10 ab", now.Add(-11 * time.Second), turnPoll(interval)},
		{"sending: half an interval", "sending 45 ab", now.Add(-time.Second), interval / 2},
		{"sending, nearly expired", "sending 45 ab", now.Add(-44 * time.Second), time.Second},
		{"sending, expired by our clock", "sending 45 ab", now.Add(-60 * time.Second), turnPoll(interval)},
		{"unknown value", "held by hand", now, interval / 2},
		{"empty value", "", now, interval / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := turnWait(turnEntry{value: tc.value, created: tc.created}, now, interval); got != tc.want {
				t.Errorf("turnWait(%q) = %v, want %v", tc.value, got, tc.want)
			}
		})
	}
}

func TestWholeSeconds(t *testing.T) {
	for _, tc := range []struct{ in, want time.Duration }{
		{0, time.Second},
		{100 * time.Millisecond, time.Second},
		{time.Second, time.Second},
		{time.Second + time.Nanosecond, 2 * time.Second},
		{10 * time.Second, 10 * time.Second},
		{55*time.Second - time.Millisecond, 55 * time.Second},
	} {
		if got := wholeSeconds(tc.in); got != tc.want {
			t.Errorf("wholeSeconds(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
