package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Config is cio-relay's validated settings. Build it with [Load].
type Config struct {
	NATS     NATS
	Embedded Embedded
	Queue    Queue
	Batch    Batch
	Send     Send
	Ops      Ops
	CIO      CIO
}

// NATS is how the worker connects to NATS.
type NATS struct {
	URL      string // comma-separated server URLs; "" runs the embedded server
	Creds    string // path of a .creds file
	NKey     string // path of an nkey seed file
	User     string // with Password
	Password Secret
	Token    Secret
	CA       string // path of a PEM file of CAs to trust; "" means the system roots
	Cert     string // path of a PEM client certificate, with Key
	Key      string // path of the PEM private key of Cert
}

// Embedded reports whether the worker runs its own in-process JetStream
// server, which it does when no NATS_URL is set.
func (n NATS) Embedded() bool { return n.URL == "" }

// Embedded configures the in-process JetStream server.
type Embedded struct {
	DataDir string // JetStream file store
	Listen  string // host:port for clients
}

// Queue is the JetStream side: streams, consumer and delivery policy.
type Queue struct {
	Stream        string
	Consumer      string
	DLQStream     string
	DLQMaxAge     time.Duration // retention of a dead-letter stream cio-relay creates
	Replicas      int           // of the streams cio-relay creates
	ManageStreams bool          // create or update the streams and consumer at start
	AckWait       time.Duration
	MaxAckPending int
	MaxDeliver    int
	NakDelay      time.Duration // redelivery delay after a failed send
}

// Batch bounds a CDP batch request.
type Batch struct {
	MaxBytes      int // of the request body
	MaxCalls      int
	FlushInterval time.Duration // longest a partial batch waits
}

// Send is how requests to Customer.io are sent and retried.
type Send struct {
	Concurrency          int  // batches in flight
	Ordering             bool // each person's calls in stream order (one replica holding the delivery lease, lanes by key)
	HTTPTimeout          time.Duration
	RetryInitialInterval time.Duration
	RetryMaxInterval     time.Duration
	RetryMaxElapsed      time.Duration // 0: no retry in-process, NAK at once
	DryRun               bool          // asked for a dry run explicitly
	DryRunFile           string        // dry-run sink output; "" is stdout
}

// Ops is how the process is operated: logs, metrics, shutdown.
type Ops struct {
	HTTPAddr        string // metrics and health listener; "" disables it
	LogFormat       string // auto, text or json
	LogLevel        slog.Level
	ShutdownTimeout time.Duration
}

// CIO is Customer.io: API base URLs (without trailing '/') and credentials.
type CIO struct {
	Region    string // us or eu
	CDPURL    string
	TrackURL  string
	AppURL    string
	CDPAPIKey Secret // unset: dry run, see [Config.DryRun]
	// CDPStrict sends X-Strict-Mode: 1 on every CDP request, so a call
	// Customer.io's validation refuses is answered 400 (and dead-lettered)
	// instead of 200 and dropped.
	CDPStrict   bool
	AppAPIKey   Secret // unset: broadcast triggers are not configured
	SiteID      string // Track API user, with TrackAPIKey
	TrackAPIKey Secret // unset: suppressions are not configured
}

// DryRun reports whether the worker writes the batches it would send to
// Send.DryRunFile instead of sending them: asked for with RELAY_DRY_RUN, or
// no CDP API key is set.
func (c *Config) DryRun() bool { return c.Send.DryRun || !c.CIO.CDPAPIKey.IsSet() }

// CheckRun returns the problems that only matter to the run command: a
// worker on a real NATS without a CDP key must have asked for a dry run,
// or it would ack and discard every event.
func (c *Config) CheckRun() error {
	if !c.NATS.Embedded() && !c.CIO.CDPAPIKey.IsSet() && !c.Send.DryRun {
		return errors.New("CIO_CDP_API_KEY: not set (nor CIO_CDP_API_KEY_FILE) while NATS_URL is set; " +
			"set the key, or RELAY_DRY_RUN=true to print batches instead of delivering them")
	}
	return nil
}

// Load reads the settings from args (the flags after the subcommand) and
// getenv (os.Getenv in production; nil means os.Getenv), applies defaults
// and checks them. The error lists every problem, each naming its variable.
// For -h or -help it wraps [flag.ErrHelp]: print [Usage] and exit 0.
func Load(args []string, getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	c := new(Config)
	vars := c.variables()
	flags, err := parseFlags(vars, args)
	if err != nil {
		return nil, err
	}

	given := make(map[string]bool) // set by flag or environment
	bad := make(map[string]bool)   // given, but rejected
	var errs []error
	for _, v := range vars {
		if v.secret != nil {
			s, err := loadSecret(v.name, getenv)
			given[v.name] = strings.TrimSpace(getenv(v.name)) != "" || strings.TrimSpace(getenv(v.name+"_FILE")) != ""
			if err != nil {
				errs = append(errs, err)
				bad[v.name] = true
			}
			*v.secret = s
			continue
		}
		raw, from := flags[v.name], " (flag -"+flagName(v.name)+")"
		if raw == "" {
			raw, from = strings.TrimSpace(getenv(v.name)), ""
		}
		if raw != "" {
			given[v.name] = true
			err := v.value.set(raw)
			if err == nil {
				continue
			}
			errs = append(errs, fmt.Errorf("%s%s: %w", v.name, from, err))
			bad[v.name] = true
		}
		// Unset or rejected: the default keeps the rules that depend on
		// this variable from tripping over a zero value.
		if def := v.defaultFor(c); def != "" {
			if err := v.value.set(def); err != nil {
				errs = append(errs, fmt.Errorf("%s: bad default %q: %w", v.name, def, err))
			}
		}
	}
	errs = append(errs, c.check(vars, given, bad)...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// parseFlags parses args into the raw, trimmed, non-empty flag values by
// variable name. Secrets have no flags.
func parseFlags(vars []variable, args []string) (map[string]string, error) {
	fs := flag.NewFlagSet("cio-relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints Usage and errors
	fs.Usage = func() {}
	raw := make(map[string]*rawFlag)
	secrets := make(map[string]string) // flag name a secret would have → variable
	for _, v := range vars {
		name := flagName(v.name)
		if v.secret != nil {
			secrets[name], secrets[name+"-file"] = v.name, v.name
			continue
		}
		raw[v.name] = &rawFlag{boolean: v.value.isBool()}
		fs.Var(raw[v.name], name, v.help)
	}
	if err := rejectSecretFlags(args, secrets); err != nil {
		return nil, err
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("parsing flags: %w", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("parsing flags: unexpected argument %q; settings are given as -name=value", fs.Arg(0))
	}
	flags := make(map[string]string)
	for name, f := range raw {
		if s := strings.TrimSpace(f.value); s != "" {
			flags[name] = s
		}
	}
	return flags, nil
}

// rejectSecretFlags fails on a flag that would carry a secret, before the
// flag package does: its error would be less helpful, and a future one
// might quote the value.
func rejectSecretFlags(args []string, secrets map[string]string) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if v, ok := secrets[name]; ok {
			return fmt.Errorf("parsing flags: -%s: secrets are not accepted as flags, which ps would show; set %s or %s_FILE in the environment", name, v, v)
		}
	}
	return nil
}

// rawFlag records a flag's value for Load to parse like the environment's.
type rawFlag struct {
	value   string
	boolean bool
}

func (f *rawFlag) String() string     { return f.value }
func (f *rawFlag) Set(s string) error { f.value = s; return nil }
func (f *rawFlag) IsBoolFlag() bool   { return f.boolean }

// flagName is the flag of the variable name: RELAY_BATCH_MAX_BYTES is
// batch-max-bytes, NATS_URL is nats-url.
func flagName(name string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "RELAY_")), "_", "-")
}

// Redacted returns every setting as a NAME=value line, grouped as in
// [Usage], for the start-up log. Secrets show as "[redacted]" and where they
// came from, or as "(unset)".
func (c *Config) Redacted() string {
	var b strings.Builder
	for _, v := range c.variables() {
		fmt.Fprintf(&b, "%s=%s\n", v.name, v.display())
	}
	return b.String()
}

// Usage describes every setting: its variable, flag, default and meaning.
func Usage() string {
	var b strings.Builder
	b.WriteString(usageIntro)
	section := ""
	for _, v := range new(Config).variables() {
		if v.section != section {
			section = v.section
			fmt.Fprintf(&b, "\n%s:\n", section)
		}
		if v.secret != nil {
			fmt.Fprintf(&b, "  %s or %s_FILE (secret: environment only)\n", v.name, v.name)
		} else {
			fmt.Fprintf(&b, "  %s, -%s (default %s)\n", v.name, flagName(v.name), v.defaultDoc())
		}
		wrap(&b, v.helpDoc(), "      ", 80)
	}
	return b.String()
}

const usageIntro = `Settings are read from environment variables or the matching flags; a flag
wins over its variable. A flag is named after its variable, lower-cased, with
'-' for '_' and without RELAY_ (RELAY_BATCH_MAX_BYTES: -batch-max-bytes).
Surrounding whitespace is trimmed and an empty value counts as unset.

Secrets are read only from the environment, never from flags, which ps would
show: NAME holds the secret, or NAME_FILE names a file holding it (trimmed),
such as a mounted Kubernetes secret. Setting both is an error.
`

// wrap writes text word-wrapped to width, each line indented.
func wrap(b *strings.Builder, text, indent string, width int) {
	line := indent
	for _, word := range strings.Fields(text) {
		if line != indent && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += word
	}
	b.WriteString(line + "\n")
}
