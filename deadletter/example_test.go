package deadletter_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
)

// ExampleReplayer dead-letters a call the way the worker does, then
// replays it: the call goes back to its subject with its messageId, its
// replay count and its original publish time, and the dead letter is
// deleted.
func ExampleReplayer() {
	ctx := context.Background()
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
	cio, _ := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CIO", Subjects: []string{"cio.>"}})
	dlq, _ := js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", time.Hour, -1))

	published := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	if _, err := deadletter.Write(ctx, js, "cio.track", nil, []byte(`{"userId":"u-1","event":"Paid"}`), deadletter.Record{
		Reason: deadletter.ReasonRetriesExhausted, Stream: "CIO", StreamSeq: 7, FirstSeen: published, MessageID: "m-1",
	}); err != nil {
		panic(err)
	}

	stored, _ := dlq.GetMsg(ctx, 1)
	l := deadletter.LetterOf(stored)
	r, err := deadletter.NewReplayer(ctx, js, dlq, "CIO")
	if err != nil {
		panic(err)
	}
	res, err := r.Replay(ctx, l, false)
	if err != nil || res.Outcome != deadletter.Replayed {
		panic(fmt.Sprint(res, err))
	}

	replayed, _ := cio.GetLastMsgForSubject(ctx, "cio.track")
	fmt.Println(string(replayed.Data))
	for _, h := range []string{deadletter.HeaderMessageID, deadletter.HeaderReplays, deadletter.HeaderPublished} {
		fmt.Printf("%s: %s\n", h, replayed.Header.Get(h))
	}
	info, _ := dlq.Info(ctx)
	fmt.Println("left in CIO_DLQ:", info.State.Msgs)
	// Output:
	// {"userId":"u-1","event":"Paid"}
	// Cio-Relay-Message-Id: m-1
	// Cio-Relay-Replays: 1
	// Cio-Relay-Published: 2026-06-01T12:00:00Z
	// left in CIO_DLQ: 0
}
