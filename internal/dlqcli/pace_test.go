package dlqcli

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestReplayPace: --rate spaces replays evenly, the first at once; 0 does
// not wait; a turn after ctx's deadline ends the wait at once as
// interrupted. In virtual time.
func TestReplayPace(t *testing.T) {
	for _, tt := range []struct {
		rate  int
		turns int
		want  time.Duration // from the first turn to the last
	}{
		{0, 100, 0},
		{1, 3, 2 * time.Second},
		{50, 6, 100 * time.Millisecond},
	} {
		synctest.Test(t, func(t *testing.T) {
			pace := newPace(tt.rate)
			start := time.Now()
			for range tt.turns {
				if err := waitTurn(t.Context(), pace); err != nil {
					t.Fatal(err)
				}
			}
			if got := time.Since(start); got != tt.want {
				t.Errorf("rate %d: %d turns took %v, want %v", tt.rate, tt.turns, got, tt.want)
			}
		})
	}
	synctest.Test(t, func(t *testing.T) {
		pace := newPace(1)
		if err := waitTurn(t.Context(), pace); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := waitTurn(ctx, pace); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 0 {
			t.Errorf("turn after the deadline: %v after %v; want context.DeadlineExceeded at once", err, time.Since(start))
		}
		ctx, cancel = context.WithCancel(t.Context())
		cancel()
		if err := waitTurn(ctx, pace); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: %v, want context.Canceled", err)
		}
	})
}
