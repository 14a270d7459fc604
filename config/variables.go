package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// variable is one setting: its environment variable, default, help, and
// the Config field it is parsed into. The table in [Config.variables] is the
// only place settings are listed.
type variable struct {
	section string            // heading in Usage; set by variables()
	name    string            // environment variable; the flag is flagName(name)
	def     string            // default, written as a user would; "" is unset
	byRegn  map[string]string // default by CIO_REGION, instead of def
	help    string            // for Usage
	value   value             // the field; nil for a secret
	secret  *Secret           // the field of a secret: read from NAME or NAME_FILE, never a flag
}

// regions are the Customer.io data centres, in Usage order.
var regions = []string{"us", "eu"}

// variables lists every setting, bound to c's fields, in the order Load
// reads them (CIO_REGION before the URLs whose defaults depend on it) and
// Usage and Redacted print them.
func (c *Config) variables() []variable {
	sections := []struct {
		title string
		vars  []variable
	}{
		{"NATS connection", []variable{
			{name: "NATS_URL", value: stringField(&c.NATS.URL, natsURLs).echoing(quoteURL),
				help: "Comma-separated nats://, tls://, ws:// or wss:// URLs of the NATS servers. " +
					"Unset: the worker runs an embedded in-process JetStream server (see below), " +
					"and the other NATS_ settings must be unset, as it would ignore them."},
			{name: "NATS_CREDS", value: stringField(&c.NATS.Creds, existingFile),
				help: "Path of a .creds file (user JWT and nkey seed)."},
			{name: "NATS_NKEY", value: stringField(&c.NATS.NKey, existingFile),
				help: "Path of an nkey seed file."},
			{name: "NATS_USER", value: stringField(&c.NATS.User, nil),
				help: "User name; needs NATS_PASSWORD."},
			{name: "NATS_PASSWORD", secret: &c.NATS.Password,
				help: "Password of NATS_USER. Use one of NATS_CREDS, NATS_NKEY, NATS_USER with NATS_PASSWORD, or NATS_TOKEN."},
			{name: "NATS_TOKEN", secret: &c.NATS.Token,
				help: "Authentication token."},
			{name: "NATS_CA", value: stringField(&c.NATS.CA, existingFile),
				help: "PEM file of the CAs that sign the servers' certificates. Unset: the system's roots."},
			{name: "NATS_CERT", value: stringField(&c.NATS.Cert, existingFile),
				help: "PEM client certificate for mutual TLS; needs NATS_KEY."},
			{name: "NATS_KEY", value: stringField(&c.NATS.Key, existingFile),
				help: "PEM private key of NATS_CERT."},
		}},
		{"Embedded NATS server (when NATS_URL is unset)", []variable{
			// Relative, so a developer's first run works from a checkout
			// (data/ is git-ignored); in a container, mount a volume.
			{name: "RELAY_DATA_DIR", def: "./data", value: stringField(&c.Embedded.DataDir, nil),
				help: "Directory of the embedded server's JetStream file store. Events wait here until delivered, " +
					"so keep it on a persistent volume."},
			// Loopback: the embedded server has no authentication.
			{name: "RELAY_EMBEDDED_LISTEN", def: "127.0.0.1:4222", value: stringField(&c.Embedded.Listen, hostPort),
				help: "host:port the embedded server accepts publishers on. It has no authentication, " +
					"hence loopback by default."},
		}},
		{"JetStream queue", []variable{
			{name: "RELAY_STREAM", def: worker.DefaultStream, value: stringField(&c.Queue.Stream, streamName),
				help: "Stream holding the events to deliver."},
			{name: "RELAY_CONSUMER", def: worker.DefaultConsumer, value: stringField(&c.Queue.Consumer, streamName),
				help: "Durable pull consumer of RELAY_STREAM, shared by all replicas of the worker."},
			{name: "RELAY_DLQ_STREAM", def: worker.DefaultDLQStream, value: stringField(&c.Queue.DLQStream, streamName),
				help: "Stream that receives events Customer.io rejected or that failed RELAY_MAX_DELIVER times; " +
					"must differ from RELAY_STREAM."},
			// Long enough to notice, investigate and replay after a holiday.
			{name: "RELAY_DLQ_MAX_AGE", def: durationDefault(worker.DefaultDLQMaxAge), value: durationField(&c.Queue.DLQMaxAge,
				atLeast(time.Hour, "dead letters must outlive the time it takes an operator to act on them")),
				help: "How long RELAY_DLQ_STREAM keeps a dead letter when cio-relay creates the stream. At least 1h."},
			// One for the embedded server and a lone one; a cluster's
			// operators ask for more (3 survives the loss of a node). 5 is
			// JetStream's limit.
			{name: "RELAY_STREAM_REPLICAS", def: strconv.Itoa(worker.DefaultStreamReplicas), value: intField(&c.Queue.Replicas,
				atLeast(1, ""), atMost(worker.MaxStreamReplicas, "JetStream's limit")),
				help: "Replicas of RELAY_STREAM and RELAY_DLQ_STREAM when cio-relay creates them, 1 to 5; their consumers follow. " +
					"More than 1 needs a JetStream cluster of at least that many nodes (3 survives the loss of one). " +
					"A stream that exists with another count is left as it is, with a warning."},
			{name: "RELAY_MANAGE_STREAMS", def: "true", value: boolField(&c.Queue.ManageStreams),
				help: "Create or update the streams and the consumer at start (true/false, 1/0, yes/no). " +
					"Set false when they are managed elsewhere, such as by Terraform or NACK."},
			// JetStream's own default; enough for a batch to fill and be sent.
			{name: "RELAY_ACK_WAIT", def: durationDefault(worker.DefaultAckWait), value: durationField(&c.Queue.AckWait,
				atLeast(5*time.Second, "shorter deadlines expire during ordinary sends and cause duplicate deliveries")),
				help: "How long JetStream waits for an event's ack before delivering it again. At least 5s."},
			// Twice the least that lets batches fill with the default batch
			// size and concurrency (2000 × (4+1)), leaving room for events
			// waiting on a retry.
			{name: "RELAY_MAX_ACK_PENDING", def: strconv.Itoa(worker.DefaultMaxAckPending), value: intField(&c.Queue.MaxAckPending, atLeast(1, "")),
				help: "Most unacknowledged events JetStream hands the worker at once. At least " +
					"RELAY_BATCH_MAX_CALLS × (RELAY_SEND_CONCURRENCY + 1): the batches in flight and the one filling."},
			// With the other defaults, each delivery is retried for up to 2m
			// and then delayed 30s × the delivery count (at most 5m): 20
			// deliveries ride out about two hours of Customer.io failing
			// before an event is dead-lettered.
			{name: "RELAY_MAX_DELIVER", def: strconv.Itoa(worker.DefaultMaxDeliver), value: intField(&c.Queue.MaxDeliver,
				atLeast(2, "an event must be retried at least once before it is dead-lettered")),
				help: "Deliveries of an event before it is moved to RELAY_DLQ_STREAM. At least 2."},
			// Long enough for a brief outage or a 429 to clear, short next to
			// the hour RELAY_MAX_DELIVER allows.
			{name: "RELAY_NAK_DELAY", def: durationDefault(worker.DefaultNakDelay), value: durationField(&c.Queue.NakDelay, nonNegative[time.Duration]()),
				help: "How long JetStream waits before delivering again the events of a batch that failed to send, " +
					"times the event's delivery count, at most 10×: 30s, 60s, … 5m."},
		}},
		{"Batching and sending", []variable{
			// Customer.io answers 200 but drops an over-limit batch, so the
			// limit is theirs, read in decimal as their Go library does.
			{name: "RELAY_BATCH_MAX_BYTES", def: strconv.Itoa(worker.DefaultBatchMaxBytes), value: intField(&c.Batch.MaxBytes,
				atLeast(32100, "a call of Customer.io's 32000-byte maximum must still fit with the batch envelope"),
				atMost(batcher.MaxBatchBytes, "Customer.io's batch limit")),
				help: "Largest batch request body, in bytes. 32100 to 500000: Customer.io silently drops " +
					"a batch over 500000 bytes, and a call may take up to 32000."},
			// At about 250 bytes a call, 2000 calls fill 500000 bytes: the
			// byte limit, not this one, normally closes a batch.
			{name: "RELAY_BATCH_MAX_CALLS", def: strconv.Itoa(worker.DefaultBatchMaxCalls), value: intField(&c.Batch.MaxCalls,
				atLeast(1, ""), atMost(100000, "500000 bytes hold fewer calls than that")),
				help: "Most calls in one batch, 1 to 100000."},
			// A second of latency buys full batches at a few events a second.
			{name: "RELAY_FLUSH_INTERVAL", def: durationDefault(worker.DefaultFlushInterval), value: durationField(&c.Batch.FlushInterval,
				atLeast(time.Millisecond, "shorter would send near-empty batches")),
				help: "Longest a partial batch waits for more calls before it is sent. " +
					"From 1ms to half of RELAY_ACK_WAIT."},
			// Keeps requests flowing while one waits on a slow response; each
			// one in flight holds up to RELAY_BATCH_MAX_CALLS unacked events.
			{name: "RELAY_SEND_CONCURRENCY", def: strconv.Itoa(worker.DefaultSendConcurrency), value: intField(&c.Send.Concurrency, atLeast(1, ""), atMost(64, "")),
				help: "Batches in flight to Customer.io at once, 1 to 64. With RELAY_ORDERING, the number of lanes: " +
					"a person's calls go to one lane, which has one batch in flight at a time."},
			// Customer.io does not order what it receives; without this a
			// track can arrive before the identify that carries the email.
			{name: "RELAY_ORDERING", def: "true", value: boolField(&c.Send.Ordering),
				help: "Deliver each person's calls (by userId, else anonymousId) to Customer.io in the order they were " +
					"published, across retries, redeliveries and replicas: one replica at a time delivers (it holds a lease in " +
					"the {stream}_PACE KV bucket). false: any replica delivers anything, in any order, for raw throughput."},
			{name: "RELAY_HTTP_TIMEOUT", def: durationDefault(sink.DefaultTimeout), value: durationField(&c.Send.HTTPTimeout, positive[time.Duration]()),
				help: "Timeout of one request to Customer.io, reading the response included. With RELAY_ORDERING it also sizes " +
					"the delivery lease (this plus a third of it, 2-10s, plus 2s): how long a replica that died delivering holds up the next."},
			{name: "RELAY_RETRY_INITIAL_INTERVAL", def: durationDefault(worker.DefaultRetryInitial), value: durationField(&c.Send.RetryInitialInterval, positive[time.Duration]()),
				help: "First wait before retrying a failed request; it grows exponentially, and a Retry-After answer overrides it. " +
					"At most RELAY_RETRY_MAX_INTERVAL."},
			{name: "RELAY_RETRY_MAX_INTERVAL", def: durationDefault(worker.DefaultRetryMaxInterval), value: durationField(&c.Send.RetryMaxInterval, positive[time.Duration]()),
				help: "Longest wait between retries."},
			// Rides out a short outage in-process; longer ones are left to
			// JetStream redelivery, which survives a restart.
			{name: "RELAY_RETRY_MAX_ELAPSED", def: durationDefault(worker.DefaultRetryMaxElapsed), value: durationField(&c.Send.RetryMaxElapsed, nonNegative[time.Duration]()),
				help: "How long a failed request is retried in-process before its events are NAKed for redelivery " +
					"after RELAY_NAK_DELAY. 0 NAKs at once."},
			// A Deployment that lost its key must not quietly ack and print
			// every event: outside the embedded default, a dry run is asked
			// for by name.
			{name: "RELAY_DRY_RUN", def: "false", value: boolField(&c.Send.DryRun),
				help: "Print batches instead of sending them, even with NATS_URL set. Without NATS_URL, a missing " +
					"CIO_CDP_API_KEY means a dry run anyway; with NATS_URL, a missing key is an error unless this is true."},
			{name: "RELAY_DRY_RUN_FILE", value: stringField(&c.Send.DryRunFile, stdoutOrPath).showing(showStdout),
				help: "Where the dry run (no CIO_CDP_API_KEY) writes the calls it would send. Unset or -: standard output."},
		}},
		{"Operating", []variable{
			// Prometheus' conventional exporter range starts at 9090.
			{name: "RELAY_HTTP_ADDR", def: ":9090", value: stringField(&c.Ops.HTTPAddr, listenOrOff).showing(showOff),
				help: `host:port serving /metrics and the health checks; "off" disables it.`},
			{name: "RELAY_LOG_FORMAT", def: "auto", value: stringField(&c.Ops.LogFormat, oneOf("auto", "text", "json")),
				help: "auto, text or json. auto: text on a terminal, json otherwise."},
			{name: "RELAY_LOG_LEVEL", def: "info", value: levelField(&c.Ops.LogLevel),
				help: "debug, info, warn or error."},
			// Under Kubernetes' default terminationGracePeriodSeconds of 30,
			// leaving 5s for the rest of the shutdown.
			{name: "RELAY_SHUTDOWN_TIMEOUT", def: durationDefault(worker.DefaultShutdownTimeout), value: durationField(&c.Ops.ShutdownTimeout, positive[time.Duration]()),
				help: "How long a stop may spend sending and acking the batches in hand. Keep it below " +
					"Kubernetes' terminationGracePeriodSeconds (default 30s), or the pod is killed mid-flush " +
					"and those events are delivered again."},
		}},
		{"Customer.io", []variable{
			{name: "CIO_REGION", def: "us", value: stringField(&c.CIO.Region, oneOf(regions...)),
				help: "Data centre of the workspace: us or eu. Picks the default API URLs."},
			{name: "CIO_CDP_URL", value: stringField(&c.CIO.CDPURL, apiURL).echoing(quoteURL),
				byRegn: map[string]string{"us": "https://cdp.customer.io/v1", "eu": "https://cdp-eu.customer.io/v1"},
				help:   "Base URL of the Data Pipelines (CDP) API, which receives the batches."},
			// Customer.io's CDP API is permissive unless asked otherwise:
			// a call it refuses is answered 200 and lost.
			{name: "RELAY_CDP_STRICT", def: "true", value: boolField(&c.CIO.CDPStrict),
				help: "Send X-Strict-Mode: 1 on every CDP request, so a call that fails Customer.io's own validation is " +
					"answered 400 and dead-lettered (rejected) instead of answered 200 and silently dropped. " +
					"false: such calls are acked and lost, logged only in the Customer.io workspace."},
			{name: "CIO_TRACK_URL", value: stringField(&c.CIO.TrackURL, apiURL).echoing(quoteURL),
				byRegn: map[string]string{"us": "https://track.customer.io/api/v1", "eu": "https://track-eu.customer.io/api/v1"},
				help:   "Base URL of the Track API (suppressions, delivery metrics); unsubscribes go to the root of its host."},
			{name: "CIO_APP_URL", value: stringField(&c.CIO.AppURL, apiURL).echoing(quoteURL),
				byRegn: map[string]string{"us": "https://api.customer.io/v1", "eu": "https://api-eu.customer.io/v1"},
				help:   "Base URL of the App API, which receives broadcast triggers."},
			{name: "CIO_CDP_API_KEY", secret: &c.CIO.CDPAPIKey,
				help: "API key of the Data Pipelines source. Unset: dry run, nothing is sent; " +
					"calls are written to RELAY_DRY_RUN_FILE."},
			{name: "CIO_APP_API_KEY", secret: &c.CIO.AppAPIKey,
				help: "App API key. Unset: broadcast triggers are not configured."},
			{name: "CIO_SITE_ID", value: stringField(&c.CIO.SiteID, nil),
				help: "Track API site id, for suppressions; needs CIO_TRACK_API_KEY."},
			{name: "CIO_TRACK_API_KEY", secret: &c.CIO.TrackAPIKey,
				help: "Track API key; needs CIO_SITE_ID. Unset: suppressions are not configured."},
		}},
	}
	var vars []variable
	for _, s := range sections {
		for _, v := range s.vars {
			v.section = s.title
			vars = append(vars, v)
		}
	}
	return vars
}

// defaultFor returns v's default in c, whose region is already read.
func (v variable) defaultFor(c *Config) string {
	if v.byRegn != nil {
		return v.byRegn[c.CIO.Region]
	}
	return v.def
}

// defaultDoc describes v's default for the heading of v in Usage.
func (v variable) defaultDoc() string {
	switch {
	case v.byRegn != nil:
		return "by CIO_REGION"
	case v.def == "":
		return "unset"
	}
	return v.def
}

// helpDoc is v's help for Usage, with the defaults by region, too long for
// the heading.
func (v variable) helpDoc() string {
	if v.byRegn == nil {
		return v.help
	}
	var by []string
	for _, r := range regions {
		by = append(by, r+": "+v.byRegn[r])
	}
	return v.help + " Default for " + strings.Join(by, ", ") + "."
}

// display prints v's value for Redacted.
func (v variable) display() string {
	if v.secret == nil {
		return v.value.String()
	}
	if !v.secret.IsSet() {
		return "(unset)"
	}
	return fmt.Sprintf("%s (%s)", redacted, v.secret.Source())
}

// quoteURL quotes a rejected URL without any credentials it holds.
func quoteURL(s string) string { return fmt.Sprintf("%q", redactURL(s)) }

// durationDefault writes a default duration as a user would: 2m, not 2m0s;
// 720h, not 720h0m0s.
func durationDefault(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
