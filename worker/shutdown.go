package worker

import (
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// A worker stops in two phases.
//
// Drain begins when Run's context is done (SIGTERM) or a consumer fails:
// the intakes stop pulling (an open pull gets stopGrace to hand over what
// the server already sent), everything received goes on through the
// pipeline, the batcher flushes its open batch and in-flight requests,
// retries and pauses go on. A replica being replaced delivers what it
// holds rather than leaving it to wait out its ack wait on the server.
//
// Hard stop comes when the drain has taken ShutdownTimeout: the send
// context is cancelled, which cuts requests off and ends retries, pauses
// and waits for a broadcast's turn; every message not delivered is then
// nakked at once (sink.Cancelled, see decide) so another replica takes it
// now. A trigger whose request was cut off in flight may have been sent,
// and is dead-lettered as ambiguous instead.
//
// Last, acks, naks and terms, which are buffered publishes, are flushed for
// up to settleFlushTimeout.
const (
	// settleFlushTimeout bounds the wait for the server to have every
	// settlement before the process goes away. With the default
	// ShutdownTimeout (25s) it keeps a whole stop within Kubernetes'
	// default 30s grace period; a settlement not flushed by then is lost
	// with the connection, and its message redelivered after its ack wait.
	settleFlushTimeout = 5 * time.Second
)

// shutdown is the timer between the two phases of a stop.
type shutdown struct {
	timeout  time.Duration // ShutdownTimeout: the longest drain
	hardStop func()        // cancels the send context
	log      *slog.Logger
}

// watch waits for the drain to begin (stop closed) and then for the
// pipeline to finish (drained closed); onDrain runs as the drain begins.
// If the pipeline is not done within the timeout it calls hardStop. It
// returns once the pipeline is done, or at once if it is done before any
// stop.
func (s shutdown) watch(stop, drained <-chan struct{}, onDrain func()) {
	select {
	case <-stop:
	case <-drained:
		return
	}
	onDrain()
	timer := time.NewTimer(s.timeout)
	defer timer.Stop()
	select {
	case <-timer.C:
		s.log.Warn("shutdown timeout reached; nakking what is left", "timeout", s.timeout.String())
		s.hardStop()
	case <-drained:
	}
}

// flushSettlements makes sure the server has the acks, naks and terms sent
// on nc before the process goes away.
func flushSettlements(nc *nats.Conn, log *slog.Logger) {
	if nc == nil || !nc.IsConnected() {
		return
	}
	if err := nc.FlushTimeout(settleFlushTimeout); err != nil {
		log.Warn("flushing acks at shutdown", "err", err)
	}
}
