// Package dlqcli is the logic of "cio-relay dlq": it lists, shows, counts,
// replays, purges and resolves the messages of the dead-letter stream (CIO_DLQ, whose
// message format package deadletter defines).
//
// # Model
//
// A command reads the dead-letter stream as a walk: an ephemeral consumer
// (no acks, in memory, removed at the end) fetched a batch at a time, so a
// stream of 100k messages is never held in memory at once. The walk filters
// by original subject on the server (cio.track is read as dlq.cio.track) and
// by reason and time on the client, and it ends at the stream's last
// sequence when it began: a message that a replay sends back and the worker
// dead-letters again is not met twice in one run.
//
// A replay first decides what not to replay: validation failures (the
// same bytes would fail the same way), calls replayed --max-replays times
// already, and dead letters written without their body whose original is
// gone; each is kept and said why, --force overriding the first two. The
// rest it hands to [deadletter.Replayer], which owns the protocol: a replay
// intent, the publish and its PubAck, the delete, so that a replay stopped
// anywhere and run again, however much later, publishes nothing twice; a
// cancelled replay finishes the message in hand before it stops. Replay
// intents live in the dead-letter stream and no command lists, counts or
// purges them.
//
// An ambiguous broadcast trigger (its request may have reached Customer.io)
// is not replayed unchecked: replay asks first on a terminal and keeps it
// otherwise. Resolve checks it instead: it reads the broadcast's triggers
// from Customer.io's App API ([TriggerLister]) and takes one created from
// [ClockSkew] before the request (Cio-Relay-Requested-At) to the window
// after it as the request's: probably delivered, so purge; none, so safe
// to replay. It acts on each as confirmed (a terminal's answer, or --yes).
//
// The command line is parsed by [Parse], which hands the flags it does not
// know back to the caller for the connection settings, and run by
// [Command.Run] against an [Env]: a JetStream client and the writers and
// reader to use, so the whole command can be tested against a real server.
package dlqcli
