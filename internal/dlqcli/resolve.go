package dlqcli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
)

// Resolving ambiguous triggers. A broadcast trigger has no idempotency key,
// so one whose request may have reached Customer.io (a 502 or 504, a
// timeout, a request cut off) is dead-lettered as ambiguous, never retried:
// a second request would message its audience again. Customer.io lists a
// broadcast's triggers with their creation time, so whether the request
// went through can be looked up instead of guessed: a trigger created in
// [requested − ClockSkew, requested + window] is taken as the ambiguous
// request's (probably delivered: purge the letter); none there means it was
// not acted on (safe to replay). Customer.io's list does not say which
// request made a trigger, so another trigger of the same broadcast in the
// window (an earlier or a concurrent one) counts too: the verdict errs
// towards not sending twice.

// DefaultResolveWindow is how long after the request a trigger still
// counts as the request's: Customer.io creates the trigger while it
// handles the request, so a minute would do; five cover a request that
// sat in a gateway or a queue before Customer.io took it.
const DefaultResolveWindow = 5 * time.Minute

// ClockSkew is how far before the recorded request time a trigger still
// counts: the relay's clock and Customer.io's may disagree by seconds, and
// created_at is whole seconds.
const ClockSkew = 30 * time.Second

// TriggerLister reads a broadcast's triggers from Customer.io's App API
// (sink.AppReader).
type TriggerLister interface {
	Triggers(ctx context.Context, broadcastID int64) (sink.Items[sink.Trigger], error)
}

// Verdicts of resolve.
const (
	verdictDelivered = "probably_delivered" // a trigger was created in the window
	verdictNone      = "none"               // no trigger in the window: safe to replay
	verdictUnknown   = "unknown"            // could not be checked
)

// Actions resolve took on a letter, as --json says them.
const (
	actionPurged   = "purged"
	actionReplayed = "replayed"
	actionKept     = "kept"     // declined, or nothing to do without confirmation
	actionFailed   = "failed"   // the purge or replay did not go through
	actionReported = "reported" // report only: --dry-run, or no terminal and no --yes
)

// window is where a letter's trigger is looked for.
type window struct {
	ref      time.Time // the request, or the publish when the request time was not recorded
	from, to time.Time
	recorded bool // ref is the recorded request time (Cio-Relay-Requested-At)
}

// windowOf returns where to look for l's trigger: around its recorded
// request time; for a letter written before the request time was
// recorded, from its publish (the request came later) to its
// dead-lettering (the request came before) plus the window.
func windowOf(r deadletter.Record, stored time.Time, after time.Duration) window {
	if !r.RequestedAt.IsZero() {
		return window{ref: r.RequestedAt, from: r.RequestedAt.Add(-ClockSkew), to: r.RequestedAt.Add(after), recorded: true}
	}
	end := cmp.Or(r.DeadLettered, stored)
	start := cmp.Or(r.FirstSeen, end)
	return window{ref: start, from: start.Add(-ClockSkew), to: end.Add(after)}
}

// found is a trigger created in a letter's window.
type found struct {
	ID      string
	Created time.Time
	After   int64 // whole seconds from the window's ref to its creation; negative: before
}

// inWindow returns the triggers created within w, nearest to w.ref first.
// Creation times are whole seconds, so the window's ends are too: a trigger
// created in the second the window starts counts.
func inWindow(w window, triggers []sink.Trigger) []found {
	from, to, ref := w.from.Unix(), w.to.Unix(), w.ref.Unix()
	var out []found
	for _, t := range triggers {
		if t.CreatedAt >= from && t.CreatedAt <= to {
			out = append(out, found{ID: string(t.ID), Created: time.Unix(t.CreatedAt, 0).UTC(), After: t.CreatedAt - ref})
		}
	}
	slices.SortStableFunc(out, func(a, b found) int {
		return cmp.Or(cmp.Compare(abs(a.After), abs(b.After)), cmp.Compare(a.After, b.After))
	})
	return out
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// offset says "2s after the request", "3s before the request".
func (w window) offset(after int64) string {
	what := "the request"
	if !w.recorded {
		what = "the publish (request time not recorded)"
	}
	if after < 0 {
		return fmt.Sprintf("%s before %s", age(time.Duration(-after)*time.Second), what)
	}
	return fmt.Sprintf("%s after %s", age(time.Duration(after)*time.Second), what)
}

// sentence is the verdict line's text for triggers found in w, of the
// broadcast's total.
func (w window) sentence(fs []found, total int) string {
	switch len(fs) {
	case 0:
		outside := ""
		switch total {
		case 0:
		case 1:
			outside = " (the broadcast's one trigger was created outside it)"
		default:
			outside = fmt.Sprintf(" (the broadcast's %d triggers were created outside it)", total)
		}
		return fmt.Sprintf("none from %s to %s%s — safe to replay", w.from.UTC().Format(time.RFC3339), w.to.UTC().Format(time.RFC3339), outside)
	case 1:
		return fmt.Sprintf("a trigger (id %s) was created %s — probably delivered; purge?", fs[0].ID, w.offset(fs[0].After))
	}
	ids := make([]string, len(fs))
	for i, f := range fs {
		ids[i] = f.ID
	}
	return fmt.Sprintf("%d triggers in the window (ids %s; the nearest created %s) — probably delivered; purge?",
		len(fs), strings.Join(ids, ", "), w.offset(fs[0].After))
}

// jsonResolved is one letter as resolve --json prints it.
type jsonResolved struct {
	Seq         uint64      `json:"seq"`
	BroadcastID int64       `json:"broadcast_id"`
	RequestedAt *time.Time  `json:"requested_at"` // null when not recorded
	From        time.Time   `json:"window_from"`
	To          time.Time   `json:"window_to"`
	Verdict     string      `json:"verdict"`
	Triggers    []jsonFound `json:"triggers"`
	Outside     int         `json:"triggers_outside"` // the broadcast's other triggers
	Action      string      `json:"action"`
	Error       string      `json:"error,omitempty"`
	found       []found     // for the text line
	win         window      // for the text line
}

type jsonFound struct {
	ID           string    `json:"id"`
	CreatedAt    time.Time `json:"created_at"`
	AfterSeconds int64     `json:"after_request_s"`
}

// triggerRead is one broadcast's triggers, read once per run: letters of
// one broadcast are judged against the same list, and a replay this run
// makes cannot make a later letter look delivered.
type triggerRead struct {
	triggers []sink.Trigger
	err      error
}

// resolveCounts counts what resolve found and did.
type resolveCounts struct {
	checked, delivered, none, unknown int
	purged, replayed, kept, failed    int
}

func (c *Command) resolve(ctx context.Context, env *Env, stream jetstream.Stream) error {
	if env.Triggers == nil {
		return errors.New("reading the broadcasts' triggers needs the App API key: set CIO_APP_API_KEY (or CIO_APP_API_KEY_FILE), and CIO_REGION or CIO_APP_URL for an EU workspace")
	}
	now := env.Now()
	act := !c.DryRun && (c.Yes || env.Interactive)
	var r *deadletter.Replayer
	if act {
		var err error
		if r, err = deadletter.NewReplayer(ctx, env.JS, stream, env.Stream); err != nil {
			return err
		}
		r.AfterPublish = env.afterPublish
	}
	f := c.Filter
	if len(c.Seqs) == 0 {
		f.Reasons = []string{string(deadletter.ReasonAmbiguous)}
	}
	reads := map[int64]*triggerRead{}
	seen := map[uint64]bool{}
	var n resolveCounts
	enc := jsonEncoder(env.Stdout)
	_, err := walk(ctx, stream, f, now, walkOpts{}, func(l *Letter) error {
		if len(c.Seqs) > 0 {
			if !slices.Contains(c.Seqs, l.Seq) {
				return nil
			}
			seen[l.Seq] = true
			if l.Record.Reason != deadletter.ReasonAmbiguous {
				c.report(env, l.Seq, "not an ambiguous trigger (reason %q): nothing to resolve", l.Record.Reason)
				return nil
			}
		}
		v, err := c.judge(ctx, env, l, reads)
		if err != nil {
			return err
		}
		n.checked++
		switch v.Verdict {
		case verdictDelivered:
			n.delivered++
		case verdictNone:
			n.none++
		default:
			n.unknown++
		}
		if c.JSON {
			defer func() { _ = enc.Encode(v) }()
		} else {
			c.say(env, v)
		}
		switch {
		case v.Verdict == verdictUnknown:
			v.Action = actionKept
			return nil
		case !act:
			v.Action = actionReported
			return nil
		}
		v.Action = c.act(ctx, env, stream, r, l, v.Verdict)
		switch v.Action {
		case actionPurged:
			n.purged++
		case actionReplayed:
			n.replayed++
		case actionFailed:
			n.failed++
		default:
			n.kept++
		}
		c.done(env, v)
		return nil
	})
	if act && err == nil {
		r.Sweep(ctx)
	}
	if err != nil {
		return err
	}
	for _, seq := range c.Seqs {
		if !seen[seq] {
			c.report(env, seq, "no such dead letter in %s (or it does not match the filters)", env.DLQStream)
		}
	}
	c.summary(env, n, act)
	if n.unknown > 0 || n.failed > 0 {
		return errReported
	}
	return nil
}

// act does what verdict proposes for l, once confirmed: a terminal's yes,
// or --yes. It returns the action taken.
func (c *Command) act(ctx context.Context, env *Env, stream jetstream.Stream, r *deadletter.Replayer, l *Letter, verdict string) string {
	verb := "purge"
	if verdict == verdictNone {
		verb = "replay"
	}
	if !c.Yes && !env.ask(fmt.Sprintf("%s seq %d? [y/N] ", verb, l.Seq)) {
		return actionKept
	}
	if verdict == verdictNone {
		return c.replayResolved(ctx, env, r, l)
	}
	if c.deleteOne(ctx, env, stream, l.Seq) == failed {
		return actionFailed
	}
	return actionPurged
}

// judge looks up l's broadcast's triggers and says whether one was created
// in l's window. A key Customer.io refuses (401, 403) is an error that ends
// the run: it would be refused for every other letter too.
func (c *Command) judge(ctx context.Context, env *Env, l *Letter, reads map[int64]*triggerRead) (*jsonResolved, error) {
	w := windowOf(l.Record, l.Stored, c.Window)
	v := &jsonResolved{Seq: l.Seq, From: w.from.UTC(), To: w.to.UTC(), Verdict: verdictUnknown, Triggers: []jsonFound{}, win: w}
	if w.recorded {
		t := w.ref.UTC()
		v.RequestedAt = &t
	}
	if err := deadletter.ReadOmitted(ctx, env.JS, &l.Letter, env.Stream); err != nil {
		v.Error = fmt.Sprintf("its body was left out of the dead letter, and %v", err)
		return v, nil
	}
	id, err := broadcastOf(l.Body)
	if err != nil {
		v.Error = err.Error()
		return v, nil
	}
	v.BroadcastID = id
	rd, ok := reads[id]
	if !ok {
		items, err := env.Triggers.Triggers(ctx, id)
		rd = &triggerRead{triggers: items.Items, err: err}
		reads[id] = rd
	}
	if rd.err != nil {
		if st := sink.StatusOf(rd.err); st == http.StatusUnauthorized || st == http.StatusForbidden {
			return nil, fmt.Errorf("reading broadcast %d's triggers: %w", id, rd.err)
		}
		v.Error = fmt.Sprintf("reading broadcast %d's triggers: %v", id, rd.err)
		return v, nil
	}
	v.found = inWindow(w, rd.triggers)
	v.Outside = len(rd.triggers) - len(v.found)
	for _, f := range v.found {
		v.Triggers = append(v.Triggers, jsonFound{ID: f.ID, CreatedAt: f.Created, AfterSeconds: f.After})
	}
	v.Verdict = verdictNone
	if len(v.found) > 0 {
		v.Verdict = verdictDelivered
	}
	return v, nil
}

// broadcastOf reads the broadcast id of a trigger message's body.
func broadcastOf(body []byte) (int64, error) {
	var b struct {
		BroadcastID json.Number `json:"broadcast_id"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return 0, fmt.Errorf("its body is not a trigger request: %w", err)
	}
	id, err := strconv.ParseInt(b.BroadcastID.String(), 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("its body has no broadcast_id (a positive integer), got %q", b.BroadcastID)
	}
	return id, nil
}

// replayResolved replays a letter no trigger was found for, as replay
// would (the replay count, a body left out): the verdict took the place
// of the question replay asks about an ambiguous trigger.
func (c *Command) replayResolved(ctx context.Context, env *Env, r *deadletter.Replayer, l *Letter) string {
	if c.vet(ctx, env, l, &replayCounts{invalid: map[string]int{}}) != done {
		return actionKept
	}
	o, _ := c.replayOne(ctx, env, r, l)
	switch o {
	case done, duplicate:
		return actionReplayed
	case failed:
		return actionFailed
	}
	return actionKept
}

// say prints a letter's verdict line.
func (c *Command) say(env *Env, v *jsonResolved) {
	head := fmt.Sprintf("seq %d: ", v.Seq)
	if v.BroadcastID != 0 {
		head += fmt.Sprintf("broadcast %d: ", v.BroadcastID)
	}
	if v.Verdict == verdictUnknown {
		fmt.Fprintf(env.Stdout, "%scould not be checked: %s; kept\n", head, v.Error)
		return
	}
	fmt.Fprintln(env.Stdout, head+v.win.sentence(v.found, v.Outside))
}

// done prints what became of a letter, after its verdict line.
func (c *Command) done(env *Env, v *jsonResolved) {
	if c.JSON {
		return
	}
	switch v.Action {
	case actionPurged:
		fmt.Fprintf(env.Stdout, "seq %d: purged\n", v.Seq)
	case actionReplayed:
		fmt.Fprintf(env.Stdout, "seq %d: replayed to %s\n", v.Seq, env.Stream)
	case actionKept:
		fmt.Fprintf(env.Stdout, "seq %d: kept\n", v.Seq)
	case actionFailed:
		fmt.Fprintf(env.Stdout, "seq %d: failed, kept in %s (see above)\n", v.Seq, env.DLQStream)
	}
}

// summary ends a resolve run: what was found, what was done, and, when
// nothing could be done, how to act.
func (c *Command) summary(env *Env, n resolveCounts, act bool) {
	w := env.Stdout
	if c.JSON {
		w = env.Stderr
	}
	if n.checked == 0 {
		fmt.Fprintln(w, "no ambiguous triggers match; nothing to resolve")
		return
	}
	plural := "s"
	if n.checked == 1 {
		plural = ""
	}
	fmt.Fprintf(w, "checked %d ambiguous trigger%s: %d probably delivered, %d safe to replay, %d could not be checked", n.checked, plural, n.delivered, n.none, n.unknown)
	if act {
		fmt.Fprintf(w, "; purged %d, replayed %d, kept %d, failed %d", n.purged, n.replayed, n.kept, n.failed)
	}
	fmt.Fprintln(w)
	switch {
	case !act && c.DryRun:
		fmt.Fprintln(w, "dry run: nothing changed")
	case !act && n.delivered+n.none > 0:
		fmt.Fprintln(w, "nothing changed: run it on a terminal to be asked about each, or with --yes to purge the probably delivered and replay the rest")
	}
}
