package config

import (
	"errors"
	"fmt"

	"github.com/cio-relay/cio-relay/worker"
)

// Worker returns the worker's options these settings make. The fields that
// are not settings (the direct-call clients, logger, registerer, version)
// are the caller's to fill in.
func (c *Config) Worker() worker.Options {
	return worker.Options{
		Stream:           c.Queue.Stream,
		Consumer:         c.Queue.Consumer,
		DLQStream:        c.Queue.DLQStream,
		DLQMaxAge:        c.Queue.DLQMaxAge,
		StreamReplicas:   c.Queue.Replicas,
		ManageStreams:    c.Queue.ManageStreams,
		AckWait:          c.Queue.AckWait,
		MaxAckPending:    c.Queue.MaxAckPending,
		MaxDeliver:       c.Queue.MaxDeliver,
		NakDelay:         c.Queue.NakDelay,
		BatchMaxBytes:    c.Batch.MaxBytes,
		BatchMaxCalls:    c.Batch.MaxCalls,
		FlushInterval:    c.Batch.FlushInterval,
		SendConcurrency:  c.Send.Concurrency,
		Ordering:         c.Send.Ordering,
		RetryInitial:     c.Send.RetryInitialInterval,
		RetryMaxInterval: c.Send.RetryMaxInterval,
		RetryMaxElapsed:  c.Send.RetryMaxElapsed,
		// RELAY_RETRY_MAX_ELAPSED=0 means no retry to an operator; to the
		// worker a zero duration means its default.
		NoRetry:         c.Send.RetryMaxElapsed == 0,
		TriggerTimeout:  c.Send.HTTPTimeout,
		ShutdownTimeout: c.Ops.ShutdownTimeout,
	}
}

// workerVariables maps each worker.Options field that Worker sets to the
// variable that sets it, so that a worker.OptionError names the variable.
var workerVariables = map[string]string{
	"Stream":           "RELAY_STREAM",
	"Consumer":         "RELAY_CONSUMER",
	"DLQStream":        "RELAY_DLQ_STREAM",
	"DLQMaxAge":        "RELAY_DLQ_MAX_AGE",
	"StreamReplicas":   "RELAY_STREAM_REPLICAS",
	"ManageStreams":    "RELAY_MANAGE_STREAMS",
	"AckWait":          "RELAY_ACK_WAIT",
	"MaxAckPending":    "RELAY_MAX_ACK_PENDING",
	"MaxDeliver":       "RELAY_MAX_DELIVER",
	"NakDelay":         "RELAY_NAK_DELAY",
	"BatchMaxBytes":    "RELAY_BATCH_MAX_BYTES",
	"BatchMaxCalls":    "RELAY_BATCH_MAX_CALLS",
	"FlushInterval":    "RELAY_FLUSH_INTERVAL",
	"SendConcurrency":  "RELAY_SEND_CONCURRENCY",
	"Ordering":         "RELAY_ORDERING",
	"RetryInitial":     "RELAY_RETRY_INITIAL_INTERVAL",
	"RetryMaxInterval": "RELAY_RETRY_MAX_INTERVAL",
	"RetryMaxElapsed":  "RELAY_RETRY_MAX_ELAPSED",
	"NoRetry":          "RELAY_RETRY_MAX_ELAPSED",
	"TriggerTimeout":   "RELAY_HTTP_TIMEOUT",
	"ShutdownTimeout":  "RELAY_SHUTDOWN_TIMEOUT",
}

// workerProblems checks the settings with the worker's own rules
// ([worker.Options.Validate]) and words each problem for an operator,
// naming variables instead of fields. A problem involving a variable in bad
// is dropped: that variable's own error is already reported, and the
// default standing in for it would mislead.
func (c *Config) workerProblems(bad map[string]bool) []error {
	opts := c.Worker()
	return wordWorkerProblems(c, opts.Validate(), bad)
}

// wordWorkerProblems is workerProblems past the validation, apart so that
// its wording can be tested with any error.
func wordWorkerProblems(c *Config, err error, bad map[string]bool) []error {
	if err == nil {
		return nil
	}
	all := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		all = joined.Unwrap()
	}
	var errs []error
	for _, e := range all {
		var oe *worker.OptionError
		if !errors.As(e, &oe) {
			errs = append(errs, fmt.Errorf("worker options: %w", e))
			continue
		}
		name, ok := workerVariables[oe.Field]
		if !ok {
			// A field no setting sets has a default that breaks a rule: a
			// bug here, not a deployment's mistake, but said all the same.
			errs = append(errs, fmt.Errorf("worker option %w", oe))
			continue
		}
		if bad[name] || bad[workerVariables[oe.Other]] {
			continue
		}
		errs = append(errs, wordWorkerProblem(c, name, oe))
	}
	return errs
}

// wordWorkerProblem says what one worker rule means for the variables, in
// config's words where it has its own, in the worker's otherwise.
func wordWorkerProblem(c *Config, name string, oe *worker.OptionError) error {
	switch {
	case oe.Field == "DLQStream" && oe.Other == "Stream":
		return fmt.Errorf("RELAY_DLQ_STREAM: must differ from RELAY_STREAM, or dead letters would be delivered again, got %s for both",
			c.Queue.DLQStream)
	case oe.Field == "FlushInterval" && oe.Other == "AckWait":
		return fmt.Errorf("RELAY_FLUSH_INTERVAL: must be at most half of RELAY_ACK_WAIT (%v), or an event waiting in a partial batch could out-wait its ack deadline, got %v",
			c.Queue.AckWait/2, c.Batch.FlushInterval)
	}
	return fmt.Errorf("%s: %s", name, oe.Reason)
}
