// Package worker owns cio-relay's side of JetStream: it binds the stream and
// durable consumer, pulls messages, turns each into a CDP call, hands calls
// to the batcher, sends closed batches through a Sender and settles every
// message (ack, nak or term) by the outcome of the batch it travelled in.
//
// The pipeline, one goroutine per stage:
//
//	intake ──queue──▶ reader ──calls──▶ batcher ──batches──▶ dispatcher ──▶ N senders
//
// The intake pulls (Fetch) only when its bounded queue has room for a whole
// pull, and leases each message the moment it arrives; every other channel
// is unbuffered and the dispatcher runs at most N sends at once, so a slow
// Customer.io stops the reader and then the pulling, and nothing the
// process has received waits un-leased in a client buffer. Direct calls
// (triggers, suppressions) have an intake of their own per consumer.
//
// A message is acked only after the batch it is in got a 2xx. From the moment
// the intake receives a message until it is settled, the lease keeper extends
// its ack deadline (InProgress) every third of the consumer's ack wait, as
// sampled from the server, so that it is not redelivered while it waits in
// the queue, in a batch or in flight.
package worker
