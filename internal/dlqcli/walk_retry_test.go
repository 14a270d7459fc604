package dlqcli

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestReopenWait(t *testing.T) {
	for stalls, want := range map[int]time.Duration{0: reopenFloor, 1: reopenFloor, 2: 2 * reopenFloor, 3: 4 * reopenFloor, 5: reopenCeiling, 50: reopenCeiling} {
		if got := reopenWait(stalls); got != want {
			t.Errorf("reopenWait(%d) = %v, want %v", stalls, got, want)
		}
	}
}

func TestTransient(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nats.ErrNoResponders, true},
		{fmt.Errorf("looking up: %w", context.DeadlineExceeded), true},
		{nats.ErrTimeout, true},
		{&jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"}, true},
		{jetstream.ErrStreamNotFound, false},
		{&jetstream.APIError{Code: 400, Description: "bad request"}, false},
		{errors.New("something else"), false},
	}
	for _, tt := range tests {
		if got := transient(tt.err); got != tt.want {
			t.Errorf("transient(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestFetchAgain(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nats.ErrNoResponders, true},
		{jetstream.ErrConsumerDeleted, true},
		{fmt.Errorf("fetch: %w", jetstream.ErrConsumerNotFound), true},
		{jetstream.ErrStreamNotFound, false},
		{errors.New("something else"), false},
	} {
		if got := fetchAgain(tt.err); got != tt.want {
			t.Errorf("fetchAgain(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestWalkerLeft: the end of a walk is read from the stream, by subject,
// from the walk's next sequence up to its last.
func TestWalkerLeft(t *testing.T) {
	f := newFixture(t) // letters 1..7: track at 1, 3, 5, 7; page at 4
	for _, tt := range []struct {
		subjects []string
		next     uint64
		upTo     uint64
		want     bool
	}{
		{nil, 1, 7, true},
		{nil, 7, 7, true},
		{nil, 8, 7, false},
		{nil, 3, 2, false}, // stored after the walk began
		{[]string{"dlq.cio.page"}, 4, 7, true},
		{[]string{"dlq.cio.page"}, 5, 7, false},
		{[]string{"dlq.cio.alias", "dlq.cio.track"}, 6, 7, true},
		{[]string{"dlq.cio.alias", "dlq.cio.track"}, 6, 6, false},
		{[]string{"dlq.cio.*"}, 7, 7, true},
	} {
		w := &walker{stream: f.dlq, subjects: tt.subjects, next: tt.next}
		got, err := w.left(t.Context(), tt.upTo)
		if err != nil || got != tt.want {
			t.Errorf("left(subjects %v, next %d, up to %d) = %v, %v; want %v", tt.subjects, tt.next, tt.upTo, got, err, tt.want)
		}
	}
}
