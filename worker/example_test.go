package worker_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/worker"
)

// printSender stands in for Customer.io: it prints each batch body and tells
// the example when one has arrived.
type printSender struct{ sent chan struct{} }

func (p printSender) SendBatch(_ context.Context, body []byte) error {
	fmt.Println(string(body))
	p.sent <- struct{}{}
	return nil
}

// Example_gracefulShutdown runs a worker against an in-process JetStream
// server, delivers two calls in one batch, then stops it the way SIGTERM
// does: cancelling Run's context makes it stop pulling, flush and finish
// in-flight sends within ShutdownTimeout, and return nil.
func Example_gracefulShutdown() {
	dir, _ := os.MkdirTemp("", "cio-relay-example")
	defer os.RemoveAll(dir)
	srv, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("nats-server did not start")
	}
	nc, _ := nats.Connect(srv.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)

	// The stream may exist before the worker: here it does, holding two
	// calls already. (With ManageStreams the worker creates it otherwise.)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "CIO", Subjects: []string{"cio.>"}}); err != nil {
		panic(err)
	}
	for _, body := range []string{
		`{"messageId":"m-1","userId":"u-1","event":"Signed Up","timestamp":"2026-11-29T01:02:03.000Z"}`,
		`{"messageId":"m-2","userId":"u-1","event":"Upgraded","properties":{"plan":"<pro>"},"timestamp":"2026-11-29T01:02:04.000Z"}`,
	} {
		if _, err := js.Publish(context.Background(), "cio.track", []byte(body)); err != nil {
			panic(err)
		}
	}

	sender := printSender{sent: make(chan struct{}, 1)}
	w, err := worker.New(js, sender, worker.Options{ManageStreams: true, FlushInterval: 50 * time.Millisecond, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	<-sender.sent

	stop() // what SIGTERM does in cio-relay run
	fmt.Println("Run returned:", <-done)
	// Output:
	// {"batch":[{"type":"track","messageId":"m-1","userId":"u-1","event":"Signed Up","timestamp":"2026-11-29T01:02:03.000Z"},{"type":"track","messageId":"m-2","userId":"u-1","event":"Upgraded","properties":{"plan":"<pro>"},"timestamp":"2026-11-29T01:02:04.000Z"}]}
	// Run returned: <nil>
}
