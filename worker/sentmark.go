package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A broadcast trigger has no idempotency key: Customer.io creates a new
// trigger, and messages its audience again, for every request. The ack that
// tells JetStream a trigger went can be lost (a disconnect, a consumer
// leader change, a crash between the answer and the ack), and the message
// then comes back. So before each request the worker records, in a KV
// bucket shared by every replica, that the trigger message is being sent,
// and after a 2xx that it was sent; a later delivery of the same message
// reads the record instead of sending blind:
//
//   - no record (or one removed after a definite failure): send.
//   - "sent": the trigger went; ack it (DoubleAck), do not send.
//   - "sending" and nothing after: an earlier delivery's request may have
//     reached Customer.io, and no one knows its answer; dead-letter it as
//     ambiguous, for an operator to check.
//   - the bucket unreachable: do not send; nak with a delay.
//
// The record is keyed by the message's stream sequence, which every
// delivery of it shares, prefixed by the stream's creation time, so a
// stream deleted and created again (sequences restart at 1) never finds the
// old stream's records. A replayed dead letter is a new message with a new
// sequence, and is sent. "sending" is written with compare-and-set (Create),
// so two replicas holding the same message at once (one whose lease lapsed)
// cannot both send it.

// Marker values. "sent" is followed by a space and the trigger id
// Customer.io answered.
const (
	markSending = "sending"
	markSent    = "sent"
)

// SentMarksBucket is the name of the KV bucket of trigger sent-markers for
// stream: "{stream}_SENT".
func SentMarksBucket(stream string) string { return stream + "_SENT" }

// SentMarksConfig is the KV bucket the worker creates for stream's trigger
// markers when it manages streams. A marker must outlive every delivery of
// its message, so it is kept as long as the stream keeps messages
// (maxAge), or seven days when the stream keeps them forever; one value per
// key, file storage.
func SentMarksConfig(stream string, maxAge time.Duration) jetstream.KeyValueConfig {
	if maxAge <= 0 {
		maxAge = 7 * 24 * time.Hour
	}
	return jetstream.KeyValueConfig{
		Bucket:       SentMarksBucket(stream),
		Description:  "cio-relay: broadcast trigger messages being sent or sent, by stream sequence",
		History:      1,
		TTL:          maxAge,
		MaxValueSize: 256,
		Storage:      jetstream.FileStorage,
		Replicas:     1,
	}
}

// markTimeout bounds every marker read and write, and the DoubleAck of a
// trigger: a KV that does not answer in time counts as unreachable.
const markTimeout = 5 * time.Second

// markConcurrency bounds the marker writes of one merged request in flight
// at once: a request can carry a thousand triggers.
const markConcurrency = 32

// sentMarks reads and writes the trigger markers of one stream.
type sentMarks struct {
	kv     jetstream.KeyValue
	prefix string // the stream's creation time in base 36, and a dot
}

// bindSentMarks opens the marker bucket for the worker's stream, creating
// or updating it when the worker manages streams. It returns nil when the
// worker sends no triggers.
func (w *Worker) bindSentMarks(ctx context.Context) (*sentMarks, error) {
	if w.opts.App == nil {
		return nil, nil
	}
	stream, err := w.js.Stream(ctx, w.opts.Stream)
	if err != nil {
		return nil, fmt.Errorf("looking up stream %s: %w", w.opts.Stream, err)
	}
	info := stream.CachedInfo()
	cfg := SentMarksConfig(w.opts.Stream, info.Config.MaxAge)
	var kv jetstream.KeyValue
	if w.opts.ManageStreams {
		// RELAY_STREAM_REPLICAS applies to the bucket as to the streams.
		cfg.Replicas = w.bucketReplicas(ctx, cfg)
		kv, err = w.js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("creating or updating key-value bucket %s for broadcast triggers%s: %w", cfg.Bucket, w.replicasHint(), err)
		}
	} else {
		kv, err = w.js.KeyValue(ctx, cfg.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("key-value bucket %s not found and RELAY_MANAGE_STREAMS=false: create it (history 1, TTL at least the stream's max age, e.g. `nats kv add %s --history 1 --ttl %s`), "+
				"or let cio-relay manage it; without it a trigger whose ack is lost could be sent twice", cfg.Bucket, cfg.Bucket, cfg.TTL)
		}
		if err != nil {
			return nil, fmt.Errorf("looking up key-value bucket %s: %w", cfg.Bucket, err)
		}
		w.bucketReplicas(ctx, cfg) // warns of another count, as for the streams
	}
	return &sentMarks{kv: kv, prefix: strconv.FormatInt(info.Created.UnixNano(), 36) + "."}, nil
}

func (s *sentMarks) key(h *held) string { return s.prefix + strconv.FormatUint(h.seq, 10) }

// markClaim is the right to send one request for some triggers: each key
// carries "sending", written by this claim at rev.
type markClaim struct {
	keys map[string]uint64 // key → revision of our "sending"
}

// markFound is a trigger whose marker an earlier delivery wrote.
type markFound struct {
	h     *held
	sent  bool      // "sent": the request went; otherwise "sending", answer unknown
	value string    // the marker, for the dead letter
	since time.Time // when it was written
}

// markConflict is claim's error when some triggers already have a marker:
// they must not be sent. The claim took nothing.
type markConflict struct{ found []markFound }

func (e *markConflict) Error() string {
	return fmt.Sprintf("%d of the triggers were sent, or began to be sent, by an earlier delivery", len(e.found))
}

// markError is a failure to read or write the markers: the bucket is
// unreachable or refused. Nothing may be sent until it answers.
type markError struct{ err error }

func (e *markError) Error() string {
	return fmt.Sprintf("recording broadcast triggers before sending: %v", e.err)
}
func (e *markError) Unwrap() error { return e.err }

// claim writes "sending" for every trigger of items (once per message: a
// message held twice shares one marker) with compare-and-set. It returns the
// claim, or a *markConflict naming the triggers that already have a marker,
// or a *markError; in both cases it has removed what it wrote.
func (s *sentMarks) claim(ctx context.Context, items []*held) (*markClaim, error) {
	ctx, cancel := context.WithTimeout(ctx, markTimeout)
	defer cancel()
	byKey := make(map[string][]*held, len(items))
	for _, h := range items {
		k := s.key(h)
		byKey[k] = append(byKey[k], h)
	}
	c := &markClaim{keys: make(map[string]uint64, len(byKey))}
	var mu sync.Mutex
	var found []markFound
	var errs []error
	s.each(keysOf(byKey), func(k string) {
		rev, f, err := s.claimOne(ctx, k)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			errs = append(errs, err)
		case f != nil:
			for _, h := range byKey[k] {
				f.h = h
				found = append(found, *f)
			}
		default:
			c.keys[k] = rev
		}
	})
	switch {
	case len(errs) > 0:
		s.release(context.WithoutCancel(ctx), c)
		return nil, &markError{errors.Join(errs...)}
	case len(found) > 0:
		s.release(context.WithoutCancel(ctx), c)
		return nil, &markConflict{found: found}
	}
	return c, nil
}

// claimOne creates key with "sending", or reports the marker already there.
func (s *sentMarks) claimOne(ctx context.Context, k string) (uint64, *markFound, error) {
	for range 3 {
		rev, err := s.kv.Create(ctx, k, []byte(markSending))
		if err == nil {
			return rev, nil, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, nil, fmt.Errorf("marker %s: %w", k, err)
		}
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed meanwhile: try again
		}
		if err != nil {
			return 0, nil, fmt.Errorf("marker %s: %w", k, err)
		}
		v := string(e.Value())
		return 0, &markFound{sent: v == markSent || strings.HasPrefix(v, markSent+" "), value: v, since: e.Created()}, nil
	}
	return 0, nil, fmt.Errorf("marker %s: created and removed repeatedly by another replica", k)
}

// sent records that c's request was answered 2xx with triggerID. It
// reports how many markers could not be written: those stay "sending", so
// a later delivery of their message dead-letters it as ambiguous rather
// than send it again.
func (s *sentMarks) sent(ctx context.Context, c *markClaim, triggerID int64) int {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
	defer cancel()
	value := []byte(markSent + " " + strconv.FormatInt(triggerID, 10))
	var n int
	var mu sync.Mutex
	s.each(keysOf(c.keys), func(k string) {
		if _, err := s.kv.Update(ctx, k, value, c.keys[k]); err != nil {
			mu.Lock()
			n++
			mu.Unlock()
		}
	})
	return n
}

// release removes c's markers after an answer that says the request was
// not acted on, so a later request may send the triggers. A marker that
// cannot be removed stays "sending": its message is then dead-lettered as
// ambiguous rather than sent.
func (s *sentMarks) release(ctx context.Context, c *markClaim) int {
	if c == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
	defer cancel()
	var n int
	var mu sync.Mutex
	s.each(keysOf(c.keys), func(k string) {
		if err := s.kv.Delete(ctx, k, jetstream.LastRevision(c.keys[k])); err != nil {
			mu.Lock()
			n++
			mu.Unlock()
		}
	})
	return n
}

// each calls fn for every key, markConcurrency at a time.
func (s *sentMarks) each(keys []string, fn func(string)) {
	sem := make(chan struct{}, markConcurrency)
	var wg sync.WaitGroup
	for _, k := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(k)
		})
	}
	wg.Wait()
}

func keysOf[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}
