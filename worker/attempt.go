package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/cio-relay/cio-relay/sink"
)

// retrier is the delivery stage's request loop: one request, tried again
// on a transient failure with backoff and Retry-After, held on while
// Customer.io refuses the configuration. Every API's requests go through
// it (batches, triggers, Track calls); what it returns is then settled by
// decide. Time is the runtime's, so its tests run in virtual time
// (testing/synctest).
type retrier struct {
	initial, maxInterval, maxElapsed time.Duration // the backoff (Options.Retry*)
	noRetry                          bool          // Options.NoRetry
	probe                            time.Duration // Options.ProbeInterval
	log                              *slog.Logger
	m                                *metrics
}

func newRetrier(o Options, log *slog.Logger, m *metrics) *retrier {
	return &retrier{initial: o.RetryInitial, maxInterval: o.RetryMaxInterval, maxElapsed: o.RetryMaxElapsed,
		noRetry: o.NoRetry, probe: o.ProbeInterval, log: log, m: m}
}

// attempt calls try until it succeeds, is rejected, is cancelled or has
// used its retry budget, and returns its last error:
//
//   - 429, 408, 5xx, no answer: try again with exponential backoff and
//     jitter, waiting at least Retry-After and at least minWait (an API's own
//     pacing); the last error is returned once RetryMaxElapsed is spent, or
//     at once when stop says that error must not be retried.
//   - 401, 403, 404, 405, 3xx: a configuration problem, not bad data: hold on,
//     pause (see pauseState) and probe every ProbeInterval until it passes.
//
// Every request's duration and status class is recorded under api.
func (w *retrier) attempt(ctx context.Context, api sink.API, pause *pauseState, minWait time.Duration, stop func(error) bool, try func(context.Context) error) error {
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(w.initial),
		backoff.WithMaxInterval(w.maxInterval),
		backoff.WithMaxElapsedTime(max(w.maxElapsed, 0)),
		backoff.WithRandomizationFactor(0.5),
	)
	paused := false
	defer func() {
		if paused {
			pause.leave()
		}
	}()
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", errGaveUpBetweenTries, context.Cause(ctx))
		}
		start := time.Now()
		err := try(ctx)
		w.observe(api, start, err)
		class := sink.Classify(err)
		if paused && class != sink.Pause {
			paused = false
			pause.leave()
		}
		var wait time.Duration
		switch class {
		case sink.Pause:
			if !paused {
				paused = true
				pause.enter(err)
			}
			if api == sink.APICDP {
				w.m.batches.WithLabelValues("paused").Inc()
			}
			wait = max(w.probe, minWait)
		case sink.Retry:
			if stop != nil && stop(err) {
				return err
			}
			wait = bo.NextBackOff()
			var se *sink.StatusError
			if errors.As(err, &se) && se.RetryAfter > 0 && wait != backoff.Stop {
				if se.RetryAfter > bo.MaxElapsedTime-bo.GetElapsedTime() {
					wait = backoff.Stop // honouring it would overrun the budget
				} else {
					wait = max(wait, se.RetryAfter)
				}
			}
			if w.noRetry || wait == backoff.Stop {
				return err
			}
			wait = max(wait, minWait)
			w.m.retries.WithLabelValues(retryReason(err)).Inc()
			if api == sink.APICDP {
				w.m.batches.WithLabelValues("retried").Inc()
			}
			w.log.Warn("request failed; retrying", "api", string(api), "err", err, "wait", wait.String())
		default:
			return err
		}
		if !sleep(ctx, wait) {
			return fmt.Errorf("%w: %w", errGaveUpBetweenTries, context.Cause(ctx))
		}
	}
}

// errGaveUpBetweenTries marks a shutdown that came while attempt waited
// between two requests: unlike one that cut a request off, nothing can have
// reached Customer.io since the last answer.
var errGaveUpBetweenTries = errors.New("shutdown between retries")

// observe records one request's duration and status class.
func (w *retrier) observe(api sink.API, start time.Time, err error) {
	class := "2xx"
	if err != nil {
		class = "error"
		if s := sink.StatusOf(err); s != 0 {
			class = strconv.Itoa(s/100) + "xx"
		}
	}
	w.m.requestTime.WithLabelValues(string(api), class).Observe(time.Since(start).Seconds())
}

func retryReason(err error) string {
	switch s := sink.StatusOf(err); {
	case s == 429:
		return "status_429"
	case s == 408:
		return "status_408"
	case s >= 500:
		return "status_5xx"
	}
	return "transport"
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
