// Package publish puts Segment-style calls on the queue cio-relay delivers
// to Customer.io, validated the way the worker will validate them.
//
// # Model
//
// A call is a JSON object: identify, track, page, screen, group or alias,
// with camelCase fields (see package event). It is published on
// cio.<type>, the subject the worker reads that type from. A [Publisher]
// checks each call with the worker's own rules ([event.Preparer]) before it
// is published, so a call the worker would reject fails at the caller, with
// an [*event.InvalidError] naming the reason, instead of ending up in the
// dead-letter stream. What is published is the call's wire form: compacted,
// with "type" and "messageId" added when absent, nothing else changed.
//
// Every call carries a messageId: its own, or one the Publisher makes (a
// random prefix per Publisher and a counter). The same id goes in the
// Nats-Msg-Id header, so JetStream drops a call published twice within the
// stream's duplicate window (a retry after a lost PubAck), and Customer.io
// drops one delivered twice.
//
// Publishing is asynchronous: Publish returns once the call is sent, and at
// most [Options.MaxPending] calls wait for their PubAck at once; Publish
// waits for the oldest when that many do. [Publisher.Wait] waits for every
// PubAck and returns the first failure.
//
// # Leader elections
//
// On a JetStream cluster a stream's leader can change under a publisher: a
// node is drained or dies, a leader steps down. Calls caught in between get
// no PubAck, "no responders", or a not-leader answer; the PubAck of a call
// the old leader stored can be lost with it. Such a call ([Retryable]) is
// sent again, unchanged and with the same Nats-Msg-Id, with backoff, for up
// to [Options.RetryMaxElapsed]: the new leader stores it, or drops it as a
// duplicate if the old one had (counted in [Stats].Duplicates). Nothing is
// lost and nothing stored twice, as long as the retries end within the
// stream's duplicate window. A call still not stored then fails, reported
// by Wait and [Options.OnFailure].
//
//	js, _ := jetstream.New(nc)
//	p, err := publish.New(js, publish.Options{Stream: "CIO"})
//	if err != nil {
//		return err
//	}
//	id, err := p.Publish(ctx, []byte(`{"type":"track","userId":"u-1","event":"Signed Up"}`))
//	if err != nil {
//		return err // an *event.InvalidError says why the call is invalid
//	}
//	return p.Wait(ctx) // every call stored, or the first failure
package publish
