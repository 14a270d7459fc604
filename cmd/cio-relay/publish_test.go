package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/internal/natstest"
)

// natsEnv is a NATS server for a cmd test and a client of it.
type natsEnv struct {
	srv *natstest.Server
	js  jetstream.JetStream
}

func newNATSEnv(t *testing.T) *natsEnv {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	return &natsEnv{srv: srv, js: js}
}

// cio creates the stream on cio.> as the worker does.
func (e *natsEnv) cio(t *testing.T) jetstream.Stream {
	t.Helper()
	s, err := e.js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "CIO", Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// lastSeq returns the last sequence of s.
func lastSeq(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// env is a getenv over vars.
func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// storedCalls returns "subject body" for every message of s after
// sequence after, in order, and checks that each carries its messageId as
// Nats-Msg-Id.
func storedCalls(t *testing.T, s jetstream.Stream, after uint64) []string {
	t.Helper()
	var out []string
	for seq := after + 1; seq <= lastSeq(t, s); seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); id == "" || !strings.Contains(string(m.Data), `"messageId":"`+id+`"`) {
			t.Errorf("%s: Nats-Msg-Id %q is not its messageId", m.Data, id)
		}
		out = append(out, m.Subject+" "+string(m.Data))
	}
	return out
}

const ndjson = `{"type":"track","userId":"u-1","event":"Signed Up","messageId":"m-1"}

{"type":"track","event":"No User"}
{"type":"identify", "userId": "u-2",
{"type":"identify", "userId": "u-2", "traits": {"plan": "pro"}, "messageId": "m-2"}` + "\r" + `
{"type":"track","userId":"u-1","event":"Signed Up","messageId":"m-1"}
{"type":"purchase","userId":"u-3"}
  {"type":"page","anonymousId":"a-4","name":"Home","messageId":"m-4"}  `

func TestRunPublish(t *testing.T) {
	e := newNATSEnv(t)
	stream := e.cio(t)
	long := `{"type":"track","userId":"u","event":"` + strings.Repeat("x", maxLine) + "\"}\n" +
		`{"type":"track","userId":"u","event":"After","messageId":"m-after"}` + "\n"
	good := []string{
		`cio.track {"type":"track","userId":"u-1","event":"Signed Up","messageId":"m-1"}`,
		`cio.identify {"type":"identify","userId":"u-2","traits":{"plan":"pro"},"messageId":"m-2"}`,
		`cio.page {"type":"page","anonymousId":"a-4","name":"Home","messageId":"m-4"}`,
	}
	invalid := []string{
		"line 3: invalid call (missing_user): track needs userId or anonymousId\n",
		"line 4: invalid call (invalid_json): ",
		`line 7: invalid call (unknown_type): type "purchase" is not one of`,
	}
	tests := []struct {
		name       string
		from       string // "file", or "stdin" as the args say
		args       []string
		input      string
		wantCode   int
		wantOut    string
		wantErr    []string
		wantStored []string
	}{
		{"file", "file", nil, ndjson, 1, "published 4 (1 already stored), invalid 3, failed 0", invalid, good},
		{"stdin", "stdin", nil, ndjson, 1, "published 4 (1 already stored), invalid 3", invalid, good},
		{"stdin as -", "stdin", []string{"-"}, ndjson, 1, "published 4 (1 already stored), invalid 3", invalid, good},
		{"strict", "file", []string{"--strict"}, ndjson, 1, "published 1, invalid 1", []string{invalid[0], "stopped at the first invalid line (--strict)"}, good[:1]},
		{"type for all lines", "stdin", []string{"--type", "track"}, `{"userId":"u-5","event":"E","messageId":"m-5"}` + "\n" + `{"type":"identify","userId":"u-6"}` + "\n",
			1, "published 1, invalid 1", []string{`line 2: invalid call (type_mismatch): type "identify" disagrees with the subject's "track"`},
			[]string{`cio.track {"type":"track","userId":"u-5","event":"E","messageId":"m-5"}`}},
		{"all valid", "stdin", []string{"-strict"}, good[0][len("cio.track "):] + "\n", 0, "published 1, invalid 0, failed 0", nil, good[:1]},
		{"a line too long", "file", nil, long, 1, "published 1, invalid 1", []string{"line 1: invalid call (too_large): line is longer than"},
			[]string{`cio.track {"type":"track","userId":"u","event":"After","messageId":"m-after"}`}},
		{"nothing", "stdin", nil, "\n\n", 0, "published 0, invalid 0", nil, nil},
		{"connection flag after the file", "file", []string{"-nats-url", e.srv.URL()}, ndjson, 1, "published 4 (1 already stored)", invalid, good},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Each case has messageIds of its own, as they are
			// de-duplicated across cases too.
			ids := strings.NewReplacer(`"m-`, `"c`+strconv.Itoa(i)+`-m-`)
			input := ids.Replace(tt.input)
			var wantStored []string
			for _, w := range tt.wantStored {
				wantStored = append(wantStored, ids.Replace(w))
			}
			args, stdin := tt.args, input
			if tt.from == "file" {
				file := filepath.Join(t.TempDir(), "calls.ndjson")
				if err := os.WriteFile(file, []byte(input), 0o600); err != nil {
					t.Fatal(err)
				}
				args, stdin = append([]string{file}, args...), ""
			}
			vars := map[string]string{"NATS_URL": e.srv.URL()}
			if slices.Contains(args, "-nats-url") {
				delete(vars, "NATS_URL")
			}
			after := lastSeq(t, stream)

			var out, errOut bytes.Buffer
			code := runPublish(t.Context(), args, env(vars), strings.NewReader(stdin), &out, &errOut)
			t.Logf("stdout:\n%sstderr:\n%s", out.String(), errOut.String())
			if code != tt.wantCode {
				t.Errorf("exit code %d; want %d", code, tt.wantCode)
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("summary %q; want %q", out.String(), tt.wantOut)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr lacks %q", w)
				}
			}
			if got := storedCalls(t, stream, after); strings.Join(got, "\n") != strings.Join(wantStored, "\n") {
				t.Errorf("stream holds\n %s\nwant\n %s", strings.Join(got, "\n "), strings.Join(wantStored, "\n "))
			}
		})
	}
}

// TestRunPublishTwice: publishing a file again within the duplicate window
// stores nothing new for calls with a messageId.
func TestRunPublishTwice(t *testing.T) {
	e := newNATSEnv(t)
	stream := e.cio(t)
	vars := env(map[string]string{"NATS_URL": e.srv.URL()})
	for i, want := range []string{"published 4 (1 already stored)", "published 4 (4 already stored)"} {
		var out bytes.Buffer
		runPublish(t.Context(), nil, vars, strings.NewReader(ndjson), &out, &bytes.Buffer{})
		if !strings.Contains(out.String(), want) {
			t.Errorf("run %d: summary %q; want %q", i+1, out.String(), want)
		}
	}
	if got := storedCalls(t, stream, 0); len(got) != 3 {
		t.Errorf("stream holds %d calls; want 3:\n%s", len(got), strings.Join(got, "\n"))
	}
}

// TestRunPublishIDPrefix: with --id-prefix, calls without a messageId get
// the same ids on every run of the same file, so a second run stores
// nothing new.
func TestRunPublishIDPrefix(t *testing.T) {
	e := newNATSEnv(t)
	stream := e.cio(t)
	vars := env(map[string]string{"NATS_URL": e.srv.URL()})
	const noIDs = `{"type":"track","userId":"u-1","event":"A"}
{"type":"track","userId":"u-1","event":"A"}
{"type":"identify","userId":"u-2"}
`
	for run := 1; run <= 2; run++ {
		var out, errOut bytes.Buffer
		if code := runPublish(t.Context(), []string{"--id-prefix", "import-7"}, vars, strings.NewReader(noIDs), &out, &errOut); code != 0 {
			t.Fatalf("run %d: exit %d: %s", run, code, errOut.String())
		}
	}
	got := storedCalls(t, stream, 0)
	if len(got) != 3 {
		t.Fatalf("stream holds %d calls after two runs; want 3:\n%s", len(got), strings.Join(got, "\n"))
	}
	for i, c := range got {
		if want := fmt.Sprintf(`"messageId":"import-7-%d"`, i+1); !strings.Contains(c, want) {
			t.Errorf("call %d: %s; want %s", i+1, c, want)
		}
	}
}

func TestRunPublishUsage(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{"help", []string{"-h"}, 0, "Usage: cio-relay publish"},
		{"bad type", []string{"--type", "purchase"}, 2, `--type: want identify, track, page, screen, group or alias, got "purchase"`},
		{"two files", []string{"a", "b"}, 2, "want at most one FILE"},
		{"bad max pending", []string{"--max-pending", "0"}, 2, "--max-pending: must be at least 1"},
		{"bad id prefix", []string{"--id-prefix", "a b"}, 2, "IDPrefix"},
		{"unknown setting", []string{"-nats-urll", "x"}, 2, "invalid configuration"},
		{"no such file", []string{filepath.Join(t.TempDir(), "none.ndjson")}, 1, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runPublish(t.Context(), tt.args, env(nil), strings.NewReader(""), &out, &errOut)
			if code != tt.wantCode || !strings.Contains(out.String()+errOut.String(), tt.want) {
				t.Errorf("exit code %d, output %q; want %d and %q", code, out.String()+errOut.String(), tt.wantCode, tt.want)
			}
		})
	}
}

// TestRunPublishReportsEachFailure: every call that is not stored is
// reported with its messageId, not only the first.
func TestRunPublishReportsEachFailure(t *testing.T) {
	e := newNATSEnv(t)
	e.cio(t)
	// The calls land in CIO, but must land in ELSEWHERE: each is rejected.
	vars := env(map[string]string{"NATS_URL": e.srv.URL(), "RELAY_STREAM": "ELSEWHERE"})
	const calls = `{"type":"track","userId":"u-1","event":"A","messageId":"f-1"}
{"type":"track","userId":"u-2","event":"A","messageId":"f-2"}
{"type":"identify","userId":"u-3","messageId":"f-3"}
`
	var out, errOut bytes.Buffer
	if code := runPublish(t.Context(), nil, vars, strings.NewReader(calls), &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut.String())
	}
	for _, want := range []string{
		"not stored: publishing call f-1 to cio.track: nats: API error: code=400 err_code=10060 description=expected stream does not match\n",
		"not stored: publishing call f-2 to cio.track: ",
		"not stored: publishing call f-3 to cio.identify: ",
		"cio-relay publish: 3 calls not stored (each reported above)\n",
	} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
		}
	}
	if !strings.Contains(out.String(), "published 0, invalid 0, failed 3") {
		t.Errorf("summary %q; want published 0, failed 3", out.String())
	}
}

// TestRunPublishRidesThroughALeaderKill: the command publishing 10,000
// calls to an R3 stream on a three-node cluster while the stream's leader
// is killed and restarted stores every call exactly once and exits 0.
func TestRunPublishRidesThroughALeaderKill(t *testing.T) {
	n := natstest.ScenarioEvents(10000)
	c := natstest.StartCluster(t, 3)
	_, js := c.Connect(t)
	stream, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "CIO", Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage, Replicas: 3, Duplicates: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}

	// Lines are written at a pace, so the command is mid-run when the
	// leader goes; written[k] closes after (k+1)/3 of them.
	in, w := io.Pipe()
	written := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := range n {
			if i > 0 && i%(n/3) == 0 && i/(n/3) <= len(written) {
				close(written[i/(n/3)-1])
			}
			<-tick.C
			if _, err := fmt.Fprintf(w, `{"type":"track","userId":"u-%d","event":"E"}`+"\n", i); err != nil {
				return
			}
		}
		w.Close()
	}()
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- runPublish(t.Context(), []string{"--id-prefix", "k"}, env(map[string]string{"NATS_URL": c.URL()}), in, &out, &errOut)
	}()

	<-written[0]
	leader := c.StreamLeader(t, js, "CIO")
	c.Node(leader).Kill(t)
	<-written[1]
	c.Node(leader).Restart(t)
	if code := <-done; code != 0 {
		t.Fatalf("exit %d; stdout %q; stderr:\n%s", code, out.String(), errOut.String())
	}
	t.Logf("killed and restarted node %d, the stream leader: %s", leader, strings.TrimSpace(out.String()))
	if !strings.Contains(out.String(), fmt.Sprintf("published %d", n)) {
		t.Errorf("summary %q; want published %d", out.String(), n)
	}
	got := storedCalls(t, stream, 0)
	ids := map[string]bool{}
	for _, call := range got {
		i := strings.Index(call, `"messageId":"`)
		ids[call[i:]] = true
	}
	if len(got) != n || len(ids) != n {
		t.Errorf("stream holds %d calls, %d distinct; want %d of each", len(got), len(ids), n)
	}
}
