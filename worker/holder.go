package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The delivery lease makes one replica at a time the one that sends and
// acks ordered calls, with a bound in time that the consumer's pin lacks.
// The pin says whom the server delivers to now; it says nothing about a
// replica that was pinned a moment ago and still has a request in flight,
// an ack on its way or, after NATS was away, acks buffered in its client.
// Such an ack, landing after the next replica counted the consumer's
// pending messages, makes a copy that replica holds count as pending when
// it is not, and so hides a message still in the old replica's hands
// (TestTakeoverIsNotMaskedByACopyTheOldHolderAcked).
//
// The lease is a key in the {stream}_PACE bucket, "ordered.{consumer}",
// with a TTL the NATS server keeps (deliveryLeaseTTL). Only its holder pulls
// from the batch consumer, sends ordered calls and acks them:
//   - A replica takes the lease by creating the key, which succeeds only
//     when it is absent, and renews it (compare-and-set on its revision)
//     every renewEvery.
//   - It starts a request only while the lease is certain to outlast it
//     (the request's deadline is the lease's end less leaseMargin, measured
//     from the start of the last renewal that succeeded: the server's
//     expiry is later still), and acks only while the lease is valid and
//     its connection is up, so that nothing it does reaches the server
//     after the key could have expired. A delivered batch it may not ack
//     any more is nakked: re-sent by the next holder, a duplicate that
//     Customer.io drops by messageId.
//   - It lets go (an epoch ends) when it loses the pin, reconnects to NATS,
//     fails to renew, or stops: it hands back what is not in flight, waits
//     for its requests, its open pull and its acks (a flush), unpins the
//     consumer and deletes the key. One that dies leaves the key to expire.
//   - Everything it receives while it does not hold the lease, or from
//     before its epoch began, it nakks on arrival.
//
// So when a replica takes the lease, no other will send or ack an ordered
// call again, and every copy it then receives is pending until it acks it
// itself: its barrier's count (NumAckPending against what it holds) is
// exact. A replica that dies costs up to the TTL before another delivers
// (DefaultTriggerTimeout: 42s; its unacked messages' ack wait runs
// meanwhile); one that stops or loses the pin hands over within a pull
// expiry.

// DeliveryLeaseKey is the key of the ordered delivery lease of consumer in
// the {stream}_PACE bucket (TurnsBucket), for operators and tests.
func DeliveryLeaseKey(consumer string) string { return "ordered." + consumer }

// leaseMargin is what the lease keeps in hand beyond its holder's last
// request: a cut-off request's last bytes, an ack on the wire.
const leaseMargin = 2 * time.Second

// leaseSlack is how long renewals may fail before the holder must let go:
// a third of the request timeout, at least two seconds, at most ten.
func leaseSlack(requestTimeout time.Duration) time.Duration {
	return min(max(requestTimeout/3, 2*time.Second), 10*time.Second)
}

// deliveryLeaseTTL is the lease key's TTL: a whole request, the slack and
// the margin. With DefaultTriggerTimeout, 42s.
func deliveryLeaseTTL(requestTimeout time.Duration) time.Duration {
	return wholeSeconds(requestTimeout + leaseSlack(requestTimeout) + leaseMargin)
}

// deliveryLease is one replica's side of the lease. Its methods are safe
// for concurrent use.
type deliveryLease struct {
	store          turnStore
	key, replica   string
	ttl            time.Duration
	requestTimeout time.Duration
	now            func() time.Time

	mu      sync.Mutex
	rev     uint64    // the key's revision this replica wrote; 0: not held
	renewed time.Time // when the write of rev was started
}

func newDeliveryLease(store turnStore, consumer, replica string, requestTimeout time.Duration) *deliveryLease {
	if requestTimeout <= 0 {
		requestTimeout = DefaultTriggerTimeout
	}
	return &deliveryLease{store: store, key: DeliveryLeaseKey(consumer), replica: replica,
		ttl: deliveryLeaseTTL(requestTimeout), requestTimeout: requestTimeout, now: time.Now}
}

// renewEvery is how often the holder renews: four times within the slack.
func (l *deliveryLease) renewEvery() time.Duration {
	return leaseSlack(l.requestTimeout) / 4
}

func (l *deliveryLease) value() string {
	return fmt.Sprintf("delivering %d %s", int64(l.ttl/time.Second), l.replica)
}

// errLeaseLost: the key is no longer this replica's (it expired, and
// perhaps another replica holds it now).
var errLeaseLost = errors.New("the ordered delivery lease is no longer this replica's")

// acquire tries once to take the lease: false, with no error, when another
// replica holds it.
func (l *deliveryLease) acquire(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, markTimeout)
	defer cancel()
	start := l.now()
	rev, err := l.store.Create(ctx, l.key, l.value(), l.ttl)
	if errors.Is(err, jetstream.ErrKeyExists) {
		// Perhaps this replica's own: a create or renewal written, its
		// answer lost (a KV leader election, say). Adopted, it is not
		// waited out.
		e, gerr := l.store.Get(ctx, l.key)
		if gerr != nil || e.value != l.value() {
			return false, nil
		}
		start = l.now()
		if rev, err = l.store.Replace(ctx, l.key, l.value(), e.rev, l.ttl); err != nil {
			return false, nil
		}
	}
	if err != nil {
		return false, fmt.Errorf("taking the ordered delivery lease %s: %w", l.key, err)
	}
	l.mu.Lock()
	l.rev, l.renewed = rev, start
	l.mu.Unlock()
	return true, nil
}

// renew extends the lease by a TTL from now. errLeaseLost when the key is
// no longer this replica's; another error leaves the lease to run out.
func (l *deliveryLease) renew(ctx context.Context) error {
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	if rev == 0 {
		return errLeaseLost
	}
	if !l.valid() {
		l.drop()
		return errLeaseLost
	}
	// A renewal answered after the lease's end is worth nothing.
	ctx, cancel := context.WithTimeout(ctx, min(markTimeout, l.end().Sub(l.now())))
	defer cancel()
	start := l.now()
	next, err := l.store.Replace(ctx, l.key, l.value(), rev, l.ttl)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		// A renewal that timed out may have been written after all: the
		// key is still this replica's, at a revision it did not hear of.
		if e, gerr := l.store.Get(ctx, l.key); gerr == nil && e.value == l.value() && e.rev > rev {
			next, err = l.store.Replace(ctx, l.key, l.value(), e.rev, l.ttl)
		}
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		l.drop()
		return errLeaseLost
	}
	if err != nil {
		return fmt.Errorf("renewing the ordered delivery lease %s: %w", l.key, err)
	}
	l.mu.Lock()
	if l.rev == rev {
		l.rev, l.renewed = next, start
	}
	l.mu.Unlock()
	return nil
}

// release deletes the key if it is still this replica's.
func (l *deliveryLease) release(ctx context.Context) error {
	l.mu.Lock()
	rev := l.rev
	l.rev = 0
	l.mu.Unlock()
	if rev == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
	defer cancel()
	if err := l.store.Free(ctx, l.key, rev); err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return fmt.Errorf("releasing the ordered delivery lease %s: %w", l.key, err)
	}
	return nil
}

// drop forgets the lease without touching the key.
func (l *deliveryLease) drop() {
	l.mu.Lock()
	l.rev = 0
	l.mu.Unlock()
}

// end is when the lease may have run out, less the margin, by this
// replica's clock; zero when it is not held.
func (l *deliveryLease) end() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rev == 0 {
		return time.Time{}
	}
	return l.renewed.Add(l.ttl - leaseMargin)
}

// valid reports whether the lease is held and has not run out.
func (l *deliveryLease) valid() bool {
	end := l.end()
	return !end.IsZero() && l.now().Before(end)
}

// sendBy is the deadline of a request started now, and whether one may
// start: only while the lease outlasts a whole request.
func (l *deliveryLease) sendBy() (time.Time, bool) {
	end := l.end()
	if end.IsZero() || end.Sub(l.now()) < l.requestTimeout {
		return time.Time{}, false
	}
	return end, true
}

// parseDeliveryLease reads a lease value: the replica that holds it, and
// its TTL; ok false for a value this version did not write.
func parseDeliveryLease(v string) (replica string, ttl time.Duration, ok bool) {
	f := strings.Fields(v)
	if len(f) != 3 || f[0] != "delivering" {
		return "", 0, false
	}
	secs, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || secs <= 0 {
		return "", 0, false
	}
	return f[2], time.Duration(secs) * time.Second, true
}

// bindDeliveryLease opens the bucket the ordered delivery lease is kept in
// (the turns bucket, TurnsConfig), creating it when the worker manages
// streams. Without it ordering cannot be kept across replicas, so it is an
// error, which says what to do.
func (w *Worker) bindDeliveryLease(ctx context.Context, consumer string) (*deliveryLease, error) {
	cfg := TurnsConfig(w.opts.Stream)
	var kv jetstream.KeyValue
	var err error
	if w.opts.ManageStreams {
		cfg.Replicas = w.bucketReplicas(ctx, cfg)
		kv, err = w.js.CreateOrUpdateKeyValue(ctx, cfg)
	} else if kv, err = w.js.KeyValue(ctx, cfg.Bucket); err == nil {
		w.bucketReplicas(ctx, cfg) // warns of another count, as for the streams
	}
	if err != nil {
		return nil, fmt.Errorf("RELAY_ORDERING=true keeps its delivery lease in KV bucket %s, which is not usable (it needs nats-server 2.11 or later): "+
			"create it with `nats kv add %s --history 1 --ttl 1h --marker-ttl 1m`, let cio-relay manage it (RELAY_MANAGE_STREAMS=true), "+
			"or set RELAY_ORDERING=false: %w", cfg.Bucket, cfg.Bucket, err)
	}
	id := make([]byte, 3)
	_, _ = rand.Read(id)
	replica := hex.EncodeToString(id)
	if host, err := os.Hostname(); err == nil && host != "" && !strings.ContainsAny(host, " \t\n") {
		replica = host + "-" + replica // the pod's name, for an operator reading the key
	}
	return newDeliveryLease(newKVTurns(w.js, kv), consumer, replica, w.opts.TriggerTimeout), nil
}
