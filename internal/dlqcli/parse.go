package dlqcli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
)

// Usage is the help of "cio-relay dlq".
const Usage = `Usage: cio-relay dlq COMMAND [flags] [NATS settings]

Inspect and replay the dead-letter stream (RELAY_DLQ_STREAM, default CIO_DLQ):
the calls cio-relay could not deliver, each with the reason why.

Commands:
  list          one line per dead letter: seq, subject, reason, status, age, body
  show SEQ      one dead letter: every header, and the body pretty-printed
  stats         counts by reason and by original subject, oldest and newest
  replay        publish dead letters back to their original subject, then
                delete them from the dead-letter stream
  purge         delete dead letters
  resolve [SEQ ...]
                for each ambiguous broadcast trigger (all, or these), look up
                the broadcast's triggers in Customer.io around the request:
                one there means it was probably delivered (purge), none that
                it is safe to replay; then act as confirmed

Filters (list, stats, replay, purge; resolve takes --subject, --since,
--until and --exclude-subject):
  --reason R    only this reason (rejected, retries_exhausted, invalid_json, ...);
                repeat the flag or separate with commas for several; a reason
                not in README's table is refused
  --subject S   only this original subject: cio.track; wildcards as in NATS
                (cio.*, cio.>); repeat or separate with commas for several
  --since T     only dead-lettered at or after T: RFC 3339 (2025-06-01T12:00:00Z),
                a date (2025-06-01, UTC), or an age (90s, 30m, 2h, 7d: that long ago)
  --until T     only dead-lettered before T, in the same forms
  --exclude-subject S
                not this original subject (wildcards as for --subject): the
                replay CronJob leaves out cio.broadcast, as a trigger is not
                idempotent; repeat or separate with commas for several

list:
  --limit N     list at most N (default 100; 0 lists all)
  --json        one JSON object per line, for scripts: seq, subject,
                original_subject, reason, status, error, deliveries, stream,
                stream_seq, first_seen, dead_lettered, message_id, and the body
                as body (valid UTF-8) or body_b64 (base64) otherwise
show, stats:
  --json        the same as JSON
replay:
  --dry-run     list what would be replayed and change nothing
  --rate N      at most N messages a second (default 0: as fast as acks come)
  --max N       replay at most N messages (default 0: all that match); the
                letters replay keeps do not count
  --max-replays N
                keep, do not replay, a call already replayed N times
                (default 3): it was dead-lettered again after each
  --force       replay also what replay keeps by default: calls replayed
                --max-replays times, validation failures (every reason but
                retries_exhausted, rejected and ambiguous: the same bytes
                would fail the same way), and a letter an earlier, unfinished
                replay may have published when that can no longer be checked,
                and an ambiguous trigger without asking (see below)
purge:
  --yes         do not ask for confirmation
resolve:
  --window D    a trigger created up to D after the request (and 30s before
                it, for clock skew) counts as the request's (default 5m)
  --yes         purge the probably delivered and replay the rest, without
                asking; without it resolve asks about each on a terminal and
                only reports otherwise
  --dry-run     only report, even on a terminal or with --yes
  --json        one JSON object per letter: seq, broadcast_id, requested_at,
                window_from, window_to, verdict (probably_delivered, none or
                unknown), triggers in the window (id, created_at,
                after_request_s), triggers_outside (how many others the
                broadcast has), action (purged, replayed, kept, failed or
                reported), error
  It needs the App API key, as "cio-relay cio" does: CIO_APP_API_KEY (or
  CIO_APP_API_KEY_FILE), CIO_REGION, CIO_APP_URL.

A dead letter with reason ambiguous is a broadcast trigger whose request may
have reached Customer.io: replaying it could message its audience twice.
replay asks before replaying one (on a terminal) and keeps it otherwise,
pointing to "cio-relay dlq resolve", which checks the broadcast's triggers.

A replay publishes each message's original body with its original headers,
Cio-Relay-Message-Id, Cio-Relay-Replayed-From (the dead-letter sequence),
Cio-Relay-Replays (one more than before), Cio-Relay-Published (when the call
was first published) and Nats-Msg-Id "replay-STREAM-SEQ-...", waits for the
stream to store it, and only then deletes the dead letter. A dead letter
written without its body (Cio-Relay-Body-Omitted) is replayed with the body
read from the original stream, or kept when that is gone. Interrupted
(Ctrl-C), it finishes the message in hand and stops; run it again to resume:
a replay intent written before each publish lets the next run recognise a
message published but not deleted, however much later it runs.

NATS settings are those of the worker: the NATS_* environment variables or
their flags (-nats-url ...; "cio-relay run -h" lists them), RELAY_STREAM and
RELAY_DLQ_STREAM. With NATS_URL unset, the command connects to the worker's
embedded server at RELAY_EMBEDDED_LISTEN, or, when nothing answers there (the
worker is stopped), opens RELAY_DATA_DIR with an in-process server of its own;
do not start the worker while such a command runs.
`

// Commands, as given on the command line.
const (
	CmdList   = "list"
	CmdShow   = "show"
	CmdStats  = "stats"
	CmdReplay = "replay"
	CmdPurge  = "purge"
	// CmdResolve checks ambiguous triggers against Customer.io.
	CmdResolve = "resolve"
)

// defaultLimit is how many dead letters list prints unless told: a screenful
// or two, enough to see what is going on without scrolling a 100k stream.
const defaultLimit = 100

// Command is one parsed "cio-relay dlq" command line.
type Command struct {
	Name   string // CmdList, CmdShow, CmdStats, CmdReplay or CmdPurge
	Filter Filter // list, stats, replay and purge
	Seq    uint64 // show: the dead-letter sequence
	Limit  int    // list: at most this many; 0 is all
	JSON   bool   // list, show, stats: JSON output
	DryRun bool   // replay: change nothing
	Rate   int    // replay: messages a second; 0 is unlimited
	Max    int    // replay: at most this many; 0 is all
	// MaxReplays (replay) keeps a call already replayed this many times.
	MaxReplays int
	Force      bool // replay: also what is kept by default
	Yes        bool // purge, resolve: do not ask
	// Seqs (resolve) are the dead letters to resolve; none is every
	// ambiguous one that matches Filter.
	Seqs []uint64
	// Window (resolve): a trigger created up to this long after the
	// request counts as the request's.
	Window time.Duration
}

// Filter selects dead letters; the zero Filter selects all of them.
type Filter struct {
	// Subjects are original subjects (cio.track), NATS wildcards allowed.
	// They are matched by the server, against the dead-letter subjects.
	Subjects []string
	Reasons  []string // Cio-Relay-Reason values
	Since    TimeSpec // dead-lettered at or after; zero: no bound
	Until    TimeSpec // dead-lettered before; zero: no bound
	// Excluded are original subjects (wildcards allowed) to leave out,
	// matched by the client.
	Excluded []string
}

// TimeSpec is a point in time, given either as such or as an age: Ago 2h
// is two hours before the command runs.
type TimeSpec struct {
	At  time.Time
	Ago time.Duration
}

// IsZero reports whether s sets no time.
func (s TimeSpec) IsZero() bool { return s.At.IsZero() && s.Ago == 0 }

// Time returns the point s names, ages counted back from now.
func (s TimeSpec) Time(now time.Time) time.Time {
	if s.Ago != 0 {
		return now.Add(-s.Ago)
	}
	return s.At
}

// ParseTimeSpec reads an RFC 3339 time, a date (UTC midnight) or an age: a
// Go duration (90s, 30m, 2h45m) or a whole number of days (7d).
func ParseTimeSpec(s string) (TimeSpec, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return TimeSpec{At: t}, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return TimeSpec{At: t}, nil
	}
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		d = time.Duration(n) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return TimeSpec{}, fmt.Errorf("want an RFC 3339 time (2025-06-01T12:00:00Z), a date (2025-06-01) or a positive age (30m, 2h, 7d), got %q", s)
	}
	return TimeSpec{Ago: d}, nil
}

// dlqSubjects returns the dead-letter subjects to ask the server for, nil
// for all.
func (f Filter) dlqSubjects() []string {
	if len(f.Subjects) == 0 {
		return nil
	}
	out := make([]string, len(f.Subjects))
	for i, s := range f.Subjects {
		out[i] = deadletter.Subject(s)
	}
	return out
}

// checkSubject accepts an original subject that can be under cio.>: its
// first token is cio or a wildcard, and no token is empty.
func checkSubject(s string) error {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return fmt.Errorf("want an original subject such as cio.track or cio.*, got %q", s)
	}
	tokens := strings.Split(s, ".")
	for i, t := range tokens {
		switch {
		case t == "":
			return fmt.Errorf("subject %q has an empty token", s)
		case t == ">" && i != len(tokens)-1:
			return fmt.Errorf("subject %q: '>' must be the last token", s)
		}
	}
	if first := tokens[0]; first != "cio" && first != "*" && first != ">" {
		return fmt.Errorf("want an original subject under cio. (cio.track, cio.*), got %q; dead letters are kept as dlq.cio.*", s)
	}
	return nil
}

// Parse reads a dlq command line (the arguments after "dlq"): the command,
// its flags and arguments. Flags that are not the command's own are
// returned in rest, in order and with their values, for the connection
// settings. A request for help returns [flag.ErrHelp]; every other error is
// a usage error.
func Parse(args []string) (cmd *Command, rest []string, err error) {
	if len(args) == 0 {
		return nil, nil, errors.New("missing command: list, show, stats, replay, purge or resolve")
	}
	c := &Command{Name: args[0]}
	switch c.Name {
	case "-h", "-help", "--help", "help":
		return nil, nil, flag.ErrHelp
	case CmdList, CmdShow, CmdStats, CmdReplay, CmdPurge, CmdResolve:
	default:
		return nil, nil, fmt.Errorf("unknown command %q: want list, show, stats, replay, purge or resolve", c.Name)
	}
	fs := c.flagSet()
	own, positional, rest, err := SplitFlags(fs, args[1:])
	if err != nil {
		return nil, nil, err
	}
	if err := fs.Parse(own); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	if c.Name == CmdShow {
		if len(positional) != 1 {
			return nil, nil, errors.New("show: want one dead-letter sequence number: cio-relay dlq show SEQ")
		}
		c.Seq, err = strconv.ParseUint(positional[0], 10, 64)
		if err != nil || c.Seq == 0 {
			return nil, nil, fmt.Errorf("show: want a sequence number (a whole number from 1), got %q", positional[0])
		}
		return c, rest, nil
	}
	if c.Name == CmdResolve {
		for _, p := range positional {
			seq, err := strconv.ParseUint(p, 10, 64)
			if err != nil || seq == 0 {
				return nil, nil, fmt.Errorf("resolve: want dead-letter sequence numbers (whole numbers from 1), got %q", p)
			}
			c.Seqs = append(c.Seqs, seq)
		}
		positional = nil
		if c.Window <= 0 {
			return nil, nil, fmt.Errorf("resolve: --window must be positive, got %v", c.Window)
		}
	}
	if len(positional) > 0 {
		return nil, nil, fmt.Errorf("%s: unexpected argument %q", c.Name, positional[0])
	}
	for _, s := range c.Filter.Subjects {
		if err := checkSubject(s); err != nil {
			return nil, nil, fmt.Errorf("%s: --subject: %w", c.Name, err)
		}
	}
	for _, s := range c.Filter.Excluded {
		if err := checkSubject(s); err != nil {
			return nil, nil, fmt.Errorf("%s: --exclude-subject: %w", c.Name, err)
		}
	}
	for _, r := range c.Filter.Reasons {
		// A misspelt reason would match nothing: for purge, an operator
		// would think there was nothing to purge.
		if !slices.Contains(deadletter.Reasons(), deadletter.Reason(r)) {
			return nil, nil, fmt.Errorf("%s: --reason: unknown reason %q (one of %s)", c.Name, r, reasonList())
		}
	}
	if c.Name == CmdReplay && c.MaxReplays < 1 {
		return nil, nil, fmt.Errorf("replay: --max-replays must be at least 1, got %d (--force replays regardless)", c.MaxReplays)
	}
	for _, f := range []struct {
		name string
		n    int
	}{{"limit", c.Limit}, {"rate", c.Rate}, {"max", c.Max}} {
		if f.n < 0 {
			return nil, nil, fmt.Errorf("%s: --%s must not be negative, got %d", c.Name, f.name, f.n)
		}
	}
	return c, rest, nil
}

// reasonList is the dead-letter reasons, comma-separated.
func reasonList() string {
	var names []string
	for _, r := range deadletter.Reasons() {
		names = append(names, string(r))
	}
	return strings.Join(names, ",")
}

// flagSet declares the flags of c's command, bound to c's fields.
func (c *Command) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("cio-relay dlq "+c.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints Usage and the error
	fs.Usage = func() {}
	switch c.Name {
	case CmdList, CmdStats, CmdReplay, CmdPurge, CmdResolve:
		if c.Name != CmdResolve { // resolve's reason is ambiguous
			fs.Var((*listValue)(&c.Filter.Reasons), "reason", "")
		}
		fs.Var((*listValue)(&c.Filter.Subjects), "subject", "")
		fs.Var((*timeValue)(&c.Filter.Since), "since", "")
		fs.Var((*timeValue)(&c.Filter.Until), "until", "")
		fs.Var((*listValue)(&c.Filter.Excluded), "exclude-subject", "")
	}
	switch c.Name {
	case CmdList:
		fs.IntVar(&c.Limit, "limit", defaultLimit, "")
		fs.BoolVar(&c.JSON, "json", false, "")
	case CmdShow, CmdStats:
		fs.BoolVar(&c.JSON, "json", false, "")
	case CmdReplay:
		fs.BoolVar(&c.DryRun, "dry-run", false, "")
		fs.IntVar(&c.Rate, "rate", 0, "")
		fs.IntVar(&c.Max, "max", 0, "")
		fs.IntVar(&c.MaxReplays, "max-replays", deadletter.DefaultMaxReplays, "")
		fs.BoolVar(&c.Force, "force", false, "")
	case CmdPurge:
		fs.BoolVar(&c.Yes, "yes", false, "")
	case CmdResolve:
		fs.DurationVar(&c.Window, "window", DefaultResolveWindow, "")
		fs.BoolVar(&c.Yes, "yes", false, "")
		fs.BoolVar(&c.DryRun, "dry-run", false, "")
		fs.BoolVar(&c.JSON, "json", false, "")
		c.MaxReplays = deadletter.DefaultMaxReplays // as replay's default
	}
	return fs
}

// SplitFlags sorts a subcommand's args into the flags fs declares (with
// their values), the positional arguments, and the other flags, which are
// the connection settings for config.Load, so the two may be mixed on the
// command line. A flag fs does not know takes the next argument as its
// value unless it is written -name=value or the next argument is itself a
// flag: the connection settings are all -name value flags. -h and -help
// return [flag.ErrHelp]. cio-relay publish shares it.
func SplitFlags(fs *flag.FlagSet, args []string) (own, positional, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		name, _, inline := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if name == "h" || name == "help" {
			return nil, nil, nil, flag.ErrHelp
		}
		f := fs.Lookup(name)
		if f == nil {
			rest = append(rest, a)
			if !inline && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++
				rest = append(rest, args[i])
			}
			continue
		}
		own = append(own, a)
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !inline && (!ok || !b.IsBoolFlag()) && i+1 < len(args) {
			i++
			own = append(own, args[i])
		}
	}
	return own, positional, rest, nil
}

// listValue is a repeatable flag whose values may also be separated by
// commas.
type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }

func (l *listValue) Set(s string) error {
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// timeValue is a flag holding a TimeSpec.
type timeValue TimeSpec

func (t *timeValue) String() string {
	switch {
	case t.Ago != 0:
		return t.Ago.String()
	case !t.At.IsZero():
		return t.At.Format(time.RFC3339)
	}
	return ""
}

func (t *timeValue) Set(s string) error {
	ts, err := ParseTimeSpec(s)
	if err != nil {
		return err
	}
	*t = timeValue(ts)
	return nil
}
