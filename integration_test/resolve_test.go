package integration_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/internal/dlqcli"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// resolved is one line of dlq resolve --json.
type resolved struct {
	Seq         uint64     `json:"seq"`
	BroadcastID int64      `json:"broadcast_id"`
	RequestedAt *time.Time `json:"requested_at"`
	Verdict     string     `json:"verdict"`
	Triggers    []struct {
		ID           string `json:"id"`
		AfterSeconds int64  `json:"after_request_s"`
	} `json:"triggers"`
	Action string `json:"action"`
	Error  string `json:"error"`
}

// TestResolveAmbiguousTriggers: two triggers are dead-lettered as
// ambiguous by a real worker. Broadcast 1's request was acted on by
// Customer.io and its answer lost (a gateway's 504 after the trigger was
// created); broadcast 2's was answered 502 without Customer.io acting, and
// the broadcast has only a trigger from an hour before. dlq resolve must
// tell them apart from Customer.io's list of triggers: broadcast 1
// probably delivered (purge), broadcast 2 safe to replay. Without a
// terminal and without --yes it changes nothing; on a terminal it does what
// each answer says; with --yes it does the rest. In the end broadcast 1 was
// requested once and triggered once, broadcast 2 triggered once more by
// its replay, and the dead-letter stream is empty.
func TestResolveAmbiguousTriggers(t *testing.T) {
	var offset atomic.Int64 // the stand-in's clock, ahead of the wall clock by this
	var failed2 atomic.Bool
	e := newEnv(t, ciotest.Options{AppKey: "app-key",
		Now: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) },
		Fault: func(r *ciotest.Request) *ciotest.Fault {
			switch {
			case r.Method != http.MethodPost:
			case strings.Contains(r.Path, "/campaigns/1/"):
				return &ciotest.Fault{Status: 504, Body: "<html>504 Gateway Time-out</html>", AfterApplying: true}
			case strings.Contains(r.Path, "/campaigns/2/") && failed2.CompareAndSwap(false, true):
				return &ciotest.Fault{Status: 502, Body: "<html>502 Bad Gateway</html>"}
			}
			return nil
		}})

	// Broadcast 2 was triggered an hour ago: outside any window.
	app := appClient(t, e)
	offset.Store(int64(-time.Hour))
	failed2.Store(true)
	if _, err := app.Trigger(t.Context(), 2, []byte(`{"ids":["old"]}`)); err != nil {
		t.Fatal(err)
	}
	offset.Store(0)
	failed2.Store(false)

	before := time.Now()
	e.runWorker(t, triggerOptions(app), 0)
	e.publishAll(t, []published{
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":1,"ids":["a"]}`)},
		{subject: worker.SubjectBroadcast, body: []byte(`{"broadcast_id":2,"ids":["b"]}`)},
	})
	if !broadcastSettled(e, 10*time.Second) {
		t.Fatal("the triggers were not settled within 10s")
	}
	after := time.Now()
	dead := readDLQ(t, e.js)
	if len(dead) != 2 {
		t.Fatalf("%d dead letters, want the 2 ambiguous triggers", len(dead))
	}
	for _, d := range dead {
		if at := d.Record.RequestedAt; d.Record.Reason != deadletter.ReasonAmbiguous || at.Before(before) || at.After(after) {
			t.Fatalf("dead letter %d: reason %s, %s %v; want ambiguous, requested between %v and %v",
				d.Seq, d.Record.Reason, deadletter.HeaderRequestedAt, at, before, after)
		}
	}

	reader, err := sink.NewAppReader(sink.AppReaderOptions{URL: e.cio.AppURL(), APIKey: func() string { return "app-key" }, Client: http.DefaultClient})
	if err != nil {
		t.Fatal(err)
	}
	resolve := func(t *testing.T, interactive bool, stdin string, args ...string) (int, string, string) {
		t.Helper()
		c, rest, err := dlqcli.Parse(append([]string{"resolve"}, args...))
		if err != nil || len(rest) > 0 {
			t.Fatalf("Parse: %v, rest %q", err, rest)
		}
		var out, errOut bytes.Buffer
		code := c.Run(t.Context(), dlqcli.Env{JS: e.js, Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut,
			Interactive: interactive, Triggers: reader})
		t.Logf("dlq resolve %s → %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
		return code, out.String(), errOut.String()
	}

	// Report only: no terminal, no --yes.
	code, out, _ := resolve(t, false, "", "--json")
	verdicts := map[int64]resolved{}
	for line := range strings.Lines(out) {
		var r resolved
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("resolve --json line %q: %v", line, err)
		}
		verdicts[r.BroadcastID] = r
	}
	delivered, none := verdicts[1], verdicts[2]
	if code != 0 || delivered.Verdict != "probably_delivered" || len(delivered.Triggers) != 1 || delivered.Action != "reported" ||
		none.Verdict != "none" || len(none.Triggers) != 0 || none.Action != "reported" {
		t.Fatalf("exit %d, verdicts %+v; want broadcast 1 probably delivered by one trigger, broadcast 2 none, both only reported", code, verdicts)
	}
	if s := delivered.Triggers[0].AfterSeconds; s < 0 || s > 2 {
		t.Errorf("broadcast 1's trigger created %ds after the request, want 0 to 2", s)
	}
	if n := len(readDLQ(t, e.js)); n != 2 {
		t.Fatalf("%d dead letters after a report-only run, want 2 (nothing changed)", n)
	}

	// On a terminal: no to purging broadcast 1, yes to replaying broadcast 2.
	answers := map[int64]string{1: "n\n", 2: "y\n"}
	stdin := answers[1] + answers[2]
	if none.Seq < delivered.Seq {
		stdin = answers[2] + answers[1]
	}
	code, out, errOut := resolve(t, true, stdin)
	if code != 0 || !strings.Contains(out, "broadcast 1: a trigger (id ") || !strings.Contains(out, "after the request — probably delivered; purge?") ||
		!strings.Contains(out, "broadcast 2: none from ") || !strings.Contains(out, "— safe to replay") ||
		!strings.Contains(errOut, "purge seq ") || !strings.Contains(errOut, "replay seq ") {
		t.Fatalf("interactive run: exit %d; want both verdicts said and both questions asked", code)
	}
	waitFor(t, 10*time.Second, "broadcast 2's replayed trigger accepted", func() bool { return acceptedPerBroadcast(e)[2] == 2 })
	if dead := readDLQ(t, e.js); len(dead) != 1 || dead[0].Seq != delivered.Seq {
		t.Fatalf("dead letters %+v after the interactive run, want only broadcast 1's, declined", dead)
	}

	// --yes: what is left, broadcast 1, is purged.
	if code, out, _ := resolve(t, false, "", "--yes"); code != 0 || !strings.Contains(out, "purged") {
		t.Fatalf("resolve --yes: exit %d; want broadcast 1 purged", code)
	}
	if dead := readDLQ(t, e.js); len(dead) != 0 {
		t.Fatalf("%d dead letters left, want none", len(dead))
	}
	requests := 0
	for _, r := range e.cio.Requests() {
		if r.Method == http.MethodPost && strings.Contains(r.Path, "/campaigns/1/") {
			requests++
		}
	}
	if got := acceptedPerBroadcast(e); requests != 1 || got[1] != 1 || got[2] != 2 {
		t.Fatalf("broadcast 1 requested %d times; triggers per broadcast %v; want 1 request, broadcast 1 triggered once, broadcast 2 twice (an hour ago, and the replay)", requests, got)
	}
}
