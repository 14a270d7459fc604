package config

import (
	"fmt"
	"strings"
)

// check applies the rules that tie settings together. given holds the
// variables set by flag or environment, bad those rejected on their own: a
// rule involving a rejected variable is skipped, as its problem is already
// reported and the default standing in for it would mislead.
func (c *Config) check(vars []variable, given, bad map[string]bool) []error {
	var errs []error
	ok := func(names ...string) bool {
		for _, n := range names {
			if bad[n] {
				return false
			}
		}
		return true
	}
	together := func(a, b string) {
		if given[a] != given[b] {
			set, unset := a, b
			if given[b] {
				set, unset = b, a
			}
			errs = append(errs, fmt.Errorf("%s: must be set together with %s, which is unset", set, unset))
		}
	}

	// NATS. "Set" here means given, even if rejected: the problem is the
	// combination, whatever the values.
	together("NATS_USER", "NATS_PASSWORD")
	together("NATS_CERT", "NATS_KEY")
	var auth []string
	for _, m := range []struct {
		name string
		set  bool
	}{
		{"NATS_CREDS", given["NATS_CREDS"]},
		{"NATS_NKEY", given["NATS_NKEY"]},
		{"NATS_USER/NATS_PASSWORD", given["NATS_USER"] || given["NATS_PASSWORD"]},
		{"NATS_TOKEN", given["NATS_TOKEN"]},
	} {
		if m.set {
			auth = append(auth, m.name)
		}
	}
	if len(auth) > 1 {
		errs = append(errs, fmt.Errorf("%s: set at most one NATS authentication method (NATS_CREDS, NATS_NKEY, NATS_USER with NATS_PASSWORD, or NATS_TOKEN), got %d",
			strings.Join(auth, ", "), len(auth)))
	}
	if !given["NATS_URL"] {
		var ignored []string
		for _, v := range vars {
			if strings.HasPrefix(v.name, "NATS_") && v.name != "NATS_URL" && given[v.name] {
				ignored = append(ignored, v.name)
			}
		}
		if len(ignored) > 0 {
			errs = append(errs, fmt.Errorf("%s: set while NATS_URL is unset: the embedded server would run and these settings be ignored; set NATS_URL, or unset them",
				strings.Join(ignored, ", ")))
		}
	}

	// The worker's own rules (the dead-letter stream differs from the
	// stream, the flush interval is at most half the ack wait, …), in
	// config's words.
	errs = append(errs, c.workerProblems(bad)...)

	// Queue.
	if ok("RELAY_STREAM_REPLICAS") && c.Queue.Replicas > 1 && !given["NATS_URL"] {
		errs = append(errs, fmt.Errorf("RELAY_STREAM_REPLICAS: must be 1 with the embedded server (NATS_URL unset), a single node; "+
			"more replicas need a JetStream cluster, got %d", c.Queue.Replicas))
	}
	if ok("RELAY_MAX_ACK_PENDING", "RELAY_BATCH_MAX_CALLS", "RELAY_SEND_CONCURRENCY") {
		need := c.Batch.MaxCalls * (c.Send.Concurrency + 1)
		if c.Queue.MaxAckPending < need {
			errs = append(errs, fmt.Errorf("RELAY_MAX_ACK_PENDING: must be at least RELAY_BATCH_MAX_CALLS × (RELAY_SEND_CONCURRENCY + 1) = %d × %d = %d, "+
				"as JetStream stops delivering at this many unacked events: with fewer, the batches in flight and the one filling cannot all be full, got %d",
				c.Batch.MaxCalls, c.Send.Concurrency+1, need, c.Queue.MaxAckPending))
		}
	}

	// Batching and sending.
	if ok("RELAY_RETRY_INITIAL_INTERVAL", "RELAY_RETRY_MAX_INTERVAL") && c.Send.RetryInitialInterval > c.Send.RetryMaxInterval {
		errs = append(errs, fmt.Errorf("RELAY_RETRY_INITIAL_INTERVAL: must be at most RELAY_RETRY_MAX_INTERVAL (%v), got %v",
			c.Send.RetryMaxInterval, c.Send.RetryInitialInterval))
	}

	// Customer.io.
	together("CIO_SITE_ID", "CIO_TRACK_API_KEY")
	return errs
}
