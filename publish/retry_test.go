package publish

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"own PubAck timeout", ErrAckTimeout, true},
		{"nats.go's async PubAck timeout", jetstream.ErrAsyncPublishTimeout, true},
		{"request timeout", nats.ErrTimeout, true},
		{"no stream response", jetstream.ErrNoStreamResponse, true},
		{"no responders", nats.ErrNoResponders, true},
		{"wrapped no responders", fmt.Errorf("publishing: %w", nats.ErrNoResponders), true},
		{"disconnected", nats.ErrDisconnected, true},
		{"reconnect buffer full", nats.ErrReconnectBufExceeded, true},
		{"too many stalled", jetstream.ErrTooManyStalledMsgs, true},
		{"cluster unavailable", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{"not leader", &jetstream.APIError{Code: 500, ErrorCode: 10009, Description: "JetStream cluster can not handle request"}, true},
		{"stream offline", &jetstream.APIError{Code: 500, ErrorCode: 10118, Description: "stream is offline"}, true},
		{"another 503", &jetstream.APIError{Code: 503, ErrorCode: 10999}, true},
		{"wrong stream", &jetstream.APIError{Code: 400, ErrorCode: 10060, Description: "expected stream does not match"}, false},
		{"too large", &jetstream.APIError{Code: 400, ErrorCode: 10054, Description: "message size exceeds maximum allowed"}, false},
		{"closed connection", nats.ErrConnectionClosed, false},
		{"caller's context", context.Canceled, false},
		{"anything else", errors.New("boom"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Retryable(tt.err); got != tt.want {
				t.Errorf("Retryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
