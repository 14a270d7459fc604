// Package worker owns cio-relay's side of JetStream: it binds the stream and
// durable consumer, pulls messages, turns each into a CDP call, hands calls
// to the batcher, sends closed batches through a Sender and settles every
// message (ack, nak or term) by the outcome of the batch it travelled in.
//
// The pipeline, one goroutine per stage:
//
//	             ┌──────────── leases (InProgress every ⅓ ack wait) ───────────┐
//	JetStream ─▶ intake ─queue─▶ read/prepare ─calls─▶ batcher ─batches─▶ dispatch ─▶ N × deliver
//	   ▲                               │                                          │ attempt (retry, pause)
//	   │                               └─▶ ordered lanes (Options.Ordering) ──────┤
//	   │         intake ─queue─▶ runDirect ─▶ pace ─▶ sendTrigger (turns, marks)  │
//	   │                                   └─▶ N × trackRunner ───────────────────┤
//	   └──────── ack / nak / nak with delay / term ◀── settleCalls ◀── decide ◀───┘
//	                                                       └─▶ dead-letter stream
//
// The intake pulls (Fetch) only when its bounded queue has room for a whole
// pull, and leases each message the moment it arrives; every other channel
// is unbuffered and the dispatcher runs at most N sends at once, so a slow
// Customer.io stops the reader and then the pulling, and nothing the
// process has received waits un-leased in a client buffer. Direct calls
// (triggers, suppressions) have an intake of their own per consumer.
//
// Where each stage lives:
//
//	worker.go     Worker, New, Ready; held, one message in the worker's hands
//	options.go    Options, their Default* constants and Validate
//	run.go        Run: binds, wires the stages, waits for them
//	shutdown.go   the two phases of a stop (drain, hard stop) and the final flush
//	stream.go     stream, consumer and dead-letter stream setup (bind)
//	pinned.go     a priority group on the batch consumer (an earlier version's pin)
//	intake.go     intake: pulls into a bounded queue, leases on arrival
//	prepare.go    hold (metadata, lease), read (prepare a call, hand calls on in slices), rejectInput
//	slab.go       slabs: the buffers calls are prepared into, reused once their calls are settled
//	lease.go      leases: extends the ack deadline of everything held
//	sample.go     consumer gauges and the lease interval, from the server
//	dispatch.go   dispatch: up to SendConcurrency batches in flight
//	deliver.go    deliver: one batch, its bisect on 4xx and 5xx split
//	attempt.go    retrier: one request with retries, backoff, Retry-After, pause
//	pause.go      pauseState: delivery paused on a configuration error
//	decide.go     decide: the settlement policy, a pure function
//	settle.go     settler: applies decide's answer (ack, nak, dead-letter)
//	deadletter.go writing a dead letter, then terminating the original
//	direct.go     runDirect: a direct consumer's reader, feeding its runner
//	broadcast.go  triggerRunner: pacing and sending triggers, never twice
//	sentmark.go   the trigger markers (KV) that make a trigger once-only
//	turns.go      turns: one trigger request per broadcast across replicas
//	turn.go       turn: one turn held, and its KV value
//	turnskv.go    the turns' KV bucket and metrics
//	track.go      trackRunner: one Track API call (suppression, unsubscribe, metric)
//	trackcalls.go the Track API consumers, and why two of them are ordered
//	ordered.go    the ordered batch path: the gate, routing calls to lanes by key
//	holder.go     the delivery lease: one replica at a time sends and acks ordered calls
//	epoch.go      taking, keeping and letting go of the lease; what an epoch allows
//	barrier.go    the takeover barrier: open once no other replica holds a call
//	lane.go       a lane: one batch at a time, due when full, old or drained
//	order.go      keyOrder: a key's calls wait behind its nakked call
//	ackpending.go reading numbers from an ack subject without allocating
//	health.go     whether JetStream answers, for Ready
//	metrics.go    the worker's Prometheus metrics
//
// A message is acked only after the batch it is in got a 2xx. From the moment
// the intake receives a message until it is settled, the lease keeper extends
// its ack deadline (InProgress) every third of the consumer's ack wait, as
// sampled from the server, so that it is not redelivered while it waits in
// the queue, in a batch or in flight.
//
// # Per-person ordering (Options.Ordering)
//
// With ordering, each person's calls (key: userId, else anonymousId) are
// first accepted by Customer.io in stream order, and the pipeline is
//
//	intake ──queue──▶ reader ──▶ gate ──▶ key policy ──▶ N lanes (one batch in flight each)
//
// One replica delivers: the one that holds the delivery lease (holder.go,
// a KV key with a server-kept TTL), in epochs (epoch.go): only it pulls,
// sends ordered batches (each request cut off before the lease could run
// out) and acks them (only while the lease is valid). The consumer needs
// no priority policy; one an earlier version pinned (pinned_client, group
// PriorityGroup) keeps it, the intake pulls with the group at least every
// orderedPullExpiry so the pin is kept, and a pin change ends the epoch
// (see checkPinned). At the start of an epoch the
// replica holds everything in the gate until the consumer's NumAckPending
// is no more than what it received itself, so nothing another replica
// received or nakked can be overtaken, then routes what it holds in stream
// order; it counts only what it received in this epoch, in which no other
// replica acks, so the count is exact. An epoch ends when the replica
// loses the pin (a 423, or consumer info naming another pin), reconnects
// to NATS, cannot renew the lease, or stops: it naks all it holds that is
// not in flight, in stream order, and the rest of a batch in flight (the
// halves of a bisect not yet sent) once its request is done, then lets the
// lease go once its requests, its open pull and its acks are done.
//
// Calls go to lane KeyHash % SendConcurrency; a lane keeps its queue in
// stream order (a nakked call that comes back goes before its key's later
// calls) and packs and sends one batch at a time, so a key's calls go in
// order while other keys' lanes go on. When calls are nakked their keys are blocked by those sequences
// (keyOrder): later calls of the key wait, leased, until the blocker is
// redelivered (or the consumer's ack floor passes it: another delivery of
// it was accepted), and are released behind it in sequence order; eligibility
// is checked again at send time (deliver), for the halves of a bisect and
// for calls queued before the block. A dead-lettered call blocks nothing.
// What is held counts against the consumer's MaxAckPending, which bounds
// it.
package worker
