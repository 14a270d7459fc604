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
