package worker

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// timedMsg records when each extension of its deadline happened.
type timedMsg struct {
	mu    sync.Mutex
	times []time.Time
}

func (m *timedMsg) InProgress() error {
	m.mu.Lock()
	m.times = append(m.times, time.Now())
	m.mu.Unlock()
	return nil
}

// TestLeaseKeeperExtendsEveryInterval: 20 held messages, a 50 ms interval
// (an ack wait of 150 ms), 3 s of virtual time. Every message must be
// extended once per interval, about 1,200 calls, and never go longer than
// half its ack wait between extensions (the first one included), which the
// keeper's comment promises.
func TestLeaseKeeperExtendsEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			interval = 50 * time.Millisecond
			held     = 20
			span     = 3 * time.Second
		)
		l := newLeases[*timedMsg](interval)
		start := time.Now()
		msgs := make([]*timedMsg, held)
		for i := range msgs {
			msgs[i] = &timedMsg{}
			l.add(msgs[i], start)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			l.run(ctx, func(err error) { t.Error(err) })
		}()
		time.Sleep(span + interval/2)
		cancel()
		<-done

		calls := 0
		var longest time.Duration
		for _, m := range msgs {
			calls += len(m.times)
			prev := start
			for _, at := range m.times {
				longest = max(longest, at.Sub(prev))
				prev = at
			}
			longest = max(longest, start.Add(span).Sub(prev))
		}
		want := held * int(span/interval)
		t.Logf("%d InProgress calls over %v at a %v interval (want %d); longest gap %v", calls, span, interval, want, longest)
		if calls < want-held {
			t.Errorf("%d extensions, want about %d (one per message per interval)", calls, want)
		}
		if longest > 3*interval/2 {
			t.Errorf("a message went %v without an extension; at most %v (half its ack wait) allowed", longest, 3*interval/2)
		}
	})
}

// TestLeaseKeeperFollowsAShorterAckWait: the keeper waits 2 s between rounds
// (an ack wait of 6 s) when the consumer's ack wait is cut to 150 ms. The
// keeper must start a round at once and extend every 50 ms from then on, not
// finish its 2-second wait first.
func TestLeaseKeeperFollowsAShorterAckWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLeases[*timedMsg](2 * time.Second)
		m := &timedMsg{}
		start := time.Now()
		l.add(m, start)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			l.run(ctx, func(err error) { t.Error(err) })
		}()
		time.Sleep(300 * time.Millisecond)
		l.setInterval(50 * time.Millisecond)
		time.Sleep(time.Second + 25*time.Millisecond)
		cancel()
		<-done
		if len(m.times) == 0 || m.times[0].Sub(start) != 300*time.Millisecond {
			t.Fatalf("extensions at %v, want the first at 300ms, when the interval shrank", m.times)
		}
		for i := 1; i < len(m.times); i++ {
			if gap := m.times[i].Sub(m.times[i-1]); gap != 50*time.Millisecond {
				t.Errorf("extension %d came %v after the previous, want 50ms", i, gap)
			}
		}
		if len(m.times) != 21 {
			t.Errorf("%d extensions in the second after the change, want 21", len(m.times))
		}
	})
}
