package worker

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

type fakeMsg struct {
	progressed atomic.Int32
	signal     chan struct{} // optional: receives once per InProgress
}

func (f *fakeMsg) InProgress() error {
	f.progressed.Add(1)
	if f.signal != nil {
		select {
		case f.signal <- struct{}{}:
		default:
		}
	}
	return nil
}

func TestLeasesExtendOnlyWhatIsDue(t *testing.T) {
	l := newLeases[*fakeMsg](time.Millisecond)
	t0 := time.Unix(1000, 0)
	old, fresh, gone := &fakeMsg{}, &fakeMsg{}, &fakeMsg{}
	l.add(old, t0)
	l.add(fresh, t0.Add(9*time.Second))
	l.add(gone, t0)
	l.remove(gone)

	due := l.due(t0.Add(5*time.Second), t0.Add(10*time.Second))
	if len(due) != 1 || due[0] != old {
		t.Fatalf("due = %v, want only the old lease", due)
	}
	// Extended at 10s: not due again at a 5s-later cutoff.
	if due := l.due(t0.Add(9*time.Second), t0.Add(14*time.Second)); len(due) != 0 {
		t.Fatalf("due again right after extension: %d", len(due))
	}
	if l.len() != 2 {
		t.Fatalf("len = %d, want 2", l.len())
	}
}

func TestLeasesRunCallsInProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLeases[*fakeMsg](time.Millisecond)
		m := &fakeMsg{signal: make(chan struct{}, 1)}
		l.add(m, time.Now().Add(-time.Hour))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { l.run(ctx, func(err error) { t.Error(err) }); close(done) }()
		select {
		case <-m.signal:
		case <-time.After(5 * time.Second): // virtual: fails at once if nothing is due
			t.Fatal("InProgress never called")
		}
		cancel()
		<-done
	})
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string // "" for valid
	}{
		{"defaults", Options{}, ""},
		{"stream with a dot", Options{Stream: "a.b"}, "stream name"},
		{"stream with a quote", Options{Stream: `a"b`}, "stream name"},
		{"same streams", Options{Stream: "X", DLQStream: "X"}, "both"},
		{"flush beyond half the ack wait", Options{AckWait: 10 * time.Second, FlushInterval: 6 * time.Second}, "flush interval"},
		{"batch over the limit", Options{BatchMaxBytes: 500001}, "out of range"},
		{"three replicas", Options{StreamReplicas: 3}, ""},
		{"replicas over JetStream's limit", Options{StreamReplicas: 6}, "stream replicas 6 must be from 1 to 5"},
		{"negative replicas", Options{StreamReplicas: -1}, "stream replicas -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(nil, nil, tt.opts)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("New error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestNakDelayGrowsAndIsCapped(t *testing.T) {
	w := &Worker{opts: Options{NakDelay: time.Second}}
	for _, tt := range []struct {
		deliveries uint64
		want       time.Duration
	}{{0, time.Second}, {1, time.Second}, {3, 3 * time.Second}, {10, 10 * time.Second}, {50, 10 * time.Second}} {
		if got := w.nakDelay(tt.deliveries); got != tt.want {
			t.Errorf("nakDelay(%d) = %v, want %v", tt.deliveries, got, tt.want)
		}
	}
}
