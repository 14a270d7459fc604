package dlqcli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// previewBytes is how much of a body list shows: enough to recognise a
// call by its first fields.
const previewBytes = 40

// table writes dead letters as aligned rows as they come, without holding
// them to measure the columns: a listing of 100k messages streams.
type table struct {
	w   io.Writer
	now time.Time
}

func (t table) header() {
	fmt.Fprintf(t.w, "%-8s %-16s %-20s %-6s %5s  %s\n", "SEQ", "SUBJECT", "REASON", "STATUS", "AGE", "BODY")
}

func (t table) row(l *Letter) {
	status := "-"
	if l.Record.Status != 0 {
		status = strconv.Itoa(l.Record.Status)
	}
	reason := l.Record.Reason
	if reason == "" {
		reason = "(none)"
	}
	fmt.Fprintf(t.w, "%-8d %-16s %-20s %-6s %5s  %s\n", l.Seq, oneLine([]byte(l.OriginalSubject()), 64),
		oneLine([]byte(reason), 64), status, age(t.now.Sub(l.Time())), oneLine(l.Body, previewBytes))
}

// jsonEncoder writes one JSON value a line, leaving <, > and & as they are
// in bodies.
func jsonEncoder(w io.Writer) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc
}

func (c *Command) list(ctx context.Context, env *Env, stream jetstream.Stream) error {
	now := env.Now()
	t := table{w: env.Stdout, now: now}
	enc := jsonEncoder(env.Stdout)
	if !c.JSON {
		t.header()
	}
	n, more := 0, false
	_, err := walk(ctx, stream, c.Filter, now, walkOpts{}, func(l *Letter) error {
		if c.Limit > 0 && n == c.Limit {
			more = true
			return errStopWalk
		}
		n++
		if c.JSON {
			return enc.Encode(l.json())
		}
		t.row(l)
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case more:
		fmt.Fprintf(env.Stderr, "first %d shown; more match (--limit N, or --limit 0 for all)\n", n)
	case n == 0:
		fmt.Fprintln(env.Stderr, "no dead letters match")
	}
	return nil
}

// directGetHeaders are added by a direct get (a stream with AllowDirect):
// facts about the stored message, not headers it was published with.
var directGetHeaders = []string{
	jetstream.StreamHeader, jetstream.SequenceHeader, jetstream.TimeStampHeaer,
	jetstream.SubjectHeader, jetstream.LastSequenceHeader, "Nats-Num-Pending",
}

// showJSON is show --json: the fields of list --json and every header.
type showJSON struct {
	jsonLetter
	Headers nats.Header `json:"headers"`
}

func (c *Command) show(ctx context.Context, env *Env, stream jetstream.Stream) error {
	raw, err := stream.GetMsg(ctx, c.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("no message %d in %s: replayed, purged, expired, or never there", c.Seq, env.DLQStream)
	}
	if err != nil {
		return fmt.Errorf("reading message %d of %s: %w", c.Seq, env.DLQStream, err)
	}
	h := withoutKeys(raw.Header, directGetHeaders...)
	l := newLetter(raw.Sequence, raw.Subject, raw.Time, h, raw.Data, len(raw.Data))
	if c.JSON {
		return jsonEncoder(env.Stdout).Encode(showJSON{jsonLetter: l.json(), Headers: h})
	}

	w, now := env.Stdout, env.Now()
	fmt.Fprintf(w, "seq       %d\n", l.Seq)
	fmt.Fprintf(w, "subject   %s (published on %s)\n", printable(l.Subject), printable(l.OriginalSubject()))
	fmt.Fprintf(w, "stored    %s (%s ago)\n", l.Stored.UTC().Format(time.RFC3339), age(now.Sub(l.Stored)))
	fmt.Fprintln(w, "\nheaders")
	for _, k := range slices.Sorted(maps.Keys(h)) {
		for _, v := range h[k] {
			fmt.Fprintf(w, "  %s: %s\n", printable(k), printable(v))
		}
	}
	fmt.Fprintf(w, "\nbody (%d bytes)\n", len(l.Body))
	fmt.Fprintln(w, prettyBody(l.Body))
	return nil
}

// prettyBody is a body for a person: indented when it is JSON, as it is
// when it is other text, Go-quoted when it is not UTF-8; never with control
// characters a terminal would obey.
func prettyBody(b []byte) string {
	var buf bytes.Buffer
	switch {
	case !utf8.Valid(b): // json.Valid lets invalid UTF-8 in strings pass
		return "(not UTF-8; Go-quoted) " + strconv.Quote(string(b))
	case json.Valid(b) && json.Indent(&buf, b, "", "  ") == nil:
		return printable(buf.String())
	}
	return printable(string(b))
}

// Stats is what stats counts.
type Stats struct {
	Stream    string         `json:"stream"`
	Total     int            `json:"total"`
	ByReason  map[string]int `json:"by_reason"`  // "" counts messages without a reason
	BySubject map[string]int `json:"by_subject"` // original subjects
	Oldest    *time.Time     `json:"oldest,omitempty"`
	Newest    *time.Time     `json:"newest,omitempty"`
}

func (c *Command) stats(ctx context.Context, env *Env, stream jetstream.Stream) error {
	s := Stats{Stream: env.DLQStream, ByReason: map[string]int{}, BySubject: map[string]int{}}
	var oldest, newest time.Time
	p := &progress{w: env.Progress}
	now := env.Now()
	_, err := walk(ctx, stream, c.Filter, now, walkOpts{headersOnly: true}, func(l *Letter) error {
		s.Total++
		s.ByReason[string(l.Record.Reason)]++
		s.BySubject[l.OriginalSubject()]++
		if t := l.Time(); oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
		if t := l.Time(); t.After(newest) {
			newest = t
		}
		p.show("counting: %d dead letters (seq %d)", s.Total, l.Seq)
		return nil
	})
	p.clear()
	if err != nil {
		return err
	}
	if s.Total > 0 {
		o, n := oldest.UTC(), newest.UTC()
		s.Oldest, s.Newest = &o, &n
	}
	if c.JSON {
		return jsonEncoder(env.Stdout).Encode(s)
	}

	w := env.Stdout
	if s.Total == 0 {
		fmt.Fprintf(w, "%s: no dead letters match\n", s.Stream)
		return nil
	}
	fmt.Fprintf(w, "%s: %d dead letters\n", s.Stream, s.Total)
	fmt.Fprintf(w, "  oldest  %s (%s ago)\n", s.Oldest.Format(time.RFC3339), age(now.Sub(*s.Oldest)))
	fmt.Fprintf(w, "  newest  %s (%s ago)\n", s.Newest.Format(time.RFC3339), age(now.Sub(*s.Newest)))
	counts(w, "REASON", s.ByReason)
	counts(w, "SUBJECT", s.BySubject)
	return nil
}

// counts writes a count table, largest first.
func counts(w io.Writer, title string, m map[string]int) {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b))
	})
	fmt.Fprintf(w, "\n%-24s %8s\n", title, "COUNT")
	for _, k := range keys {
		name := k
		if name == "" {
			name = "(none)"
		}
		fmt.Fprintf(w, "%-24s %8d\n", oneLine([]byte(name), 64), m[k])
	}
}
