package worker

import (
	"log/slog"
	"testing"
	"testing/synctest"
	"time"
)

// TestShutdownPhases: the hard stop comes exactly ShutdownTimeout after
// the drain began if the pipeline is still busy, never if it finished in
// time, and nothing happens when the pipeline ends without a stop.
func TestShutdownPhases(t *testing.T) {
	for _, tt := range []struct {
		name     string
		stop     bool
		drainFor time.Duration // how long the pipeline takes after the stop
		hardStop bool
	}{
		{"drained in time", true, 10 * time.Second, false},
		{"drain overruns", true, time.Minute, true},
		{"pipeline ends without a stop", false, time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				stop, drained := make(chan struct{}), make(chan struct{})
				var drainAt, hardAt time.Time
				s := shutdown{timeout: 25 * time.Second, hardStop: func() { hardAt = time.Now() }, log: slog.New(slog.DiscardHandler)}
				done := make(chan struct{})
				go func() { s.watch(stop, drained, func() { drainAt = time.Now() }); close(done) }()
				start := time.Now()
				if tt.stop {
					close(stop)
				}
				time.Sleep(tt.drainFor) // the pipeline's work, in virtual time
				close(drained)
				<-done
				if tt.stop != !drainAt.IsZero() || tt.stop && !drainAt.Equal(start) {
					t.Errorf("drain began at %v (stop %v)", drainAt.Sub(start), tt.stop)
				}
				if tt.hardStop != !hardAt.IsZero() {
					t.Fatalf("hard stop %v, want %v", !hardAt.IsZero(), tt.hardStop)
				}
				if tt.hardStop && hardAt.Sub(start) != 25*time.Second {
					t.Fatalf("hard stop %v after the drain began, want the shutdown timeout", hardAt.Sub(start))
				}
			})
		})
	}
}
