package publish

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

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

// TestNoRespondersRetriedUntilStored: a call published while no stream
// answers on its subject (no responders, or no PubAck within the ack
// timeout: what a stream between leaders looks like) is sent again, with
// the same Nats-Msg-Id, until the stream is there, and is then stored
// once.
func TestNoRespondersRetriedUntilStored(t *testing.T) {
	js, _ := newJS(t, "")
	p, err := New(js, Options{Stream: "CIO", RetryMaxElapsed: time.Minute, AckTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	id, err := p.Publish(t.Context(), []byte(`{"type":"track","userId":"u","event":"E"}`))
	if err != nil {
		t.Fatal(err)
	}
	// Retries happen within Wait (the publisher has no goroutine of its
	// own); one cut short by its context keeps the call to send again.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	err = p.Wait(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with no stream = %v; want it still retrying at its deadline", err)
	}
	if s := p.Stats(); s.Retries < 2 || s.Failed != 0 {
		t.Fatalf("stats %+v after 2s with no stream; want 2 or more retries, nothing failed", s)
	}
	t.Logf("after 2s with no stream: %+v", p.Stats())
	stream, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "CIO", Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(t.Context()); err != nil {
		t.Fatalf("Wait = %v; want the call stored once the stream answers", err)
	}
	msgs := stored(t, stream)
	if len(msgs) != 1 {
		t.Fatalf("stream holds %d messages; want the one call", len(msgs))
	}
	if got := msgs[0].Header.Get(jetstream.MsgIDHeader); got != id {
		t.Errorf("stored with Nats-Msg-Id %q; want %s", got, id)
	}
	if s := p.Stats(); s.Published != 1 || s.Failed != 0 || s.Retries < 2 {
		t.Errorf("stats %+v; want 1 published after 2 or more retries", s)
	}
}
