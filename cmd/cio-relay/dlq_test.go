package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/config"
	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

// seedDLQ creates the CIO and CIO_DLQ streams and dead-letters one call
// per reason, on cio.track.
func seedDLQ(t *testing.T, js jetstream.JetStream, reasons ...string) {
	t.Helper()
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CIO", Subjects: []string{"cio.>"}, Duplicates: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", time.Hour, -1)); err != nil {
		t.Fatal(err)
	}
	for i, r := range reasons {
		m := deadletter.Msg("cio.track", nil, []byte(`{"userId":"u","event":"`+r+`"}`),
			deadletter.Record{Reason: deadletter.Reason(r), Stream: "CIO", StreamSeq: uint64(i + 1)})
		if err := deadletter.Publish(ctx, js, m); err != nil {
			t.Fatal(err)
		}
	}
}

// runDLQFor runs cio-relay dlq with the environment vars.
func runDLQFor(t *testing.T, vars map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = runDLQ(t.Context(), args, env(vars), strings.NewReader(stdin), &out, &errOut)
	t.Logf("cio-relay dlq %s → %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return code, out.String(), errOut.String()
}

// jsonTotal reads the total of dlq stats --json.
func jsonTotal(t *testing.T, out string) int {
	t.Helper()
	var s struct{ Total int }
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("stats --json: %v: %q", err, out)
	}
	return s.Total
}

func TestRunDLQ(t *testing.T) {
	e := newNATSEnv(t)
	seedDLQ(t, e.js, "rejected", "rejected", "invalid_json")
	url := e.srv.URL()
	tests := []struct {
		name     string
		vars     map[string]string
		stdin    string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"stats", map[string]string{"NATS_URL": url}, "", []string{"stats"}, 0, "CIO_DLQ: 3 dead letters", ""},
		{"list, NATS_URL as a flag", nil, "", []string{"list", "--reason", "invalid_json", "-nats-url", url}, 0, "invalid_json", ""},
		{"other dead-letter stream", map[string]string{"NATS_URL": url, "RELAY_DLQ_STREAM": "DLQ2"}, "", []string{"stats"}, 1, "", "dead-letter stream DLQ2 not found"},
		{"replay", map[string]string{"NATS_URL": url}, "", []string{"replay", "--reason", "rejected"}, 0, "matched 2, replayed 2, failed 0, skipped 0", ""},
		{"purge declined", map[string]string{"NATS_URL": url}, "no\n", []string{"purge"}, 1, "", "Delete 1 messages from CIO_DLQ? [y/N] nothing deleted"},
		{"purge", map[string]string{"NATS_URL": url}, "", []string{"purge", "--yes"}, 0, "deleted 1 of 1", ""},
		{"help", nil, "", []string{"-h"}, 0, "Usage: cio-relay dlq COMMAND", ""},
		{"no command", nil, "", nil, 2, "", "missing command"},
		{"bad flag value", nil, "", []string{"list", "--limit", "x"}, 2, "", `invalid value "x" for flag -limit`},
		{"unknown setting", nil, "", []string{"list", "-nats-urll", url}, 2, "", "invalid configuration"},
		{"no server", map[string]string{"NATS_URL": "nats://" + unusedAddr(t)}, "", []string{"stats"}, 1, "", "connecting to NATS (NATS_URL)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runDLQFor(t, tt.vars, tt.stdin, tt.args...)
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("exit code %d, stdout %q, stderr %q; want %d, %q, %q", code, out, errOut, tt.wantCode, tt.wantOut, tt.wantErr)
			}
		})
	}
}

// unusedAddr returns a loopback address nothing listens on (nothing did a
// moment ago).
func unusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// withDataDir runs fn against JetStream on the data directory dir, as the
// worker's embedded server would hold it.
func withDataDir(t *testing.T, dir string, fn func(js jetstream.JetStream)) {
	t.Helper()
	srv, err := openDataDir(config.Embedded{DataDir: dir}, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	fn(js)
}

// TestRunDLQEmbedded: with NATS_URL unset, the tools use the worker's
// embedded server when it runs, and its data directory when it does not.
func TestRunDLQEmbedded(t *testing.T) {
	e := newNATSEnv(t)
	seedDLQ(t, e.js, "rejected")
	u, err := url.Parse(e.srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	stopped := t.TempDir()
	withDataDir(t, stopped, func(js jetstream.JetStream) { seedDLQ(t, js, "rejected", "retries_exhausted") })

	tests := []struct {
		name      string
		vars      map[string]string
		wantCode  int
		wantTotal int
		wantErr   string
	}{
		{"worker running", map[string]string{"RELAY_EMBEDDED_LISTEN": u.Host}, 0, 1, ""},
		{"worker running, listening on all interfaces", map[string]string{"RELAY_EMBEDDED_LISTEN": ":" + u.Port()}, 0, 1, ""},
		{"worker stopped", map[string]string{"RELAY_EMBEDDED_LISTEN": unusedAddr(t), "RELAY_DATA_DIR": stopped}, 0, 2, "opened its data directory"},
		{"worker stopped, no data directory", map[string]string{"RELAY_EMBEDDED_LISTEN": unusedAddr(t), "RELAY_DATA_DIR": filepath.Join(stopped, "none")},
			1, 0, "is not a directory to open instead"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runDLQFor(t, tt.vars, "", "stats", "--json")
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Fatalf("exit code %d, stderr %q; want %d and %q", code, errOut, tt.wantCode, tt.wantErr)
			}
			if code == 0 && jsonTotal(t, out) != tt.wantTotal {
				t.Errorf("total %d; want %d", jsonTotal(t, out), tt.wantTotal)
			}
		})
	}

	// Published with the worker stopped, a call waits in the data
	// directory for the worker.
	var out, errOut bytes.Buffer
	vars := map[string]string{"RELAY_EMBEDDED_LISTEN": unusedAddr(t), "RELAY_DATA_DIR": stopped}
	code := runPublish(t.Context(), nil, env(vars), strings.NewReader(`{"type":"track","userId":"u","event":"Later","messageId":"m-later"}`), &out, &errOut)
	if code != 0 || !strings.Contains(out.String(), "published 1,") {
		t.Fatalf("publish: exit code %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	withDataDir(t, stopped, func(js jetstream.JetStream) {
		m, err := js.Stream(t.Context(), "CIO")
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.GetLastMsgForSubject(t.Context(), "cio.track")
		if err != nil || got.Header.Get(jetstream.MsgIDHeader) != "m-later" {
			t.Errorf("CIO in the data directory: %v, %v; want the published call", got, err)
		}
	})
}

// manifestArgs returns the container args of the first container in a
// Kubernetes manifest: the list items under "args:".
func manifestArgs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	in := false
	for line := range strings.Lines(string(b)) {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "args:":
			in = true
		case in && strings.HasPrefix(trimmed, "- "):
			args = append(args, strings.Trim(strings.TrimPrefix(trimmed, "- "), `"`))
		case in && !strings.HasPrefix(trimmed, "#"):
			return args
		}
	}
	t.Fatalf("%s: no args", path)
	return nil
}

// TestDLQReplayCronJob runs the replay CronJob's arguments (and the
// one-off Job's, which start as the same) against dead letters of every
// kind: it replays retries_exhausted calls, and leaves
// out broadcast triggers (not idempotent), other reasons, and calls
// replayed deadletter.DefaultMaxReplays times already.
func TestDLQReplayCronJob(t *testing.T) {
	for _, path := range []string{"base/dlq-replay-cronjob.yaml", "examples/dlq-replay-job.yaml"} {
		t.Run(path, func(t *testing.T) { testReplayManifest(t, filepath.Join("..", "..", "deploy", path)) })
	}
}

func testReplayManifest(t *testing.T, path string) {
	args := manifestArgs(t, path)
	if len(args) < 2 || args[0] != "dlq" || args[1] != "replay" {
		t.Fatalf("%s: args %q; want dlq replay ...", path, args)
	}
	e := newNATSEnv(t)
	seedDLQ(t, e.js) // the streams
	ctx := t.Context()
	for i, l := range []struct {
		subject string
		reason  deadletter.Reason
		replays int
	}{
		{"cio.track", deadletter.ReasonRetriesExhausted, 0},                            // 1: replayed
		{"cio.broadcast", deadletter.ReasonRetriesExhausted, 0},                        // 2: a trigger
		{"cio.identify", deadletter.ReasonRejected, 0},                                 // 3: another reason
		{"cio.track", deadletter.ReasonRetriesExhausted, deadletter.DefaultMaxReplays}, // 4: poison
		{"cio.suppress", deadletter.ReasonRetriesExhausted, 1},                         // 5: replayed
	} {
		m := deadletter.Msg(l.subject, nil, []byte(`{"userId":"u"}`), deadletter.Record{Reason: l.reason, Stream: "CIO", StreamSeq: uint64(i + 1), Replays: l.replays})
		if err := deadletter.Publish(ctx, e.js, m); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := runDLQFor(t, map[string]string{"NATS_URL": e.srv.URL()}, "", args[1:]...)
	if code != 0 || !strings.Contains(out, "matched 3, replayed 2, failed 0, skipped 0, kept 1") || !strings.Contains(errOut, "seq 4: kept: replayed 3 times already") {
		t.Errorf("exit code %d, stdout %q, stderr %q", code, out, errOut)
	}
	cio, err := e.js.Stream(ctx, "CIO")
	if err != nil {
		t.Fatal(err)
	}
	var replayed []string
	for seq := uint64(1); ; seq++ {
		m, err := cio.GetMsg(ctx, seq)
		if err != nil {
			break
		}
		replayed = append(replayed, m.Header.Get(deadletter.HeaderReplayedFrom)+" "+m.Subject)
	}
	if want := []string{"1 cio.track", "5 cio.suppress"}; !slices.Equal(replayed, want) {
		t.Errorf("CIO holds the replays of %q; want %q", replayed, want)
	}
}

// TestRunDLQResolve runs dlq resolve as the binary does, against NATS and
// the Customer.io stand-in: broadcast 7 has a trigger created 2 s after its
// ambiguous request, broadcast 8 none. Without a terminal it only reports;
// replay keeps both and names resolve; --yes purges the first and replays
// the second. Without the App API key, or with a refused one, it says
// which setting to fix.
func TestRunDLQResolve(t *testing.T) {
	e := newNATSEnv(t)
	cio := ciotest.NewServer(t, ciotest.Options{CDPKey: "cdp", AppKey: cioTestKey})
	app, err := sink.NewApp(sink.AppOptions{URL: cio.AppURL(), APIKey: func() string { return cioTestKey }, Client: http.DefaultClient})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := app.Trigger(t.Context(), 7, []byte(`{"ids":["u-1"]}`)); err != nil {
		t.Fatal(err)
	}
	created := time.Unix(cio.Triggers()[0].Time.Unix(), 0)
	seedDLQ(t, e.js)
	for i, l := range []struct {
		body      string
		requested time.Time
	}{
		{`{"broadcast_id":7,"ids":["u-1"]}`, created.Add(-2 * time.Second)},
		{`{"broadcast_id":8,"ids":["u-2"]}`, created},
	} {
		m := deadletter.Msg("cio.broadcast", nil, []byte(l.body), deadletter.Record{
			Reason: deadletter.ReasonAmbiguous, Stream: "CIO", StreamSeq: uint64(i + 1), Deliveries: 1,
			Detail:    "broadcast: request may have reached Customer.io, not retried: 504 Gateway Timeout",
			FirstSeen: l.requested.Add(-time.Second), RequestedAt: l.requested, DeadLettered: l.requested.Add(time.Second),
		})
		if err := deadletter.Publish(t.Context(), e.js, m); err != nil {
			t.Fatal(err)
		}
	}
	vars := map[string]string{"NATS_URL": e.srv.URL(), "CIO_APP_URL": cio.AppURL(), "CIO_APP_API_KEY": cioTestKey, "RELAY_LOG_FORMAT": "text"}
	without := func(k string) map[string]string {
		m := maps.Clone(vars)
		delete(m, k)
		return m
	}
	with := func(k, v string) map[string]string {
		m := maps.Clone(vars)
		m[k] = v
		return m
	}
	tests := []struct {
		name     string
		vars     map[string]string
		args     []string
		wantCode int
		wantOut  []string
		wantErr  string
	}{
		{"report", vars, []string{"resolve"}, 0, []string{
			"seq 1: broadcast 7: a trigger (id 1) was created 2s after the request — probably delivered; purge?",
			"seq 2: broadcast 8: none from ", "— safe to replay",
			"checked 2 ambiguous triggers: 1 probably delivered, 1 safe to replay, 0 could not be checked",
			"nothing changed: run it on a terminal"}, ""},
		{"json", vars, []string{"resolve", "--json"}, 0, []string{`"seq":1,"broadcast_id":7,`, `"verdict":"probably_delivered","triggers":[{"id":"1",`, `"after_request_s":2}]`, `"verdict":"none","triggers":[]`}, "checked 2"},
		{"replay keeps them", vars, []string{"replay", "--reason", "ambiguous"}, 0, []string{"matched 2, replayed 0, failed 0, skipped 0, kept 2"}, `check it with "cio-relay dlq resolve 1"`},
		{"no key", without("CIO_APP_API_KEY"), []string{"resolve"}, 2, nil, "cio-relay dlq resolve: CIO_APP_API_KEY is not set"},
		{"key refused", with("CIO_APP_API_KEY", "a-track-key"), []string{"resolve", "--yes"}, 1, nil,
			"cio-relay dlq resolve: reading broadcast 7's triggers: the App API key (CIO_APP_API_KEY) was refused (401 Unauthorized)"},
		{"yes", vars, []string{"resolve", "--yes"}, 0, []string{"seq 1: purged", "seq 2: replayed to CIO", "purged 1, replayed 1, kept 0, failed 0"}, ""},
		{"nothing left", vars, []string{"resolve"}, 0, []string{"no ambiguous triggers match; nothing to resolve"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runDLQFor(t, tt.vars, "", tt.args...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("exit code %d, stderr %q; want %d, %q", code, errOut, tt.wantCode, tt.wantErr)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout does not say %q", w)
				}
			}
			if strings.Contains(out+errOut, "a-track-key") || strings.Contains(out+errOut, cioTestKey) {
				t.Error("the key was printed")
			}
		})
	}
	if got := len(cio.Triggers()); got != 1 {
		t.Errorf("%d triggers in Customer.io, want 1: resolve itself sends none (the replay is the worker's to send)", got)
	}
}

// TestDevNullIsNoTerminal: /dev/null, where a Job's standard input points,
// is a character device and no terminal: dlq must not wait on it for an
// answer, nor take it for a person.
func TestDevNullIsNoTerminal(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Errorf("%s is taken for a terminal", os.DevNull)
	}
}
