package worker

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// fakeBatch is one pull's answer.
type fakeBatch struct {
	ch   chan jetstream.Msg
	feed chan jetstream.Msg // an open pull's later messages
	mu   sync.Mutex
	err  error
}

func (b *fakeBatch) Messages() <-chan jetstream.Msg { return b.ch }
func (b *fakeBatch) Error() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// fakeJSMsg is a message the intake hands on without looking into it.
type fakeJSMsg struct{ jetstream.Msg }

// pullAnswer is what the fake consumer does with one pull: deliver msgs (up
// to what was asked), then end with err; or fail at once (fetchErr); or,
// with open, stay open (an idle stream) until the intake cancels it.
type pullAnswer struct {
	msgs     int
	err      error
	fetchErr error
	open     bool
}

// fakeConsumer answers pulls from a script, then with pulls that stay open.
type fakeConsumer struct {
	jetstream.Consumer
	mu      sync.Mutex
	script  []pullAnswer
	asked   []int // messages asked for, by pull
	batches []*fakeBatch
	infoErr error
	cfg     jetstream.ConsumerConfig // what CachedInfo says it is
}

func (c *fakeConsumer) CachedInfo() *jetstream.ConsumerInfo {
	return &jetstream.ConsumerInfo{Name: "fake", Config: c.cfg}
}

func (c *fakeConsumer) Info(context.Context) (*jetstream.ConsumerInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.CachedInfo(), c.infoErr
}

func (c *fakeConsumer) fetch(ctx context.Context, n int) (jetstream.MessageBatch, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, n)
	a := pullAnswer{open: true}
	if len(c.script) > 0 {
		a, c.script = c.script[0], c.script[1:]
	}
	if a.fetchErr != nil {
		return nil, a.fetchErr
	}
	b := &fakeBatch{ch: make(chan jetstream.Msg, n), feed: make(chan jetstream.Msg), err: a.err}
	c.batches = append(c.batches, b)
	for range min(a.msgs, n) {
		b.ch <- fakeJSMsg{}
	}
	if !a.open {
		close(b.ch)
		return b, nil
	}
	go func() {
		for {
			select {
			case m := <-b.feed:
				b.ch <- m
			case <-ctx.Done():
				b.mu.Lock()
				b.err = ctx.Err()
				b.mu.Unlock()
				close(b.ch)
				return
			}
		}
	}()
	return b, nil
}

func (c *fakeConsumer) pulls() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.asked...)
}

// startIntake runs an intake of capacity over c that counts what it takes.
func startIntake(ctx context.Context, c *fakeConsumer, capacity int) (*intake, *int, chan error) {
	taken := new(int)
	in := newIntake(c, capacity, func(m jetstream.Msg) (*held, bool) {
		*taken++
		return &held{msg: m}, true
	}, slog.New(slog.DiscardHandler))
	in.fetch = c.fetch
	done := make(chan error, 1)
	go func() { done <- in.run(ctx) }()
	return in, taken, done
}

// TestIntakeReceivesNoMoreThanItsQueueHolds: with a backlog and a pipeline
// that takes nothing, the intake must stop pulling once its queue is full:
// nothing may wait un-leased beyond it. Each message taken frees room, and a
// whole pull's worth of room brings the next pull.
func TestIntakeReceivesNoMoreThanItsQueueHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &fakeConsumer{script: []pullAnswer{{msgs: 5}, {msgs: 5}, {msgs: 5}, {msgs: 5}}}
		ctx, cancel := context.WithCancel(t.Context())
		in, taken, done := startIntake(ctx, c, 10)
		synctest.Wait()
		if got := c.pulls(); len(got) != 2 || *taken != 10 {
			t.Fatalf("pulls %v, %d received, with nothing taken from a queue of 10; want two pulls of 5, 10 received", got, *taken)
		}
		for range 4 {
			in.next()
		}
		synctest.Wait()
		if got := c.pulls(); len(got) != 2 {
			t.Fatalf("pulls %v with room for 4: a pull of 5 would overfill the queue", got)
		}
		in.next()
		synctest.Wait()
		if got := c.pulls(); len(got) != 3 || *taken != 15 {
			t.Fatalf("pulls %v, %d received after room for 5; want a third pull", got, *taken)
		}
		cancel()
		rest := 0
		for _, ok := in.next(); ok; _, ok = in.next() {
			rest++
		}
		if err := <-done; err != nil {
			t.Fatalf("run = %v after a stop, want nil", err)
		}
		if rest != 10 {
			t.Errorf("%d messages handed out after the stop, want the 10 still queued", rest)
		}
	})
}

// TestIntakeRidesThroughFailedPulls: a missing heartbeat, a leader change,
// a timeout, a pull that cannot be sent (NATS reconnecting) are all asked
// again after a back-off, and messages keep coming; a deleted consumer ends
// run with an error that names it, as does one that Info no longer finds.
func TestIntakeRidesThroughFailedPulls(t *testing.T) {
	tests := []struct {
		name    string
		script  []pullAnswer
		infoErr error
		wantErr error // nil: run keeps going and delivers the last pull's 3
	}{
		{"missing heartbeat", []pullAnswer{{err: jetstream.ErrNoHeartbeat}, {msgs: 1, err: jetstream.ErrNoHeartbeat}, {msgs: 3}}, nil, nil},
		{"leader change", []pullAnswer{{err: jetstream.ErrConsumerLeadershipChanged}, {msgs: 3}}, nil, nil},
		{"pull not sent", []pullAnswer{{fetchErr: nats.ErrConnectionReconnecting}, {fetchErr: nats.ErrConnectionReconnecting}, {msgs: 3}}, nats.ErrTimeout, nil},
		{"no responders", []pullAnswer{{err: nats.ErrNoResponders}, {msgs: 3}}, nil, nil},
		{"consumer deleted", []pullAnswer{{msgs: 2, err: jetstream.ErrConsumerDeleted}}, nil, jetstream.ErrConsumerDeleted},
		{"consumer gone", []pullAnswer{{err: nats.ErrNoResponders}}, jetstream.ErrConsumerNotFound, jetstream.ErrConsumerNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := &fakeConsumer{script: tt.script, infoErr: tt.infoErr}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				in, _, done := startIntake(ctx, c, 10)
				if tt.wantErr != nil {
					err := <-done
					if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), "fake") {
						t.Fatalf("run = %v, want %v naming the consumer", err, tt.wantErr)
					}
					return
				}
				time.Sleep(time.Minute)
				synctest.Wait()
				select {
				case err := <-done:
					t.Fatalf("run = %v, want it to keep pulling", err)
				default:
				}
				got := 0
				for len(in.queue) > 0 {
					in.next()
					got++
				}
				want := 3
				for _, a := range tt.script {
					if a.fetchErr == nil && a.err != nil {
						want += a.msgs
					}
				}
				if got != want {
					t.Errorf("%d messages received across the failures, want %d", got, want)
				}
				cancel()
				if err := <-done; err != nil {
					t.Errorf("run = %v after a stop, want nil", err)
				}
			})
		})
	}
}

// TestIntakeStopHandsOutWhatThePullStillBrings: at a stop the open pull may
// still be bringing messages the server has sent. They must reach the
// pipeline (to be delivered or nakked) rather than be dropped and left to
// their ack wait; an idle pull is then cancelled within stopGrace.
func TestIntakeStopHandsOutWhatThePullStillBrings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &fakeConsumer{}
		ctx, cancel := context.WithCancel(t.Context())
		in, taken, done := startIntake(ctx, c, 10)
		synctest.Wait()
		start := time.Now()
		cancel()
		time.Sleep(stopGrace / 2)
		for range 3 {
			c.batches[0].feed <- fakeJSMsg{}
		}
		if err := <-done; err != nil {
			t.Fatalf("run = %v, want nil", err)
		}
		if took := time.Since(start); took != stopGrace {
			t.Errorf("run returned %v after the stop, want %v (the grace for an idle pull)", took, stopGrace)
		}
		n := 0
		for _, ok := in.next(); ok; _, ok = in.next() {
			n++
		}
		if *taken != 3 || n != 3 || len(c.pulls()) != 1 {
			t.Errorf("%d received and %d handed out after the stop, %d pulls; want the 3 the open pull brought, and no new pull", *taken, n, len(c.pulls()))
		}
	})
}

// TestIntakePullExpiry: a pull waits on an idle stream pullExpiry, or
// orderedPullExpiry on a consumer with a priority group (the pin is kept
// by asking this often) and on the ordered path whatever the consumer (the
// delivery lease is let go only once the last pull has ended).
func TestIntakePullExpiry(t *testing.T) {
	pinned := jetstream.ConsumerConfig{PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{PriorityGroup}}
	tests := []struct {
		name       string
		cfg        jetstream.ConsumerConfig
		shortPulls bool
		want       time.Duration
		group      string
	}{
		{"plain", jetstream.ConsumerConfig{}, false, pullExpiry, ""},
		{"pinned", pinned, false, orderedPullExpiry, PriorityGroup},
		{"ordered", jetstream.ConsumerConfig{}, true, orderedPullExpiry, ""},
		{"ordered, pinned by an earlier version", pinned, true, orderedPullExpiry, PriorityGroup},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &fakeConsumer{cfg: tt.cfg}
			in := newIntake(c, 10, nil, slog.New(slog.DiscardHandler))
			in.shortPulls = tt.shortPulls
			in.use(c)
			if in.expiry != tt.want || in.group != tt.group {
				t.Errorf("expiry %v group %q, want %v %q", in.expiry, in.group, tt.want, tt.group)
			}
		})
	}
}
