package worker

import (
	"context"
	"sync"
	"time"
)

// progresser is the part of a JetStream message the lease keeper needs.
type progresser interface {
	comparable
	InProgress() error
}

// leases tracks the messages the worker holds and extends their ack deadline
// while they wait in a batch or in flight. Without it a message that waits
// longer than AckWait (a slow Customer.io, a long retry) would be redelivered
// and sent twice.
type leases[M progresser] struct {
	mu   sync.Mutex
	held map[M]time.Time // message → when its deadline was last extended
}

func newLeases[M progresser]() *leases[M] {
	return &leases[M]{held: make(map[M]time.Time)}
}

func (l *leases[M]) add(m M, now time.Time) {
	l.mu.Lock()
	l.held[m] = now
	l.mu.Unlock()
}

func (l *leases[M]) remove(ms ...M) {
	l.mu.Lock()
	for _, m := range ms {
		delete(l.held, m)
	}
	l.mu.Unlock()
}

func (l *leases[M]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// due returns the messages whose deadline was last extended before cutoff and
// marks them extended at now.
func (l *leases[M]) due(cutoff, now time.Time) []M {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []M
	for m, t := range l.held {
		if t.Before(cutoff) {
			out = append(out, m)
			l.held[m] = now
		}
	}
	return out
}

// run extends, every interval, the deadline of each message held longer than
// interval, until ctx is done. With interval a third of AckWait a message is
// extended at least twice before it could expire.
func (l *leases[M]) run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, m := range l.due(now.Add(-interval), now) {
				if err := m.InProgress(); err != nil {
					onErr(err)
				}
			}
		}
	}
}
