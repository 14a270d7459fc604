// Package worker owns cio-relay's side of JetStream: it binds the stream and
// durable consumer, pulls messages, turns each into a CDP call, hands calls
// to the batcher, sends closed batches through a Sender and settles every
// message (ack, nak or term) by the outcome of the batch it travelled in.
//
// The pipeline, one goroutine per stage:
//
//	reader ──calls──▶ batcher ──batches──▶ dispatcher ──▶ N senders
//
// Every channel is unbuffered and the dispatcher runs at most N sends at
// once, so a slow Customer.io stops the reader, and JetStream's
// MaxAckPending bounds what is held in memory.
//
// A message is acked only after the batch it is in got a 2xx. From the moment
// the reader receives a message until it is settled, the lease keeper extends
// its ack deadline (InProgress) so that it is not redelivered while it waits
// in a batch or in flight.
package worker
