package publish_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/publish"
)

func Example() {
	ctx := context.Background()
	js, stop := jetStreamForExample()
	defer stop()

	p, err := publish.New(js, publish.Options{Stream: "CIO"})
	if err != nil {
		log.Fatal(err)
	}
	id, err := p.Publish(ctx, []byte(`{"type":"track","userId":"u-1","event":"Signed Up","messageId":"m-1"}`))
	fmt.Println(id, err)
	_, err = p.Publish(ctx, []byte(`{"type":"track","event":"Signed Up"}`))
	fmt.Println(err)
	if err := p.Wait(ctx); err != nil { // every PubAck, or the first failure
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", p.Stats())
	// Output:
	// m-1 <nil>
	// invalid call (missing_user): track needs userId or anonymousId
	// {Published:1 Duplicates:0 Failed:0 Retries:0 Bytes:69}
}

// jetStreamForExample runs an in-process JetStream server with cio-relay's
// stream, as the worker creates it; an application connects to its own.
func jetStreamForExample() (jetstream.JetStream, func()) {
	dir, err := os.MkdirTemp("", "publish-example")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
	if err != nil {
		log.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server did not start")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "CIO", Subjects: []string{"cio.>"}, Duplicates: 2 * time.Minute}); err != nil {
		log.Fatal(err)
	}
	return js, func() {
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
		os.RemoveAll(dir)
	}
}
