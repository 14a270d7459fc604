package worker

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// turn is a broadcast's turn, held by this replica: the right to send one
// request. A nil *turn is a request paced by this replica alone.
type turn struct {
	g      *turns
	store  turnStore
	key    string
	rev    uint64
	sendBy time.Time // the request must be answered by then
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
