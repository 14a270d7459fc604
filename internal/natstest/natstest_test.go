package natstest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/natstest"
)

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second), nats.NoReconnect())
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newJetStream(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return js
}

func TestRestartKeepsJetStreamData(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	srv := natstest.Start(t)
	if !strings.HasPrefix(srv.URL(), "nats://127.0.0.1:") {
		t.Fatalf("URL() = %q, want nats://127.0.0.1:PORT", srv.URL())
	}
	if k := srv.Kind(); k != natstest.KindContainer && k != natstest.KindInProcess {
		t.Fatalf("Kind() = %q", k)
	}
	urlBefore := srv.URL()

	nc := connect(t, srv.URL())
	js := newJetStream(t, nc)
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     "EVENTS",
		Subjects: []string{"events.>"},
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	ack, err := js.Publish(ctx, "events.track", []byte("kept across restart"))
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	nc.Close()

	srv.Restart(t)

	if srv.URL() != urlBefore {
		t.Fatalf("URL after Restart = %q, want the same %q", srv.URL(), urlBefore)
	}
	js = newJetStream(t, connect(t, srv.URL()))
	stream, err := js.Stream(ctx, "EVENTS")
	if err != nil {
		t.Fatalf("Stream after restart: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("Info after restart: %v", err)
	}
	if got := info.State.Msgs; got != 1 {
		t.Fatalf("stream messages after restart = %d, want 1", got)
	}
	msg, err := stream.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatalf("GetMsg(%d) after restart: %v", ack.Sequence, err)
	}
	if got := string(msg.Data); got != "kept across restart" {
		t.Fatalf("message after restart = %q, want %q", got, "kept across restart")
	}

	// The new server takes writes too, not only reads of old data.
	if _, err := js.Publish(ctx, "events.track", []byte("after restart")); err != nil {
		t.Fatalf("Publish after restart: %v", err)
	}
}

func TestStopThenRestart(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)

	srv.Stop(t)
	if nc, err := nats.Connect(srv.URL(), nats.Timeout(time.Second), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatalf("connected to %s while the server was stopped", srv.URL())
	}
	srv.Stop(t) // stopping a stopped server is a no-op

	srv.Restart(t)
	nc := connect(t, srv.URL())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := newJetStream(t, nc).AccountInfo(ctx); err != nil {
		t.Fatalf("AccountInfo after Restart: %v", err)
	}
}
