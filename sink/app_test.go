package sink_test

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/cio-relay/cio-relay/sink"
)

func TestMaybeTriggered(t *testing.T) {
	dial := &sink.TransportError{API: "app", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}
	reset := &sink.TransportError{API: "app", Err: &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"ok", nil, false},
		{"connect failed", dial, false},
		{"reset after sending", reset, true},
		{"502 from a gateway", fmt.Errorf("x: %w", &sink.StatusError{API: "app", Status: 502}), true},
		{"504 from a gateway", &sink.StatusError{API: "app", Status: 504}, true},
		{"503", &sink.StatusError{API: "app", Status: 503}, false},
		{"500", &sink.StatusError{API: "app", Status: 500}, false},
		{"429", &sink.StatusError{API: "app", Status: 429}, false},
		{"422", &sink.StatusError{API: "app", Status: 422}, false},
	}
	for _, tt := range tests {
		if got := sink.MaybeTriggered(tt.err); got != tt.want {
			t.Errorf("%s: MaybeTriggered = %v, want %v", tt.name, got, tt.want)
		}
	}
}
