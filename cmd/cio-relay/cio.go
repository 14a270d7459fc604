package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cio-relay/cio-relay/config"
	"github.com/cio-relay/cio-relay/internal/dlqcli"
	"github.com/cio-relay/cio-relay/sink"
)

const cioUsage = `Usage: cio-relay cio COMMAND [ARGS] [flags] [settings]

Read from Customer.io's App API: what an operator checks while running the
relay. Output is a table; --json prints one JSON object a line, each as
Customer.io sent it.

Commands:
  integrations                      the workspace's integrations
  messages                          deliveries, in Customer.io's order
  segments                          every segment
  segment ID                        one segment
  segment-members ID                the people in a segment
  triggers BROADCAST                the API triggers of a broadcast
  trigger BROADCAST TRIGGER         one trigger
  trigger-errors BROADCAST TRIGGER  the errors of one trigger (unknown people, ...)
  webhooks                          reporting webhooks (endpoints without their query)
  collections                       collections
  ip-addresses                      Customer.io's sending IP addresses
  newsletters                       newsletters (one-time sends)
  snippets                          snippets
  transactional                     transactional messages

Flags:
  --json            one JSON object a line, for scripts
  --limit N         messages, segment-members, trigger-errors, newsletters:
                    at most N (default 100; 0 reads all), following
                    Customer.io's pages
messages:
  --type T          email, webhook, twilio, whatsapp, slack, push, in_app or
                    live_notification
  --metric M        attempted, sent, delivered, opened, clicked, converted,
                    bounced, spammed, unsubscribed, dropped, failed or
                    undeliverable
  --campaign ID, --newsletter ID, --action ID
                    only this campaign's, newsletter's or action's messages
  --since T, --until T
                    created at or after T, before T: RFC 3339
                    (2025-06-01T12:00:00Z), a date (2025-06-01, UTC) or an
                    age (90s, 30m, 2h, 7d: that long ago). Customer.io
                    answers for at most 6 months at a time.
  --drafts          drafts instead of sent messages
newsletters:
  --sort asc|desc   oldest or newest first

Settings are the worker's: CIO_APP_API_KEY (or CIO_APP_API_KEY_FILE),
CIO_REGION (us or eu) and CIO_APP_URL, or their flags ("cio-relay run -h").
Requests are paced at 10 a second, Customer.io's limit; a 429 is waited
out as its Retry-After says.
`

// cioDefaultLimit is how many items a paged read lists unless told: a
// screenful or two.
const cioDefaultLimit = 100

// cioCmd is one read: its arguments (ids), its own flags, and how it reads
// and prints.
type cioCmd struct {
	args  []string // names of its positional ids, for usage errors
	paged bool     // takes --limit
	flags func(fs *flag.FlagSet, o *cioOpts)
	read  func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error)
}

// cioOpts are a command line's values.
type cioOpts struct {
	ids    []int64
	json   bool
	limit  int
	filter sink.MessageFilter
	since  dlqcli.TimeSpec
	until  dlqcli.TimeSpec
	sort   string
	now    time.Time
}

// cioTable is a read's output: rows for the table, and each row's JSON as
// Customer.io sent it for --json. vertical prints one object as
// FIELD VALUE lines.
type cioTable struct {
	header   []string
	rows     [][]string
	raw      []json.RawMessage
	vertical bool
}

func cioCommands() map[string]cioCmd {
	messageFlags := func(fs *flag.FlagSet, o *cioOpts) {
		fs.StringVar(&o.filter.Type, "type", "", "")
		fs.StringVar(&o.filter.Metric, "metric", "", "")
		fs.Int64Var(&o.filter.CampaignID, "campaign", 0, "")
		fs.Int64Var(&o.filter.NewsletterID, "newsletter", 0, "")
		fs.Int64Var(&o.filter.ActionID, "action", 0, "")
		fs.Var((*timeFlag)(&o.since), "since", "")
		fs.Var((*timeFlag)(&o.until), "until", "")
		fs.BoolVar(&o.filter.Drafts, "drafts", false, "")
	}
	return map[string]cioCmd{
		"integrations": {read: func(ctx context.Context, r *sink.AppReader, _ *cioOpts) (*cioTable, error) {
			it, err := r.Integrations(ctx)
			return sorted(it, err, []string{"ID", "NAME", "TYPE"}, func(v sink.Integration) []string {
				return []string{string(v.ID), v.Name, v.Type}
			})
		}},
		"messages": {paged: true, flags: messageFlags, read: func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error) {
			it, err := r.Messages(ctx, o.filter, o.limit)
			return inOrder(it, err, []string{"ID", "TYPE", "CREATED", "PARENT", "ACTION", "METRICS", "FAILURE"}, func(m sink.Message) []string {
				return []string{m.ID, m.Type, unix(m.Created), parentOf(m), dash(string(m.ActionID)), metricsOf(m.Metrics), dash(m.FailureMessage)}
			})
		}},
		"segments": {read: func(ctx context.Context, r *sink.AppReader, _ *cioOpts) (*cioTable, error) {
			it, err := r.Segments(ctx)
			return sorted(it, err, []string{"ID", "NAME", "TYPE", "STATE", "PROGRESS", "UPDATED"}, func(s sink.Segment) []string {
				return []string{string(s.ID), s.Name, s.Type, s.State, progress(s.Progress), unix(s.UpdatedAt)}
			})
		}},
		"segment": {args: []string{"ID"}, read: func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error) {
			it, err := r.Segment(ctx, o.ids[0])
			return one(it, err, func(s sink.Segment) [][2]string {
				return [][2]string{{"ID", string(s.ID)}, {"NAME", s.Name}, {"DESCRIPTION", dash(s.Description)}, {"TYPE", s.Type},
					{"STATE", s.State}, {"PROGRESS", progress(s.Progress)}, {"TAGS", dash(strings.Join(s.Tags, ", "))},
					{"CREATED", unix(s.CreatedAt)}, {"UPDATED", unix(s.UpdatedAt)}}
			})
		}},
		"segment-members": {args: []string{"ID"}, paged: true, read: func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error) {
			it, err := r.SegmentMembers(ctx, o.ids[0], o.limit)
			return inOrder(it, err, []string{"ID", "CIO_ID", "EMAIL"}, func(m sink.SegmentMember) []string {
				return []string{dash(string(m.ID)), dash(string(m.CioID)), dash(string(m.Email))}
			})
		}},
		"triggers": {args: []string{"BROADCAST"}, read: func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error) {
			it, err := r.Triggers(ctx, o.ids[0])
			return sorted(it, err, []string{"ID", "BROADCAST", "CREATED", "PROCESSED"}, func(v sink.Trigger) []string {
				return []string{string(v.ID), string(v.BroadcastID), unix(v.CreatedAt), unix(v.ProcessedAt)}
			})
		}},
		"trigger": {args: []string{"BROADCAST", "TRIGGER"}, read: func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error) {
			it, err := r.Trigger(ctx, o.ids[0], o.ids[1])
			return one(it, err, func(v sink.Trigger) [][2]string {
				return [][2]string{{"ID", string(v.ID)}, {"BROADCAST", dash(string(v.BroadcastID))}, {"CREATED", unix(v.CreatedAt)}, {"PROCESSED", unix(v.ProcessedAt)}}
			})
		}},
		"trigger-errors": {args: []string{"BROADCAST", "TRIGGER"}, paged: true, read: func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error) {
			it, err := r.TriggerErrors(ctx, o.ids[0], o.ids[1], o.limit)
			return inOrder(it, err, []string{"ERROR"}, func(v sink.TriggerError) []string {
				if v.Status != "" {
					return []string{string(v.Status) + ": " + v.Detail}
				}
				return []string{v.Detail}
			})
		}},
		"webhooks": {read: func(ctx context.Context, r *sink.AppReader, _ *cioOpts) (*cioTable, error) {
			it, err := r.ReportingWebhooks(ctx)
			return sorted(it, err, []string{"ID", "NAME", "TYPE", "DISABLED", "EVENTS", "ENDPOINT"}, func(w sink.ReportingWebhook) []string {
				return []string{string(w.ID), w.Name, w.Type, strconv.FormatBool(w.Disabled), strconv.Itoa(len(w.Events)), endpoint(w.Endpoint)}
			})
		}},
		"collections": {read: func(ctx context.Context, r *sink.AppReader, _ *cioOpts) (*cioTable, error) {
			it, err := r.Collections(ctx)
			return sorted(it, err, []string{"ID", "NAME", "ROWS", "BYTES", "UPDATED"}, func(c sink.Collection) []string {
				return []string{string(c.ID), c.Name, strconv.FormatInt(c.Rows, 10), strconv.FormatInt(c.Bytes, 10), unix(c.UpdatedAt)}
			})
		}},
		"ip-addresses": {read: func(ctx context.Context, r *sink.AppReader, _ *cioOpts) (*cioTable, error) {
			it, err := r.IPAddresses(ctx)
			return sorted(it, err, []string{"ADDRESS"}, func(a sink.IPAddress) []string { return []string{a.Address} })
		}},
		"newsletters": {paged: true, flags: func(fs *flag.FlagSet, o *cioOpts) { fs.StringVar(&o.sort, "sort", "", "") },
			read: func(ctx context.Context, r *sink.AppReader, o *cioOpts) (*cioTable, error) {
				it, err := r.Newsletters(ctx, o.sort, o.limit)
				return inOrder(it, err, []string{"ID", "NAME", "TYPE", "CREATED", "SENT"}, func(n sink.Newsletter) []string {
					return []string{string(n.ID), n.Name, n.Type, unix(n.Created), unix(n.SentAt)}
				})
			}},
		"snippets": {read: func(ctx context.Context, r *sink.AppReader, _ *cioOpts) (*cioTable, error) {
			it, err := r.Snippets(ctx)
			return sorted(it, err, []string{"NAME", "UPDATED", "VALUE"}, func(s sink.Snippet) []string {
				return []string{s.Name, unix(s.UpdatedAt), abbreviate(s.Value, 40)}
			})
		}},
		"transactional": {read: func(ctx context.Context, r *sink.AppReader, _ *cioOpts) (*cioTable, error) {
			it, err := r.TransactionalMessages(ctx)
			return sorted(it, err, []string{"ID", "NAME", "SEND_TO_UNSUBSCRIBED", "LINK_TRACKING", "OPEN_TRACKING", "UPDATED"}, func(m sink.TransactionalMessage) []string {
				return []string{string(m.ID), m.Name, strconv.FormatBool(m.SendToUnsubscribed), strconv.FormatBool(m.LinkTracking), strconv.FormatBool(m.OpenTracking), unix(m.UpdatedAt)}
			})
		}},
	}
}

// cioClock is the reads' clock; nil fields are the real one.
type cioClock struct {
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

// runCIO is the cio subcommand: App API reads.
func runCIO(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return runCIOWith(ctx, args, getenv, stdout, stderr, cioClock{})
}

func runCIOWith(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, clock cioClock) int {
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "cio-relay cio: "+format+"\nRun \"cio-relay cio -h\" for usage.\n", a...)
		return 2
	}
	if len(args) == 0 {
		return usageErr("missing command")
	}
	name := args[0]
	if name == "-h" || name == "-help" || name == "--help" || name == "help" {
		fmt.Fprint(stdout, cioUsage)
		return 0
	}
	cmd, ok := cioCommands()[name]
	if !ok {
		return usageErr("unknown command %q", name)
	}
	o := &cioOpts{limit: cioDefaultLimit}
	fs := flag.NewFlagSet("cio-relay cio "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&o.json, "json", false, "")
	if cmd.paged {
		fs.IntVar(&o.limit, "limit", cioDefaultLimit, "")
	}
	if cmd.flags != nil {
		cmd.flags(fs, o)
	}
	own, positional, connArgs, err := dlqcli.SplitFlags(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, cioUsage)
		return 0
	}
	if err == nil {
		err = fs.Parse(own)
	}
	if err != nil {
		return usageErr("%s: %v", name, err)
	}
	if len(positional) != len(cmd.args) {
		return usageErr("%s: want %s, got %d argument(s)", name, strings.Join(cmd.args, " "), len(positional))
	}
	for i, p := range positional {
		id, err := strconv.ParseInt(p, 10, 64)
		if err != nil || id <= 0 {
			return usageErr("%s: %s must be a positive whole number, got %q", name, cmd.args[i], p)
		}
		o.ids = append(o.ids, id)
	}
	if o.limit < 0 {
		return usageErr("%s: --limit must not be negative, got %d", name, o.limit)
	}

	cfg, ok := loadCLIConfig("cio", connArgs, getenv, stderr)
	if !ok {
		return 2
	}
	if !cfg.CIO.AppAPIKey.IsSet() {
		fmt.Fprintln(stderr, "cio-relay cio: CIO_APP_API_KEY is not set (nor CIO_APP_API_KEY_FILE): the reads need the workspace's App API key")
		return 2
	}
	if clock.now == nil {
		clock.now, clock.sleep = time.Now, nil
	}
	o.now = clock.now()
	if name == "messages" {
		o.filter.Since, o.filter.Until = timeOf(o.since, o.now), timeOf(o.until, o.now)
		if err := o.filter.Check(o.now); err != nil {
			return usageErr("messages: %v", err)
		}
	}
	log := newLogger(cfg.Ops, stderr)
	r, err := newAppReader(cfg, log, clock)
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay cio: %v\n", err)
		return 1
	}
	table, err := cmd.read(ctx, r, o)
	if err != nil {
		fmt.Fprintf(stderr, "cio-relay cio %s: %s\n", name, explainAppError(err, cfg.CIO))
		return 1
	}
	if err := table.write(stdout, o.json); err != nil {
		fmt.Fprintf(stderr, "cio-relay cio %s: writing output: %v\n", name, err)
		return 1
	}
	return 0
}

// newAppReader is the App API reader of the worker's settings, shared by
// cio-relay cio and dlq resolve.
func newAppReader(cfg *config.Config, log *slog.Logger, clock cioClock) (*sink.AppReader, error) {
	opts := sink.AppReaderOptions{
		URL:       cfg.CIO.AppURL,
		APIKey:    secretFunc(cfg.CIO.AppAPIKey, log),
		UserAgent: "cio-relay/" + version(),
		Client:    sink.NewHTTPClient(1, cfg.Send.HTTPTimeout),
	}
	if clock.sleep != nil {
		opts.Now, opts.Sleep = clock.now, clock.sleep
	}
	return sink.NewAppReader(opts)
}

// explainAppError says what an operator can do about err; the key is never
// in it (the sink's errors carry only Customer.io's answer).
func explainAppError(err error, c config.CIO) string {
	switch sink.StatusOf(err) {
	case http.StatusUnauthorized:
		return fmt.Sprintf("the App API key (CIO_APP_API_KEY) was refused (401 Unauthorized): it must be an App API key of this workspace, "+
			"not a Track or CDP key; check region (CIO_REGION, now %q) and CIO_APP_URL (now %s): a US key is refused by the EU API and the other way round", c.Region, c.AppURL)
	case http.StatusForbidden:
		return "the App API key (CIO_APP_API_KEY) may not make this read (403 Forbidden): give the key the scope it needs in Customer.io's API credentials settings (" + err.Error() + ")"
	}
	return err.Error()
}

type timeFlag dlqcli.TimeSpec

func (t *timeFlag) String() string { return "" }

func (t *timeFlag) Set(s string) error {
	ts, err := dlqcli.ParseTimeSpec(s)
	if err != nil {
		return err
	}
	*t = timeFlag(ts)
	return nil
}

func timeOf(s dlqcli.TimeSpec, now time.Time) time.Time {
	if s.IsZero() {
		return time.Time{}
	}
	return s.Time(now)
}

// sorted makes a table of a list Customer.io gives in no documented order,
// ordered by its first column (as numbers or IP addresses when every value
// is one), so two runs print alike.
func sorted[T any](it sink.Items[T], err error, header []string, row func(T) []string) (*cioTable, error) {
	t, err := inOrder(it, err, header, row)
	if err != nil {
		return nil, err
	}
	idx := make([]int, len(t.rows))
	for i := range idx {
		idx[i] = i
	}
	numeric, addrs := true, true
	for _, r := range t.rows {
		if _, err := strconv.ParseInt(r[0], 10, 64); err != nil {
			numeric = false
		}
		if _, err := netip.ParseAddr(r[0]); err != nil {
			addrs = false
		}
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		x, y := t.rows[a][0], t.rows[b][0]
		switch {
		case numeric:
			n, _ := strconv.ParseInt(x, 10, 64)
			m, _ := strconv.ParseInt(y, 10, 64)
			return cmp.Compare(n, m)
		case addrs:
			return netip.MustParseAddr(x).Compare(netip.MustParseAddr(y))
		}
		return strings.Compare(x, y)
	})
	out := &cioTable{header: header}
	for _, i := range idx {
		out.rows = append(out.rows, t.rows[i])
		out.raw = append(out.raw, t.raw[i])
	}
	return out, nil
}

// inOrder makes a table of a list in Customer.io's order: pages, and an
// order asked for (--sort), must stay as they came.
func inOrder[T any](it sink.Items[T], err error, header []string, row func(T) []string) (*cioTable, error) {
	if err != nil {
		return nil, err
	}
	t := &cioTable{header: header, raw: it.Raw}
	for _, v := range it.Items {
		t.rows = append(t.rows, row(v))
	}
	return t, nil
}

func one[T any](it sink.Item[T], err error, fields func(T) [][2]string) (*cioTable, error) {
	if err != nil {
		return nil, err
	}
	t := &cioTable{vertical: true, raw: []json.RawMessage{it.Raw}}
	for _, f := range fields(it.Value) {
		t.rows = append(t.rows, []string{f[0], f[1]})
	}
	return t, nil
}

// write prints the table, or with asJSON each row's JSON compacted on a
// line of its own.
func (t *cioTable) write(w io.Writer, asJSON bool) error {
	if asJSON {
		var buf bytes.Buffer
		for _, r := range t.raw {
			buf.Reset()
			if err := json.Compact(&buf, r); err != nil {
				return fmt.Errorf("customer.io sent invalid JSON: %w", err)
			}
			buf.WriteByte('\n')
			if _, err := w.Write(buf.Bytes()); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if !t.vertical {
		if len(t.rows) == 0 {
			_, err := fmt.Fprintln(w, "(none)")
			return err
		}
		fmt.Fprintln(tw, strings.Join(t.header, "\t"))
	}
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(cells(r), "\t"))
	}
	return tw.Flush()
}

// cells keeps a row on one line: tabs and newlines in Customer.io's text
// would break the columns.
func cells(r []string) []string {
	out := make([]string, len(r))
	for i, c := range r {
		out[i] = strings.NewReplacer("\t", " ", "\n", `\n`, "\r", `\r`).Replace(c)
	}
	return out
}

func unix(sec int64) string {
	if sec <= 0 {
		return "-"
	}
	return time.Unix(sec, 0).UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func progress(p *int) string {
	if p == nil {
		return "-"
	}
	return strconv.Itoa(*p) + "%"
}

// parentOf names what sent a message: campaign, broadcast or newsletter.
func parentOf(m sink.Message) string {
	for _, p := range []struct{ kind, id string }{
		{"campaign", string(m.CampaignID)}, {"broadcast", string(m.BroadcastID)}, {"newsletter", string(m.NewsletterID)},
	} {
		if p.id != "" {
			return p.kind + " " + p.id
		}
	}
	return "-"
}

// metricsOf lists the events a message reached (the metrics Customer.io
// filters by, and drafted), in the order they happened. The metrics object
// also carries counts (human_opened, prefetch_clicked, …) and its created
// time, which are not events.
func metricsOf(m map[string]int64) string {
	names := make([]string, 0, len(m))
	for k := range m {
		if k == "drafted" || slices.Contains(sink.MessageMetrics, k) {
			names = append(names, k)
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		if c := cmp.Compare(m[a], m[b]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return dash(strings.Join(names, ","))
}

// endpoint shows a webhook URL without its credentials and query, where
// tokens travel.
func endpoint(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "[unparsable URL]"
	}
	safe := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	s := safe.String()
	if u.RawQuery != "" {
		s += "?…"
	}
	return s
}

func abbreviate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
