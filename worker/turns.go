package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
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

// TurnsBucket is the name of the KV bucket of broadcast turns for stream:
// "{stream}_PACE".
func TurnsBucket(stream string) string { return stream + "_PACE" }

// TurnsConfig is the KV bucket the worker creates for stream's broadcast
// turns when it manages streams: one value per key, per-key TTLs (the
// server expires each turn), their expiry markers kept a minute. TTL bounds
// what could outlive every per-key TTL (an operator's manual write) to an
// hour. Memory storage would do, since a turn is worth nothing after a
// minute, but file storage keeps the turns of a replica that is mid-request
// through a server restart. Replicas is 1 here; the worker creates it with
// RELAY_STREAM_REPLICAS, like its streams.
func TurnsConfig(stream string) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         TurnsBucket(stream),
		Description:    "cio-relay: whose turn it is to send a trigger request for each broadcast",
		History:        1,
		TTL:            time.Hour,
		LimitMarkerTTL: time.Minute,
		MaxValueSize:   256,
		Storage:        jetstream.FileStorage,
		Replicas:       1,
	}
}

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

// turn is a broadcast's turn, held by this replica: the right to send one
// request. A nil *turn is a request paced by this replica alone.
type turn struct {
	g      *turns
	store  turnStore
	key    string
	rev    uint64
	sendBy time.Time // the request must be answered by then
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

// turnWait is how long a replica that found the turn taken waits before
// trying again, given the entry it read and its own clock's now: until the
// entry's expiry when answered (its creation by the server's clock plus its
// TTL, and at most the TTL from now), at most half an interval while a
// request is in flight (the holder keeps the turn an interval after the
// answer, so the next look sees it answered in time), and never less than
// turnPoll, so a clock ahead of the server's does not spin. A server clock
// off from the replica's by s costs at most s per turn; it can never make
// a request early, as only the server's expiry frees the turn.
func turnWait(e turnEntry, now time.Time, interval time.Duration) time.Duration {
	state, ttl := parseTurn(e.value)
	wait := e.created.Add(ttl).Sub(now)
	switch state {
	case turnAnswered:
		// It was written before it was read: it expires within ttl
		// of now, whatever the server's clock says.
		wait = min(wait, ttl)
	case turnSending:
		wait = min(wait, interval/2)
	default:
		wait = interval / 2
	}
	return max(wait, turnPoll(interval))
}

// turnPoll is the least wait between two looks at a taken turn: a
// fiftieth of the interval (200ms for Customer.io's 10s), at least 10ms.
func turnPoll(interval time.Duration) time.Duration { return max(interval/50, 10*time.Millisecond) }

// parseTurn reads a turn's state and TTL. A value it cannot read (an
// operator's, a later version's) counts as a request in flight with no
// known end.
func parseTurn(v string) (state string, ttl time.Duration) {
	f := strings.Fields(v)
	if len(f) < 2 {
		return "", 0
	}
	secs, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || secs < 0 {
		return "", 0
	}
	return f[0], time.Duration(secs) * time.Second
}

// wholeSeconds rounds d up to whole seconds, at least one: the NATS server
// reads a TTL in whole seconds, truncating, and refuses one under a second.
func wholeSeconds(d time.Duration) time.Duration {
	return max(time.Second, (d+time.Second-1)/time.Second*time.Second)
}

// sendingTTL is the TTL of a turn taken for a request: long enough that it
// outlives the request's latest answer by an interval.
func (g *turns) sendingTTL() time.Duration { return wholeSeconds(g.limit + g.interval) }

func (g *turns) value(state string, ttl time.Duration) string {
	return state + " " + strconv.FormatInt(int64(ttl/time.Second), 10) + " " + g.replica
}

// answered records that t's request was answered (or failed) now: the turn
// stays taken for the interval, or hold when longer (a Retry-After), from
// the server's receipt of this write. If the write fails the turn's first
// TTL frees it, later but never early.
func (t *turn) answered(ctx context.Context, hold time.Duration) {
	if t == nil {
		return
	}
	ttl := wholeSeconds(max(min(hold, maxTurnHold), t.g.interval))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
	defer cancel()
	if _, err := t.store.Replace(ctx, t.key, t.g.value(turnAnswered, ttl), t.rev, ttl); err != nil {
		t.g.log.Warn("could not record the answer in the broadcast's turn; other replicas wait for it to expire",
			"broadcast_id", t.key, "expires_in", t.g.sendingTTL().String(), "err", err)
	}
}

// unused gives t back at once: its request was not sent.
func (t *turn) unused(ctx context.Context) {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
	defer cancel()
	if err := t.store.Free(ctx, t.key, t.rev); err != nil {
		t.g.log.Warn("could not give back an unused broadcast turn; other replicas wait for it to expire",
			"broadcast_id", t.key, "expires_in", t.g.sendingTTL().String(), "err", err)
	}
}

// context bounds the request sent in t to t.sendBy, so it cannot outlive
// the turn. A nil t leaves ctx as it is.
func (t *turn) context(ctx context.Context) (context.Context, context.CancelFunc) {
	if t == nil {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, t.sendBy)
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

// turnMetrics count how trigger requests were paced.
type turnMetrics struct {
	bucket   string
	global   prometheus.Gauge
	fallback prometheus.Counter
}

func newTurnMetrics() *turnMetrics {
	return &turnMetrics{
		global: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cio_relay_broadcast_pacing_global",
			Help: "1 while this replica paces broadcast triggers across replicas (the {stream}_PACE bucket answers), 0 while it paces them on its own.",
		}),
		fallback: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cio_relay_broadcast_pacing_fallback_total",
			Help: "Trigger requests sent paced by this replica alone, because the {stream}_PACE bucket could not be reached.",
		}),
	}
}

func (m *turnMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.global, m.fallback}
}

// kvTurns is turnStore on a JetStream KV bucket.
type kvTurns struct {
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	subject string // "$KV.{bucket}.": a key's subject, for Replace
}

func newKVTurns(js jetstream.JetStream, kv jetstream.KeyValue) *kvTurns {
	return &kvTurns{kv: kv, js: js, subject: "$KV." + kv.Bucket() + "."}
}

func (s *kvTurns) Create(ctx context.Context, key, value string, ttl time.Duration) (uint64, error) {
	return s.kv.Create(ctx, key, []byte(value), jetstream.KeyTTL(ttl))
}

func (s *kvTurns) Get(ctx context.Context, key string) (turnEntry, error) {
	e, err := s.kv.Get(ctx, key)
	if err != nil {
		return turnEntry{}, err
	}
	return turnEntry{value: string(e.Value()), created: e.Created()}, nil
}

// Replace is Update with a TTL, which KeyValue.Update cannot set: a publish
// to the key's subject expecting rev as the subject's last sequence, as
// Update does, with the Nats-TTL header, as Create does.
func (s *kvTurns) Replace(ctx context.Context, key, value string, rev uint64, ttl time.Duration) (uint64, error) {
	ack, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: s.subject + key, Data: []byte(value)},
		jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl))
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
		}
		return 0, err
	}
	return ack.Sequence, nil
}

// Free purges the key if rev is still its revision; the purge marker itself
// expires after a minute, so freed turns leave nothing behind.
func (s *kvTurns) Free(ctx context.Context, key string, rev uint64) error {
	return s.kv.Purge(ctx, key, jetstream.LastRevision(rev), jetstream.PurgeTTL(time.Minute))
}

// bindTurns opens the turns bucket for the worker's stream, creating or
// updating it when the worker manages streams. Without the bucket (missing
// with RELAY_MANAGE_STREAMS=false, or refused by a server older than 2.11)
// it warns and paces per replica, looking for the bucket again every
// minute. It returns nil when the worker sends no triggers.
func (w *Worker) bindTurns(ctx context.Context) *turns {
	if w.opts.App == nil {
		return nil
	}
	cfg := TurnsConfig(w.opts.Stream)
	cfg.Replicas = w.opts.StreamReplicas // kept like the stream it paces
	w.m.turns.bucket = cfg.Bucket
	find := func(ctx context.Context) (turnStore, error) {
		kv, err := w.js.KeyValue(ctx, cfg.Bucket)
		if err != nil {
			return nil, err
		}
		return newKVTurns(w.js, kv), nil
	}
	var store turnStore
	if w.opts.ManageStreams {
		kv, err := w.js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			w.log.Warn("could not create the broadcast pacing bucket (needs nats-server 2.11 or later): each replica paces its own trigger requests",
				"bucket", cfg.Bucket, "err", err)
		} else {
			store = newKVTurns(w.js, kv)
		}
	} else {
		s, err := find(ctx)
		if err != nil {
			w.log.Warn(fmt.Sprintf("broadcast pacing bucket %s not usable and RELAY_MANAGE_STREAMS=false: each replica paces its own trigger requests, "+
				"so two replicas may send for one broadcast within 10s (answered 429, retried); create it with "+
				"`nats kv add %s --history 1 --ttl 1h --marker-ttl 1m` (nats-server 2.11 or later), or let cio-relay manage it; "+
				"it is looked for again every minute", cfg.Bucket, cfg.Bucket), "err", err)
		}
		store = s
	}
	w.m.turns.global.Set(0)
	return newTurns(store, find, w.opts.BroadcastInterval, sendLimit(w.opts.TriggerTimeout), w.log, w.m.turns)
}
