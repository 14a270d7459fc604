package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Customer.io accepts one trigger request per broadcast every 10 seconds,
// counted across everything that holds the App API key. Each replica's
// trigger.Pacer keeps its own requests apart; the turns here keep the
// replicas' requests apart: a per-broadcast lease in a KV bucket shared by
// every replica, "{stream}_PACE", whose expiry the NATS server keeps.
//
// Before each request (a retry included) a replica takes the broadcast's
// turn: it creates the key, which succeeds only when the key is absent
// (compare-and-set), with a TTL long enough for the request to be sent
// and answered and an interval to pass (sendLimit + the interval: 45s
// with the defaults): if the replica dies mid-request, the server frees
// the turn no sooner than an interval after the latest answer the request
// could have had. The request is bounded by sendLimit from then, so the
// key cannot expire while it is in flight. When the answer comes, whatever
// it is, the replica rewrites the key (compare-and-set on its own
// revision) as "answered" with a TTL of the interval, or the Retry-After
// when that is longer (at most maxTurnHold): the server removes it an
// interval after it stored the answer, which is after Customer.io
// received the request. Every duration is measured by the NATS server
// alone, so the replicas' clocks need not agree. TTLs are whole seconds,
// the server's unit, so an interval under a second (a test's) is paced at
// a second. A request that was never sent (its triggers turned out to be
// sent already) frees the turn at once.
//
// A replica that finds the key taken reads it and waits: until the
// answered key's expiry (its creation time by the server plus its TTL,
// which only decides when to look again, so a skewed clock costs time,
// never a request too early), or, while a request is in flight, half an
// interval before looking again: the holder keeps the turn a whole
// interval after its answer, so nothing is lost by not watching. Then it
// tries to create the key again; whoever creates it goes next.
//
// The local Pacer still decides which request is next for a broadcast and
// what it coalesces; the turn only gates the send. A replica waiting for
// the turn holds its released request (the lease keeper extends the
// triggers' ack deadlines) and, at shutdown, stops waiting and nakks it.
//
// If the bucket cannot be reached (or is missing, or was made without
// per-key TTLs), the request is sent paced by this replica alone, as before
// global pacing existed: another replica may then send for the same
// broadcast within the interval and be answered 429, which is retried and
// loses nothing. It is logged at most once a minute and counted
// (cio_relay_broadcast_pacing_fallback_total); the gauge
// cio_relay_broadcast_pacing_global says which mode the replica is in. A
// missing bucket is not a reason to refuse to start, as the marker bucket
// is: without it triggers are slower, never sent twice.

// DefaultTriggerTimeout is Options.TriggerTimeout's default, cio-relay's
// default RELAY_HTTP_TIMEOUT.
const DefaultTriggerTimeout = 30 * time.Second

// sendLimit bounds the time from taking a turn to the request's answer:
// the marker claim (markTimeout) and the request (Options.TriggerTimeout).
// A request still unanswered then is cut off, and dead-lettered as
// ambiguous, because the turn's TTL could not cover it any longer.
func sendLimit(triggerTimeout time.Duration) time.Duration {
	if triggerTimeout <= 0 {
		triggerTimeout = DefaultTriggerTimeout
	}
	return markTimeout + triggerTimeout
}

// maxTurnHold caps how long a Retry-After holds a turn: a proxy asking for
// a day must not stop a broadcast's triggers for a day.
const maxTurnHold = 10 * time.Minute

// turnRefind is how often a replica without the bucket looks for it again,
// and how often the fallback is logged.
const turnRefind = time.Minute

// Turn states, the first word of the value. The second is the TTL in
// seconds, the third the replica that wrote it (for an operator's `nats kv
// get`).
const (
	turnSending  = "sending"
	turnAnswered = "answered"
)

// turnEntry is a turn as read back: its value and when the server stored it.
type turnEntry struct {
	value   string
	created time.Time
	rev     uint64
}

// turnStore is the part of the KV bucket turns use. Create fails with
// jetstream.ErrKeyExists when the key is there; Get with
// jetstream.ErrKeyNotFound when it is not (or expired); Replace and Free
// with jetstream.ErrKeyRevisionMismatch when rev is no longer the key's.
type turnStore interface {
	Create(ctx context.Context, key, value string, ttl time.Duration) (rev uint64, err error)
	Get(ctx context.Context, key string) (turnEntry, error)
	Replace(ctx context.Context, key, value string, rev uint64, ttl time.Duration) (uint64, error)
	Free(ctx context.Context, key string, rev uint64) error
}

// turns gates trigger requests on their broadcast's turn.
type turns struct {
	interval time.Duration
	limit    time.Duration // sendLimit
	replica  string
	log      *slog.Logger
	m        *turnMetrics

	mu       sync.Mutex
	store    turnStore                                // nil: bucket not found yet
	find     func(context.Context) (turnStore, error) // looks the bucket up again
	lastFind time.Time                                // when find last ran
	lastWarn time.Time                                // when the fallback was last logged
	global   bool                                     // the last turn was taken in the bucket
}

func newTurns(store turnStore, find func(context.Context) (turnStore, error), interval, limit time.Duration, log *slog.Logger, m *turnMetrics) *turns {
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	g := &turns{interval: interval, limit: limit, replica: hex.EncodeToString(id), log: log, m: m, store: store, find: find}
	if store == nil {
		g.lastFind = time.Now()
	}
	return g
}

// errStopWaiting ends a wait for a turn at shutdown: the request was never
// sent. It is a shutdown between tries for attempt and sendTrigger.
var errStopWaiting = fmt.Errorf("%w: stopped waiting for the broadcast's turn: %w", errGaveUpBetweenTries, context.Canceled)

// acquire waits for broadcast id's turn and returns it, or nil when the
// bucket cannot be reached and the request goes paced by this replica
// alone. It returns errStopWaiting when stopping closes or ctx ends first.
func (g *turns) acquire(ctx context.Context, stopping <-chan struct{}, id int64) (*turn, error) {
	if g == nil {
		return nil, nil
	}
	key := strconv.FormatInt(id, 10)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		store := g.current(ctx)
		if store == nil {
			g.fallback(id, errors.New("bucket "+g.bucketHint()+" not found"))
			return nil, nil
		}
		t, wait, err := g.take(ctx, store, key)
		switch {
		case t != nil:
			g.taken()
			return t, nil
		case err != nil && ctx.Err() != nil:
			return nil, errStopWaiting
		case err != nil:
			g.fallback(id, err)
			return nil, nil
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-timer.C:
		case <-stopping:
			return nil, errStopWaiting
		case <-ctx.Done():
			return nil, errStopWaiting
		}
	}
}

// take tries once to take the turn of key: it returns the turn, or how
// long to wait before trying again, or the store's error.
func (g *turns) take(ctx context.Context, store turnStore, key string) (*turn, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, markTimeout)
	defer cancel()
	start := time.Now()
	rev, err := store.Create(ctx, key, g.value(turnSending, g.sendingTTL()), g.sendingTTL())
	if err == nil {
		return &turn{g: g, store: store, key: key, rev: rev, sendBy: start.Add(g.limit)}, 0, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, 0, err
	}
	e, err := store.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, turnPoll(g.interval), nil // expired meanwhile: try again soon
	case err != nil:
		return nil, 0, err
	}
	return nil, turnWait(e, time.Now(), g.interval), nil
}

// sendingTTL is the TTL of a turn taken for a request: long enough that it
// outlives the request's latest answer by an interval.
func (g *turns) sendingTTL() time.Duration { return wholeSeconds(g.limit + g.interval) }

func (g *turns) value(state string, ttl time.Duration) string {
	return state + " " + strconv.FormatInt(int64(ttl/time.Second), 10) + " " + g.replica
}

// current returns the store, looking the bucket up again once per
// turnRefind while it is missing.
func (g *turns) current(ctx context.Context) turnStore {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.store != nil || g.find == nil || time.Since(g.lastFind) < turnRefind {
		return g.store
	}
	g.lastFind = time.Now()
	ctx, cancel := context.WithTimeout(ctx, markTimeout)
	defer cancel()
	if s, err := g.find(ctx); err == nil {
		g.store = s
		g.log.Info("broadcast pacing bucket found: pacing trigger requests across replicas", "bucket", g.bucketHint())
	}
	return g.store
}

func (g *turns) bucketHint() string {
	if g.m != nil {
		return g.m.bucket
	}
	return ""
}

// taken notes a turn taken in the bucket.
func (g *turns) taken() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.global {
		g.global = true
		g.lastWarn = time.Time{}
		g.m.global.Set(1)
		g.log.Info("pacing broadcast triggers across replicas", "bucket", g.bucketHint())
	}
}

// fallback notes a request for broadcast id sent without a turn, and logs it
// at most once per turnRefind.
func (g *turns) fallback(id int64, err error) {
	g.m.fallback.Inc()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.global = false
	g.m.global.Set(0)
	if now := time.Now(); g.lastWarn.IsZero() || now.Sub(g.lastWarn) >= turnRefind {
		g.lastWarn = now
		g.log.Warn("broadcast pacing bucket unreachable: this replica paces its own trigger requests; "+
			"another replica may send for the same broadcast within the interval and be answered 429 (retried, nothing lost)",
			"bucket", g.bucketHint(), "broadcast_id", id, "err", err)
	}
}
