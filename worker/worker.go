package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
)

// Sender delivers one CDP batch body. A nil error means Customer.io accepted
// it (2xx).
type Sender interface {
	SendBatch(ctx context.Context, body []byte) error
}

// Options configures a Worker. Zero values take the defaults noted.
type Options struct {
	Stream          string        // stream name; default "CIO"
	Consumer        string        // durable consumer name; default "cio-relay"
	ManageStreams   bool          // create/update the stream and consumer at start
	AckWait         time.Duration // default 30s
	MaxAckPending   int           // default 20000
	BatchMaxBytes   int           // default and maximum batcher.MaxBatchBytes
	BatchMaxCalls   int           // default 2000
	FlushInterval   time.Duration // default 1s
	SendConcurrency int           // batches in flight at once; default 4
	NakDelay        time.Duration // redelivery delay after a failed send; default 30s
	ShutdownTimeout time.Duration // time to finish in-flight sends after ctx is done; default 25s
	Logger          *slog.Logger  // default: discard
}

func (o *Options) setDefaults() {
	if o.Stream == "" {
		o.Stream = "CIO"
	}
	if o.Consumer == "" {
		o.Consumer = "cio-relay"
	}
	if o.AckWait == 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = 20000
	}
	if o.BatchMaxBytes == 0 {
		o.BatchMaxBytes = batcher.MaxBatchBytes
	}
	if o.BatchMaxCalls == 0 {
		o.BatchMaxCalls = 2000
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = time.Second
	}
	if o.SendConcurrency == 0 {
		o.SendConcurrency = 4
	}
	if o.NakDelay == 0 {
		o.NakDelay = 30 * time.Second
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = 25 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func (o *Options) validate() error {
	var errs []error
	if strings.ContainsAny(o.Stream, "\"\\ \t\r\n.*>") {
		errs = append(errs, fmt.Errorf("stream name %q contains a character JetStream or a messageId cannot carry", o.Stream))
	}
	if o.FlushInterval > o.AckWait/2 {
		errs = append(errs, fmt.Errorf("flush interval %v must be at most half the ack wait %v", o.FlushInterval, o.AckWait))
	}
	if o.SendConcurrency < 1 {
		errs = append(errs, fmt.Errorf("send concurrency %d must be at least 1", o.SendConcurrency))
	}
	if o.AckWait < 3*time.Millisecond {
		errs = append(errs, fmt.Errorf("ack wait %v too short", o.AckWait))
	}
	return errors.Join(errs...)
}

// Worker consumes calls from JetStream and delivers them in batches.
type Worker struct {
	js     jetstream.JetStream
	sender Sender
	opts   Options
	log    *slog.Logger
}

// New returns a Worker; it does not touch JetStream until Run.
func New(js jetstream.JetStream, sender Sender, opts Options) (*Worker, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	if _, err := batcher.NewPacker[jetstream.Msg](opts.BatchMaxBytes, opts.BatchMaxCalls); err != nil {
		return nil, fmt.Errorf("worker options: %w", err)
	}
	return &Worker{js: js, sender: sender, opts: opts, log: opts.Logger}, nil
}

// Run binds the consumer and delivers until ctx is done. Then it stops
// pulling, flushes the open batch and lets in-flight sends finish for up to
// ShutdownTimeout; whatever is not delivered by then is nakked so another
// replica takes it at once. Run returns nil after a clean shutdown.
func (w *Worker) Run(ctx context.Context) error {
	cons, idPrefix, err := w.bind(ctx)
	if err != nil {
		return err
	}
	b, err := batcher.New[jetstream.Msg](w.opts.BatchMaxBytes, w.opts.BatchMaxCalls, w.opts.FlushInterval)
	if err != nil {
		return err
	}
	// Pull about one batch's worth ahead: enough to keep the batcher busy,
	// little enough that messages waiting in the client's buffer do not
	// outlive their ack deadline when Customer.io slows down.
	iter, err := cons.Messages(jetstream.PullMaxMessages(min(w.opts.BatchMaxCalls, 1000, w.opts.MaxAckPending)))
	if err != nil {
		return fmt.Errorf("consuming from %s/%s: %w", w.opts.Stream, w.opts.Consumer, err)
	}
	w.log.Info("consuming", "stream", w.opts.Stream, "consumer", w.opts.Consumer,
		"batch_max_bytes", w.opts.BatchMaxBytes, "batch_max_calls", w.opts.BatchMaxCalls,
		"flush_interval", w.opts.FlushInterval.String(), "send_concurrency", w.opts.SendConcurrency)

	// sendCtx outlives ctx by ShutdownTimeout so in-flight batches can finish.
	sendCtx, cancelSend := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSend()
	leaseCtx, stopLeases := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLeases()

	held := newLeases[jetstream.Msg]()
	calls := make(chan batcher.Call[jetstream.Msg])
	batches := make(chan *batcher.Batch[jetstream.Msg])

	var wg sync.WaitGroup
	wg.Go(func() {
		held.run(leaseCtx, w.opts.AckWait/3, func(err error) {
			w.log.Warn("extending ack deadline failed", "err", err)
		})
	})
	stopped := make(chan struct{})
	wg.Go(func() {
		select {
		case <-ctx.Done():
			// Drain: stop pulling but hand out what is already buffered,
			// so it is delivered or nakked rather than left to time out.
			iter.Drain()
			timer := time.NewTimer(w.opts.ShutdownTimeout)
			defer timer.Stop()
			select {
			case <-timer.C:
				w.log.Warn("shutdown timeout reached; nakking what is left", "timeout", w.opts.ShutdownTimeout)
				cancelSend()
			case <-stopped:
			}
		case <-stopped:
		}
	})

	var pipe sync.WaitGroup
	pipe.Go(func() {
		defer close(calls)
		w.read(iter, idPrefix, held, calls)
	})
	pipe.Go(func() {
		defer close(batches)
		// The batcher's context is never cancelled: it ends when the reader
		// closes calls, and its last batch reaches a sender, which nakks it
		// at once if the shutdown timeout has passed.
		_ = b.Run(context.Background(), calls, batches, func(c batcher.Call[jetstream.Msg], err error) {
			w.settleInvalid(c.Item, event.ReasonTooLarge, err.Error(), held)
		})
	})
	pipe.Go(func() { w.dispatch(sendCtx, batches, held) })
	pipe.Wait()

	close(stopped)
	stopLeases()
	wg.Wait()
	if ctx.Err() != nil {
		w.log.Info("stopped", "reason", context.Cause(ctx))
		return nil
	}
	return errors.New("message iterator closed unexpectedly")
}

// read pulls messages until the iterator is closed and sends each valid call
// on calls; invalid ones are settled at once.
func (w *Worker) read(iter jetstream.MessagesContext, idPrefix string, held *leases[jetstream.Msg], calls chan<- batcher.Call[jetstream.Msg]) {
	var prep event.Preparer
	for {
		msg, err := iter.Next()
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				w.log.Error("pulling messages", "err", err)
			}
			return
		}
		held.add(msg, time.Now())
		meta, err := msg.Metadata()
		if err != nil {
			// Not a JetStream message: nothing to derive an id from, and
			// nothing to ack either.
			w.log.Error("message without JetStream metadata", "subject", msg.Subject(), "err", err)
			held.remove(msg)
			continue
		}
		call, err := prep.Prepare(nil, event.TypeOfSubject(msg.Subject()), msg.Data(), event.ID{Prefix: idPrefix, Seq: meta.Sequence.Stream})
		if err != nil {
			var ie *event.InvalidError
			reason := event.ReasonInvalidJSON
			if errors.As(err, &ie) {
				reason = ie.Reason
			}
			w.settleInvalid(msg, reason, err.Error(), held)
			continue
		}
		calls <- batcher.Call[jetstream.Msg]{Data: call, Item: msg}
	}
}

// settleInvalid gives up on a message that can never be delivered.
func (w *Worker) settleInvalid(msg jetstream.Msg, reason event.Reason, detail string, held *leases[jetstream.Msg]) {
	defer held.remove(msg)
	w.log.Warn("invalid call terminated", "subject", msg.Subject(), "reason", string(reason), "detail", detail)
	if err := msg.TermWithReason(string(reason)); err != nil {
		w.log.Error("terminating invalid message", "subject", msg.Subject(), "err", err)
	}
}

// dispatch runs up to SendConcurrency deliveries at once. While all are busy
// it does not receive, which stops the batcher and, through it, the reader.
func (w *Worker) dispatch(ctx context.Context, batches <-chan *batcher.Batch[jetstream.Msg], held *leases[jetstream.Msg]) {
	sem := make(chan struct{}, w.opts.SendConcurrency)
	var wg sync.WaitGroup
	for batch := range batches {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			w.deliver(ctx, batch, held)
		})
	}
	wg.Wait()
}

// deliver sends one batch and settles its messages by the outcome.
func (w *Worker) deliver(ctx context.Context, batch *batcher.Batch[jetstream.Msg], held *leases[jetstream.Msg]) {
	defer held.remove(batch.Items...)
	start := time.Now()
	err := w.sender.SendBatch(ctx, batch.Body())
	if err != nil {
		w.log.Warn("batch not delivered; nakking for redelivery", "calls", batch.Len(), "bytes", len(batch.Body()),
			"err", err, "nak_delay", w.opts.NakDelay)
		for _, m := range batch.Items {
			if err := m.NakWithDelay(w.opts.NakDelay); err != nil {
				w.log.Error("nak failed; message will be redelivered after its ack wait", "err", err)
			}
		}
		return
	}
	for _, m := range batch.Items {
		if err := m.Ack(); err != nil {
			w.log.Error("ack failed; message will be redelivered and de-duplicated by messageId", "err", err)
		}
	}
	w.log.Debug("batch delivered", "calls", batch.Len(), "bytes", len(batch.Body()), "took", time.Since(start))
}
