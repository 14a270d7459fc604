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
// while they wait in the intake queue, a batch or in flight. Without it a
// message that waits longer than AckWait (a slow Customer.io, a long retry)
// would be redelivered and sent twice.
type leases[M progresser] struct {
	mu       sync.Mutex
	held     map[M]time.Time // message → when its deadline was last extended
	interval time.Duration   // between rounds: a third of the shortest ack wait
	wake     chan struct{}   // the interval got shorter: start a round now
}

// newLeases returns a keeper that extends every interval; setInterval
// changes it.
func newLeases[M progresser](interval time.Duration) *leases[M] {
	return &leases[M]{held: make(map[M]time.Time), interval: interval, wake: make(chan struct{}, 1)}
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

// setInterval changes the time between rounds, from the next round on; a
// shorter one starts a round at once, so no lease outlives an ack wait an
// operator has just shortened.
func (l *leases[M]) setInterval(d time.Duration) {
	l.mu.Lock()
	shorter := d < l.interval
	l.interval = d
	l.mu.Unlock()
	if shorter {
		signal(l.wake)
	}
}

func (l *leases[M]) currentInterval() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.interval
}

// due returns the messages whose deadline was last extended before cutoff
// and marks them extended at now.
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

// run extends deadlines once per interval, re-reading the interval every
// round, until ctx is done. A round extends every message last extended at
// least half an interval ago: one extended in the previous round is always
// due again, however the timer jitters, and a message taken since is due
// once it has had half an interval. So the gap between two extensions is
// one interval (the first comes within one and a half): with interval a
// third of AckWait, at most half the ack wait passes without one.
func (l *leases[M]) run(ctx context.Context, onErr func(error)) {
	timer := time.NewTimer(l.currentInterval())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-l.wake:
		}
		interval := l.currentInterval()
		now := time.Now()
		for _, m := range l.due(now.Add(-interval/2), now) {
			if err := m.InProgress(); err != nil {
				onErr(err)
			}
		}
		timer.Reset(interval)
	}
}
