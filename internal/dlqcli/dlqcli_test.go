package dlqcli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
)

// dead is one dead letter the fixture stores.
type dead struct {
	subject string // original subject
	reason  string
	status  int
	body    string
	ago     time.Duration // dead-lettered this long before the fixture's now
}

// letters are stored in this order, so the i-th has dead-letter sequence
// i+1.
var letters = []dead{
	{"cio.track", "rejected", 400, `{"userId":"u-1","event":"Signed Up","properties":{"plan":"pro"}}`, 50 * time.Hour},
	{"cio.identify", "retries_exhausted", 503, `{"userId":"u-2","traits":{"email":"a@example.com"}}`, 26 * time.Hour},
	{"cio.track", "invalid_json", 0, "{\"userId\": \"u-3\",\n\t\"event\":", 5 * time.Hour},
	{"cio.page", "rejected", 400, `{"anonymousId":"a-4","name":"Home"}`, 4 * time.Hour},
	{"cio.track", "retries_exhausted", 500, `{"userId":"u-5","event":"Paid","properties":{"amount":"<&>"}}`, 2 * time.Hour},
	{"cio.group", "rejected", 422, "{\"userId\":\"u-6\",\"groupId\":\"\xff\xfe\"}", 30 * time.Minute},
	{"cio.track", "rejected", 400, `{"userId":"u-7","event":"Left"}`, 90 * time.Second},
}

// seqsWhere returns the dead-letter sequences of the letters keep accepts.
func seqsWhere(keep func(d dead) bool) []uint64 {
	var out []uint64
	for i, d := range letters {
		if keep(d) {
			out = append(out, uint64(i+1))
		}
	}
	return out
}

func all(dead) bool { return true }

func reasonIs(rs ...string) func(dead) bool {
	return func(d dead) bool { return slices.Contains(rs, d.reason) }
}

type fixture struct {
	js  jetstream.JetStream
	cio jetstream.Stream
	dlq jetstream.Stream
	now time.Time
}

// newFixture starts NATS with the CIO and CIO_DLQ streams and stores the
// letters in CIO_DLQ as the worker would.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	ctx := t.Context()
	cio, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "CIO", Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute,
	})
	if err != nil {
		t.Fatalf("creating CIO: %v", err)
	}
	dlq, err := js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", 30*24*time.Hour, -1))
	if err != nil {
		t.Fatalf("creating CIO_DLQ: %v", err)
	}
	f := &fixture{js: js, cio: cio, dlq: dlq, now: time.Now().UTC().Truncate(time.Second)}
	for i, d := range letters {
		f.putDead(t, i, d)
	}
	return f
}

// putDead stores d as the dead letter of CIO message i+1.
func (f *fixture) putDead(t *testing.T, i int, d dead) {
	t.Helper()
	h := nats.Header{}
	h.Set("X-Trace", "trace-"+strconv.Itoa(i+1))
	h.Set("Nats-Msg-Id", "original-id") // dropped by deadletter.Msg
	m := deadletter.Msg(d.subject, h, []byte(d.body), deadletter.Record{
		Reason:       deadletter.Reason(d.reason),
		Status:       d.status,
		Detail:       "detail " + strconv.Itoa(i+1),
		Deliveries:   uint64(i + 1),
		Stream:       "CIO",
		StreamSeq:    uint64(100 + i),
		FirstSeen:    f.now.Add(-d.ago - time.Minute),
		MessageID:    "mid-" + strconv.Itoa(i+1),
		Version:      "test",
		DeadLettered: f.now.Add(-d.ago),
	})
	if err := deadletter.Publish(t.Context(), f.js, m); err != nil {
		t.Fatal(err)
	}
}

// publishAll stores msgs with async publishes and waits for every PubAck.
func (f *fixture) publishAll(t *testing.T, msgs []*nats.Msg) {
	t.Helper()
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		fut, err := f.js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, fut)
	}
	for _, fut := range futures {
		select {
		case <-fut.Ok():
		case err := <-fut.Err():
			t.Fatal(err)
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
}

// run parses args and runs the command as cio-relay would.
func (f *fixture) run(t *testing.T, ctx context.Context, env Env, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	c, rest, err := Parse(args)
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	if len(rest) > 0 {
		t.Fatalf("Parse(%q): flags left for the connection: %q", args, rest)
	}
	var out, errOut bytes.Buffer
	env.JS, env.Stdout, env.Stderr = f.js, &out, &errOut
	env.Now = func() time.Time { return f.now }
	code = c.Run(ctx, env)
	t.Logf("cio-relay dlq %s → %d\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return code, out.String(), errOut.String()
}

// jsonLines decodes one JSON object a line.
func jsonLines[T any](t *testing.T, s string) []T {
	t.Helper()
	var out []T
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("decoding %q: %v", sc.Text(), err)
		}
		out = append(out, v)
	}
	return out
}

// stored returns every message of stream, in order.
func stored(t *testing.T, s jetstream.Stream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := t.Context()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// dlqSeqs returns the sequences of the dead letters in s, leaving out
// replay intents (the replay's bookkeeping).
func dlqSeqs(t *testing.T, s jetstream.Stream) []uint64 {
	t.Helper()
	var out []uint64
	for _, m := range stored(t, s) {
		if deadletter.IsIntent(m.Subject) {
			continue
		}
		out = append(out, m.Sequence)
	}
	return out
}

// noConsumersLeft checks that a command removed the consumer it read with.
func noConsumersLeft(t *testing.T, s jetstream.Stream) {
	t.Helper()
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Consumers != 0 {
		t.Errorf("%s has %d consumers after the command; want 0", info.Config.Name, info.State.Consumers)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		want     Command
		wantRest []string
		wantErr  string
	}{
		{"list defaults", []string{"list"}, Command{Name: CmdList, Limit: 100}, nil, ""},
		{"list filters", []string{"list", "--reason", "rejected,invalid_json", "-reason=retries_exhausted", "--subject", "cio.track", "--limit", "5", "--json"},
			Command{Name: CmdList, Limit: 5, JSON: true, Filter: Filter{
				Reasons: []string{"rejected", "invalid_json", "retries_exhausted"}, Subjects: []string{"cio.track"}}}, nil, ""},
		{"since age, until time", []string{"stats", "--since", "7d", "--until=2025-06-01T12:00:00Z"},
			Command{Name: CmdStats, Filter: Filter{Since: TimeSpec{Ago: 7 * 24 * time.Hour}, Until: TimeSpec{At: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}}}, nil, ""},
		{"connection flags pass through", []string{"list", "-nats-url", "nats://n:4222", "--json", "-dlq-stream=DLQ2", "-log-level", "debug"},
			Command{Name: CmdList, Limit: 100, JSON: true}, []string{"-nats-url", "nats://n:4222", "-dlq-stream=DLQ2", "-log-level", "debug"}, ""},
		{"show", []string{"show", "12", "--json"}, Command{Name: CmdShow, Seq: 12, JSON: true}, nil, ""},
		{"show with connection flag first", []string{"show", "-nats-url", "nats://n:4222", "7"}, Command{Name: CmdShow, Seq: 7}, []string{"-nats-url", "nats://n:4222"}, ""},
		{"replay", []string{"replay", "--dry-run", "--rate", "50", "--max", "3", "--subject", "cio.*"},
			Command{Name: CmdReplay, DryRun: true, Rate: 50, Max: 3, MaxReplays: deadletter.DefaultMaxReplays, Filter: Filter{Subjects: []string{"cio.*"}}}, nil, ""},
		{"replay forced, more replays, a subject left out", []string{"replay", "--force", "--max-replays", "5", "--exclude-subject", "cio.broadcast,cio.x.>"},
			Command{Name: CmdReplay, Force: true, MaxReplays: 5, Filter: Filter{Excluded: []string{"cio.broadcast", "cio.x.>"}}}, nil, ""},
		{"purge", []string{"purge", "--yes", "--reason", "invalid_json"}, Command{Name: CmdPurge, Yes: true, Filter: Filter{Reasons: []string{"invalid_json"}}}, nil, ""},
		{"resolve defaults", []string{"resolve"}, Command{Name: CmdResolve, Window: DefaultResolveWindow, MaxReplays: deadletter.DefaultMaxReplays}, nil, ""},
		{"resolve seqs and flags", []string{"resolve", "12", "--window", "2m", "14", "--yes", "--json", "--dry-run", "--since", "2h"},
			Command{Name: CmdResolve, Seqs: []uint64{12, 14}, Window: 2 * time.Minute, Yes: true, JSON: true, DryRun: true, MaxReplays: deadletter.DefaultMaxReplays,
				Filter: Filter{Since: TimeSpec{Ago: 2 * time.Hour}}}, nil, ""},
		{"resolve bad seq", []string{"resolve", "x"}, Command{}, nil, `want dead-letter sequence numbers`},
		{"resolve window 0", []string{"resolve", "--window", "0s"}, Command{}, nil, "--window must be positive"},
		{"resolve takes no reason", []string{"resolve", "--reason", "rejected"}, Command{Name: CmdResolve, Window: DefaultResolveWindow, MaxReplays: deadletter.DefaultMaxReplays},
			[]string{"--reason", "rejected"}, ""},

		{"no command", nil, Command{}, nil, "missing command"},
		{"unknown command", []string{"lst"}, Command{}, nil, `unknown command "lst"`},
		{"show without seq", []string{"show"}, Command{}, nil, "want one dead-letter sequence"},
		{"show bad seq", []string{"show", "x1"}, Command{}, nil, `got "x1"`},
		{"show seq 0", []string{"show", "0"}, Command{}, nil, `got "0"`},
		{"list extra argument", []string{"list", "cio.track"}, Command{}, nil, `unexpected argument "cio.track"`},
		{"negative limit", []string{"list", "--limit", "-1"}, Command{}, nil, "--limit must not be negative"},
		{"bad limit", []string{"list", "--limit", "many"}, Command{}, nil, "invalid value"},
		{"bad since", []string{"list", "--since", "yesterday"}, Command{}, nil, "positive age"},
		{"subject not under cio", []string{"list", "--subject", "track"}, Command{}, nil, "under cio."},
		{"subject with empty token", []string{"replay", "--subject", "cio..track"}, Command{}, nil, "empty token"},
		{"json is not a replay flag", []string{"replay", "--json"}, Command{Name: CmdReplay, MaxReplays: deadletter.DefaultMaxReplays}, []string{"--json"}, ""},
		{"max replays 0", []string{"replay", "--max-replays", "0"}, Command{}, nil, "--max-replays must be at least 1"},
		{"excluded subject not under cio", []string{"replay", "--exclude-subject", "broadcast"}, Command{}, nil, "--exclude-subject"},
		{"unknown reason", []string{"purge", "--yes", "--reason", "rejectd"}, Command{}, nil, `--reason: unknown reason "rejectd" (one of invalid_json,`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rest, err := Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v; want one containing %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.args, err)
			}
			if fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", tt.want) {
				t.Errorf("Parse(%q) =\n %+v\nwant\n %+v", tt.args, *got, tt.want)
			}
			if !slices.Equal(rest, tt.wantRest) {
				t.Errorf("rest = %q; want %q", rest, tt.wantRest)
			}
		})
	}
}

func TestParseHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"--help"}, {"list", "-h"}, {"replay", "--dry-run", "--help"}} {
		if _, _, err := Parse(args); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("Parse(%q) error = %v; want flag.ErrHelp", args, err)
		}
	}
}

func TestParseTimeSpec(t *testing.T) {
	now := time.Date(2025, 6, 10, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"2h", now.Add(-2 * time.Hour), false},
		{"90s", now.Add(-90 * time.Second), false},
		{"7d", now.Add(-7 * 24 * time.Hour), false},
		{"2025-06-01T10:00:00Z", time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC), false},
		{"2025-06-01T10:00:00.5+02:00", time.Date(2025, 6, 1, 8, 0, 0, 5e8, time.UTC), false},
		{"2025-06-01", time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC), false},
		{"-2h", time.Time{}, true},
		{"0s", time.Time{}, true},
		{"xd", time.Time{}, true},
		{"soon", time.Time{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			s, err := ParseTimeSpec(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseTimeSpec(%q) error = %v; want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && !s.Time(now).Equal(tt.want) {
				t.Errorf("ParseTimeSpec(%q).Time(now) = %v; want %v", tt.in, s.Time(now), tt.want)
			}
		})
	}
}

func TestOneLine(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{`{"a":1}`, 40, `{"a":1}`},
		{"{\n  \"a\":\t1\r\n}", 40, `{ "a": 1 }`},
		{"\x1b[31mred\x1b[0m", 40, " [31mred [0m"},
		{"bad \xff byte", 40, "bad \uFFFD byte"},
		{"abcdefghij", 5, "abcde…"},
		{"abcdé", 5, "abcd…"}, // é would cross the limit
		{"abc éf", 5, "abc…"}, // the space before a cut goes too
		{"", 40, ""},
	}
	for _, tt := range tests {
		if got := oneLine([]byte(tt.in), tt.max); got != tt.want {
			t.Errorf("oneLine(%q, %d) = %q; want %q", tt.in, tt.max, got, tt.want)
		}
	}
}

func TestPrettyBody(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"a":1,"b":["<&>"]}`, "{\n  \"a\": 1,\n  \"b\": [\n    \"<&>\"\n  ]\n}"},
		{"{not json\x1b", "{not json\uFFFD"},
		{"\xff\x00", `(not UTF-8; Go-quoted) "\xff\x00"`},
	}
	for _, tt := range tests {
		if got := prettyBody([]byte(tt.in)); got != tt.want {
			t.Errorf("prettyBody(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestAge(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"}, {59 * time.Second, "59s"}, {90 * time.Second, "1m"}, {5 * time.Hour, "5h"},
		{47 * time.Hour, "47h"}, {50 * time.Hour, "2d"},
	}
	for _, tt := range tests {
		if got := age(tt.d); got != tt.want {
			t.Errorf("age(%v) = %q; want %q", tt.d, got, tt.want)
		}
	}
}

func TestList(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name       string
		args       []string
		want       []uint64
		wantStderr string
	}{
		{"all", nil, seqsWhere(all), ""},
		{"by reason", []string{"--reason", "rejected"}, seqsWhere(reasonIs("rejected")), ""},
		{"by two reasons", []string{"--reason", "invalid_json,retries_exhausted"}, seqsWhere(reasonIs("invalid_json", "retries_exhausted")), ""},
		{"by subject", []string{"--subject", "cio.track"}, seqsWhere(func(d dead) bool { return d.subject == "cio.track" }), ""},
		{"by two subjects", []string{"--subject", "cio.page", "--subject", "cio.group"},
			seqsWhere(func(d dead) bool { return d.subject == "cio.page" || d.subject == "cio.group" }), ""},
		{"by wildcard and reason", []string{"--subject", "cio.*", "--reason", "retries_exhausted"}, seqsWhere(reasonIs("retries_exhausted")), ""},
		{"since an age", []string{"--since", "3h"}, seqsWhere(func(d dead) bool { return d.ago <= 3*time.Hour }), ""},
		{"until an age", []string{"--until", "1d"}, seqsWhere(func(d dead) bool { return d.ago > 24*time.Hour }), ""},
		{"between", []string{"--since", "26h", "--until", "4h"}, seqsWhere(func(d dead) bool { return d.ago <= 26*time.Hour && d.ago > 4*time.Hour }), ""},
		{"limit", []string{"--limit", "2"}, []uint64{1, 2}, "first 2 shown"},
		{"limit 0 is all", []string{"--limit", "0"}, seqsWhere(all), ""},
		{"nothing matches", []string{"--subject", "cio.alias"}, nil, "no dead letters match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := f.run(t, t.Context(), Env{}, append([]string{"list", "--json"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit code %d", code)
			}
			var got []uint64
			for _, j := range jsonLines[jsonLetter](t, out) {
				got = append(got, j.Seq)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("seqs = %v; want %v", got, tt.want)
			}
			if !strings.Contains(errOut, tt.wantStderr) {
				t.Errorf("stderr = %q; want it to contain %q", errOut, tt.wantStderr)
			}
		})
	}
	noConsumersLeft(t, f.dlq)
}

func TestListJSONFields(t *testing.T) {
	f := newFixture(t)
	_, out, _ := f.run(t, t.Context(), Env{}, "list", "--json")
	got := jsonLines[map[string]any](t, out)
	if len(got) != len(letters) {
		t.Fatalf("%d lines; want %d", len(got), len(letters))
	}
	for i, d := range letters {
		j := got[i]
		want := map[string]any{
			"seq":              float64(i + 1),
			"subject":          "dlq." + d.subject,
			"original_subject": d.subject,
			"reason":           d.reason,
			"status":           float64(d.status),
			"error":            "detail " + strconv.Itoa(i+1),
			"deliveries":       float64(i + 1),
			"stream":           "CIO",
			"stream_seq":       float64(100 + i),
			"first_seen":       f.now.Add(-d.ago - time.Minute).Format(time.RFC3339),
			"dead_lettered":    f.now.Add(-d.ago).Format(time.RFC3339),
			"message_id":       "mid-" + strconv.Itoa(i+1),
		}
		for k, v := range want {
			if j[k] != v {
				t.Errorf("letter %d: %s = %#v; want %#v", i+1, k, j[k], v)
			}
		}
		// The body is the original, byte for byte: as text when it can
		// be, as base64 otherwise.
		var body []byte
		switch {
		case j["body"] != nil && j["body_b64"] == nil:
			body = []byte(j["body"].(string))
		case j["body_b64"] != nil && j["body"] == nil:
			var b []byte
			if err := json.Unmarshal([]byte(strconv.Quote(j["body_b64"].(string))), &b); err != nil {
				t.Fatal(err)
			}
			body = b
		default:
			t.Fatalf("letter %d: want exactly one of body and body_b64, got %v", i+1, j)
		}
		if string(body) != d.body {
			t.Errorf("letter %d: body %q; want %q", i+1, body, d.body)
		}
	}
	if got[5]["body_b64"] == nil {
		t.Errorf("the letter whose body is not UTF-8 has no body_b64: %v", got[5])
	}
	if !strings.Contains(out, `<&>`) {
		t.Errorf("list --json escaped <, > or &: %s", out)
	}
}

func TestListTable(t *testing.T) {
	f := newFixture(t)
	code, out, _ := f.run(t, t.Context(), Env{}, "list", "--reason", "invalid_json,retries_exhausted")
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	wantLines := [][]string{
		{"SEQ", "SUBJECT", "REASON", "STATUS", "AGE", "BODY"},
		{"2", "cio.identify", "retries_exhausted", "503", "26h", `{"userId":"u-2","traits":{"email":"a@exa…`},
		{"3", "cio.track", "invalid_json", "-", "5h", `{"userId": "u-3", "event":`},
		{"5", "cio.track", "retries_exhausted", "500", "2h", `{"userId":"u-5","event":"Paid","properti…`},
	}
	if len(lines) != len(wantLines) {
		t.Fatalf("%d lines; want %d:\n%s", len(lines), len(wantLines), out)
	}
	for i, want := range wantLines {
		got := strings.Fields(lines[i])
		// The body column may hold spaces: compare it as the rest of the line.
		if n := len(want) - 1; len(got) < n || !slices.Equal(got[:n], want[:n]) || !strings.HasSuffix(lines[i], "  "+want[n]) {
			t.Errorf("line %d = %q; want columns %q", i, lines[i], want)
		}
	}
}

func TestStats(t *testing.T) {
	f := newFixture(t)
	count := func(keep func(d dead) bool, key func(d dead) string) map[string]int {
		m := map[string]int{}
		for _, d := range letters {
			if keep(d) {
				m[key(d)]++
			}
		}
		return m
	}
	reason := func(d dead) string { return d.reason }
	subject := func(d dead) string { return d.subject }
	at := func(ago time.Duration) *time.Time { t := f.now.Add(-ago); return &t }
	tests := []struct {
		name string
		args []string
		want Stats
	}{
		{"all", nil, Stats{Stream: "CIO_DLQ", Total: len(letters), ByReason: count(all, reason), BySubject: count(all, subject),
			Oldest: at(50 * time.Hour), Newest: at(90 * time.Second)}},
		{"rejected", []string{"--reason", "rejected"}, Stats{Stream: "CIO_DLQ", Total: 4, ByReason: map[string]int{"rejected": 4},
			BySubject: count(reasonIs("rejected"), subject), Oldest: at(50 * time.Hour), Newest: at(90 * time.Second)}},
		{"track in the last 3h", []string{"--subject", "cio.track", "--since", "3h"}, Stats{Stream: "CIO_DLQ", Total: 2,
			ByReason: map[string]int{"retries_exhausted": 1, "rejected": 1}, BySubject: map[string]int{"cio.track": 2},
			Oldest: at(2 * time.Hour), Newest: at(90 * time.Second)}},
		{"none", []string{"--subject", "cio.alias"}, Stats{Stream: "CIO_DLQ", ByReason: map[string]int{}, BySubject: map[string]int{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, _ := f.run(t, t.Context(), Env{}, append([]string{"stats", "--json"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit code %d", code)
			}
			got := jsonLines[Stats](t, out)
			if len(got) != 1 {
				t.Fatalf("%d JSON lines; want 1", len(got))
			}
			gotJSON, _ := json.Marshal(got[0])
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("stats =\n %s\nwant\n %s", gotJSON, wantJSON)
			}
		})
	}

	_, out, _ := f.run(t, t.Context(), Env{}, "stats")
	for _, want := range []string{"CIO_DLQ: 7 dead letters", "oldest  " + f.now.Add(-50*time.Hour).Format(time.RFC3339) + " (2d ago)",
		fmt.Sprintf("%-24s %8d", "rejected", 4), fmt.Sprintf("%-24s %8d", "cio.track", 4), fmt.Sprintf("%-24s %8d", "cio.identify", 1)} {
		if !strings.Contains(out, want) {
			t.Errorf("stats output lacks %q", want)
		}
	}
	noConsumersLeft(t, f.dlq)
}

func TestShow(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // in the output, in this order
	}{
		{"json body", []string{"1"}, 0, []string{
			"seq       1\n", "subject   dlq.cio.track (published on cio.track)\n",
			"  Cio-Relay-Deliveries: 1\n", "  Cio-Relay-Reason: rejected\n", "  Cio-Relay-Status: 400\n",
			"  X-Trace: trace-1\n", "body (", "{\n  \"userId\": \"u-1\",\n  \"event\": \"Signed Up\",\n  \"properties\": {\n    \"plan\": \"pro\"\n  }\n}\n"}},
		{"invalid json body", []string{"3"}, 0, []string{"Cio-Relay-Reason: invalid_json", "body (", "{\"userId\": \"u-3\",\n\t\"event\":\n"}},
		{"not utf-8", []string{"6"}, 0, []string{`(not UTF-8; Go-quoted) "{\"userId\":\"u-6\",\"groupId\":\"\xff\xfe\"}"`}},
		{"gone", []string{"99"}, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := f.run(t, t.Context(), Env{}, append([]string{"show"}, tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit code %d; want %d", code, tt.wantCode)
			}
			if code != 0 {
				if !strings.Contains(errOut, "no message 99 in CIO_DLQ") {
					t.Errorf("stderr = %q", errOut)
				}
				return
			}
			rest := out
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q after what came before", w)
				}
				rest = rest[i+len(w):]
			}
		})
	}

	_, out, _ := f.run(t, t.Context(), Env{}, "show", "--json", "5")
	got := jsonLines[showJSON](t, out)
	if len(got) != 1 || got[0].Seq != 5 || got[0].Reason != "retries_exhausted" || *got[0].Body != letters[4].body ||
		got[0].Headers.Get("X-Trace") != "trace-5" || got[0].Headers.Get(deadletter.HeaderMessageID) != "mid-5" {
		t.Errorf("show --json = %+v", got)
	}
}

func TestReplay(t *testing.T) {
	tests := []struct {
		name        string
		args        []string
		want        []uint64 // dead-letter sequences that must be replayed, in order
		wantSummary string
	}{
		{"by reason", []string{"--reason", "rejected"}, seqsWhere(reasonIs("rejected")), "matched 4, replayed 4, failed 0, skipped 0"},
		{"by subject, at most 2", []string{"--subject", "cio.track", "--max", "2", "--force"}, []uint64{1, 3}, "matched 2, replayed 2, failed 0, skipped 0"},
		// --max counts what is sent: the validation failure kept on every
		// run does not use it up.
		{"by subject, at most 2, a validation failure kept", []string{"--subject", "cio.track", "--max", "2"}, []uint64{1, 5}, "matched 3, replayed 2, failed 0, skipped 0, kept 1"},
		{"a subject left out", []string{"--exclude-subject", "cio.track", "--reason", "rejected"}, []uint64{4, 6}, "matched 2, replayed 2, failed 0, skipped 0, kept 0"},
		{"since, paced", []string{"--since", "3h", "--rate", "1000"}, seqsWhere(func(d dead) bool { return d.ago <= 3*time.Hour }), "matched 3, replayed 3"},
		{"all", []string{"--force"}, seqsWhere(all), "matched 7, replayed 7, failed 0, skipped 0"},
		{"all but the validation failure", nil, seqsWhere(func(d dead) bool { return d.reason != "invalid_json" }), "matched 7, replayed 6, failed 0, skipped 0, kept 1"},
		{"none", []string{"--reason", "missing_group_id"}, nil, "matched 0, replayed 0, failed 0, skipped 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			code, out, _ := f.run(t, t.Context(), Env{}, append([]string{"replay"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit code %d", code)
			}
			if !strings.Contains(out, tt.wantSummary) {
				t.Errorf("summary %q; want %q", out, tt.wantSummary)
			}
			checkReplayed(t, stored(t, f.cio), tt.want)
			var left []uint64
			for seq := uint64(1); seq <= uint64(len(letters)); seq++ {
				if !slices.Contains(tt.want, seq) {
					left = append(left, seq)
				}
			}
			if got := dlqSeqs(t, f.dlq); !slices.Equal(got, left) {
				t.Errorf("left in CIO_DLQ: %v; want %v", got, left)
			}
			noConsumersLeft(t, f.dlq)
		})
	}
}

// checkReplayed checks that msgs, the contents of CIO, are exactly the
// replays of dead letters want, in order and each once: the original
// subject and body bytes, the original headers, the messageId, where it
// came from, the dedupe id and the expected stream, and no other
// Cio-Relay-* header.
func checkReplayed(t *testing.T, msgs []*jetstream.RawStreamMsg, want []uint64) {
	t.Helper()
	var got []uint64
	for _, m := range msgs {
		seq, err := strconv.ParseUint(m.Header.Get(deadletter.HeaderReplayedFrom), 10, 64)
		if err != nil {
			t.Errorf("CIO message %d: %s: %v", m.Sequence, deadletter.HeaderReplayedFrom, err)
			continue
		}
		got = append(got, seq)
		d := letters[seq-1]
		if m.Subject != d.subject {
			t.Errorf("replay of %d: subject %q; want %q", seq, m.Subject, d.subject)
		}
		if !bytes.Equal(m.Data, []byte(d.body)) {
			t.Errorf("replay of %d: body %q; want %q", seq, m.Data, d.body)
		}
		wantHeader := nats.Header{
			"X-Trace":                     {"trace-" + strconv.FormatUint(seq, 10)},
			deadletter.HeaderMessageID:    {"mid-" + strconv.FormatUint(seq, 10)},
			deadletter.HeaderReplayedFrom: {strconv.FormatUint(seq, 10)},
			// The first replay of the call, which happened when the
			// dead letter says it was first seen.
			deadletter.HeaderReplays:   {"1"},
			deadletter.HeaderPublished: {m.Header.Get(deadletter.HeaderPublished)},
			deadletter.HeaderReplayOf:  {strings.TrimPrefix(m.Header.Get(jetstream.MsgIDHeader), "replay-")},
			// Stream, sequence and the time the dead letter was stored.
			jetstream.MsgIDHeader: {m.Header.Get(jetstream.MsgIDHeader)},
			// The replay refuses to land in any stream but CIO.
			jetstream.ExpectedStreamHeader: {"CIO"},
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); !strings.HasPrefix(id, "replay-CIO_DLQ-"+strconv.FormatUint(seq, 10)+"-") {
			t.Errorf("replay of %d: Nats-Msg-Id %q", seq, id)
		}
		if fmt.Sprint(m.Header) != fmt.Sprint(wantHeader) {
			t.Errorf("replay of %d: headers\n %v\nwant\n %v", seq, m.Header, wantHeader)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("CIO holds the replays of %v; want %v", got, want)
	}
}

func TestReplayDryRun(t *testing.T) {
	f := newFixture(t)
	code, out, _ := f.run(t, t.Context(), Env{}, "replay", "--dry-run", "--reason", "rejected")
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !strings.Contains(out, "dry run: 4 would be replayed to CIO; nothing changed") {
		t.Errorf("summary missing")
	}
	for _, seq := range seqsWhere(reasonIs("rejected")) {
		if !strings.Contains(out, "\n"+strconv.FormatUint(seq, 10)+" ") {
			t.Errorf("dry run does not list %d", seq)
		}
	}
	if msgs := stored(t, f.cio); len(msgs) != 0 {
		t.Errorf("dry run published %d messages", len(msgs))
	}
	if got := dlqSeqs(t, f.dlq); len(got) != len(letters) {
		t.Errorf("dry run left %v in CIO_DLQ; want all %d", got, len(letters))
	}
}

// TestReplayInterrupted stops a replay at the k-th message, either as a
// crash between its publish and its delete or as a Ctrl-C, then replays
// again: CIO must end up with exactly one copy of each, CIO_DLQ empty.
func TestReplayInterrupted(t *testing.T) {
	const k = 3
	errCrash := errors.New("crash")
	tests := []struct {
		name string
		// hook runs after the PubAck of each message, with the context's
		// cancel.
		hook func(cancel context.CancelFunc) func(seq uint64) error
		// wantLeft is what the first run leaves in CIO_DLQ.
		wantLeft  []uint64
		wantDups  string // in the second run's summary
		wantError string // in the first run's stderr
	}{
		{
			name: "crash between publish and delete",
			hook: func(context.CancelFunc) func(uint64) error {
				return func(seq uint64) error {
					if seq == k {
						return errCrash
					}
					return nil
				}
			},
			wantLeft:  []uint64{3, 4, 5, 6, 7},
			wantDups:  "replayed 5 (1 already in CIO)",
			wantError: "crash",
		},
		{
			name: "cancelled: finishes the message in hand",
			hook: func(cancel context.CancelFunc) func(uint64) error {
				return func(seq uint64) error {
					if seq == k {
						cancel()
					}
					return nil
				}
			},
			wantLeft:  []uint64{4, 5, 6, 7},
			wantDups:  "replayed 4, failed 0",
			wantError: "interrupted",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			code, _, errOut := f.run(t, ctx, Env{afterPublish: tt.hook(cancel)}, "replay", "--force")
			if code != 1 || !strings.Contains(errOut, tt.wantError) {
				t.Fatalf("first run: exit code %d, stderr %q; want 1 and %q", code, errOut, tt.wantError)
			}
			if got := dlqSeqs(t, f.dlq); !slices.Equal(got, tt.wantLeft) {
				t.Fatalf("first run left %v in CIO_DLQ; want %v", got, tt.wantLeft)
			}
			noConsumersLeft(t, f.dlq)

			code, out, _ := f.run(t, t.Context(), Env{}, "replay", "--force")
			if code != 0 || !strings.Contains(out, tt.wantDups) {
				t.Fatalf("second run: exit code %d, summary %q; want 0 and %q", code, out, tt.wantDups)
			}
			checkReplayed(t, stored(t, f.cio), seqsWhere(all))
			if got := dlqSeqs(t, f.dlq); len(got) != 0 {
				t.Errorf("left in CIO_DLQ: %v; want nothing", got)
			}
		})
	}
}

// TestReplayStopsAtItsStart: a message dead-lettered while a replay runs
// (as a replayed call the worker rejects again) waits for the next run.
func TestReplayStopsAtItsStart(t *testing.T) {
	f := newFixture(t)
	again := dead{"cio.track", "rejected", 400, `{"userId":"u-8","event":"Again"}`, 0}
	hook := func(seq uint64) error {
		if seq == 1 {
			f.putDead(t, len(letters), again)
		}
		return nil
	}
	code, out, _ := f.run(t, t.Context(), Env{afterPublish: hook}, "replay", "--reason", "rejected")
	if code != 0 || !strings.Contains(out, "matched 4, replayed 4") {
		t.Fatalf("exit code %d, summary %q", code, out)
	}
	// The new letter's sequence follows the replay intent of letter 1.
	got := dlqSeqs(t, f.dlq)
	if len(got) != 4 || !slices.Equal(got[:3], []uint64{2, 3, 5}) || got[3] <= uint64(len(letters)) {
		t.Errorf("left in CIO_DLQ: %v; want 2, 3, 5 and the new letter", got)
	}
}

func TestReplaySkipsWhatIsNotADeadLetter(t *testing.T) {
	f := newFixture(t)
	if _, err := f.js.Publish(t.Context(), "dlq.cio.track", []byte(`{"userId":"u-9","event":"Manual"}`)); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := f.run(t, t.Context(), Env{}, "replay", "--subject", "cio.track", "--force")
	if code != 0 || !strings.Contains(out, "matched 5, replayed 4, failed 0, skipped 1") || !strings.Contains(errOut, "seq 8: skipped: not a dead letter") {
		t.Fatalf("exit code %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got := dlqSeqs(t, f.dlq); !slices.Contains(got, 8) {
		t.Errorf("the message that is not a dead letter was removed: %v", got)
	}
}

func TestReplayFailsWithoutTargetStream(t *testing.T) {
	f := newFixture(t)
	code, out, errOut := f.run(t, t.Context(), Env{Stream: "ELSEWHERE"}, "replay", "--reason", "invalid_json", "--force")
	if code != 1 || !strings.Contains(out, "matched 1, replayed 0, failed 1") || !strings.Contains(errOut, "seq 3: publishing to cio.track (stream ELSEWHERE)") {
		t.Fatalf("exit code %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got := dlqSeqs(t, f.dlq); len(got) != len(letters) {
		t.Errorf("a failed replay deleted dead letters: %v left", got)
	}
}

func TestPurge(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		stdin    string
		wantCode int
		wantOut  string
		wantLeft []uint64
	}{
		{"yes flag", []string{"--yes", "--reason", "rejected"}, "", 0, "deleted 4 of 4 matching dead letters from CIO_DLQ",
			seqsWhere(func(d dead) bool { return d.reason != "rejected" })},
		{"answered y", []string{"--subject", "cio.track", "--until", "3h"}, "y\n", 0, "deleted 2 of 2",
			seqsWhere(func(d dead) bool { return d.subject != "cio.track" || d.ago <= 3*time.Hour })},
		{"answered n", []string{"--reason", "rejected"}, "n\n", 1, "", seqsWhere(all)},
		{"no answer", nil, "", 1, "", seqsWhere(all)},
		{"nothing matches", []string{"--reason", "missing_group_id"}, "", 0, "no dead letters match; nothing deleted", seqsWhere(all)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			code, out, errOut := f.run(t, t.Context(), Env{Stdin: strings.NewReader(tt.stdin)}, append([]string{"purge"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) {
				t.Fatalf("exit code %d, stdout %q; want %d and %q", code, out, tt.wantCode, tt.wantOut)
			}
			asked := strings.Contains(errOut, "? [y/N]")
			if wantAsk := !slices.Contains(tt.args, "--yes") && tt.wantOut != "no dead letters match; nothing deleted"; asked != wantAsk {
				t.Errorf("asked = %v; want %v (stderr %q)", asked, wantAsk, errOut)
			}
			if got := dlqSeqs(t, f.dlq); !slices.Equal(got, tt.wantLeft) {
				t.Errorf("left in CIO_DLQ: %v; want %v", got, tt.wantLeft)
			}
			if msgs := stored(t, f.cio); len(msgs) != 0 {
				t.Errorf("purge published %d messages", len(msgs))
			}
			noConsumersLeft(t, f.dlq)
		})
	}
}

// TestLargeStream walks a stream of many fetch batches: every message is
// met once and in order, and filters hold across batch boundaries.
func TestLargeStream(t *testing.T) {
	f := newFixture(t)
	const n = 5*fetchBatch + 17
	ctx := t.Context()
	var msgs []*nats.Msg
	for i := range n {
		reason := "rejected"
		if i%3 == 0 {
			reason = "retries_exhausted"
		}
		msgs = append(msgs, deadletter.Msg("cio.track", nil, []byte(`{"userId":"bulk","event":"E`+strconv.Itoa(i)+`"}`),
			deadletter.Record{Reason: deadletter.Reason(reason), Stream: "CIO", StreamSeq: uint64(1000 + i), DeadLettered: f.now}))
	}
	f.publishAll(t, msgs)

	_, out, _ := f.run(t, ctx, Env{}, "list", "--json", "--limit", "0", "--reason", "retries_exhausted", "--since", "1m")
	got := jsonLines[jsonLetter](t, out)
	wantN := (n + 2) / 3
	if len(got) != wantN {
		t.Fatalf("listed %d; want %d", len(got), wantN)
	}
	for i, j := range got {
		if want := uint64(len(letters) + 1 + 3*i); j.Seq != want {
			t.Fatalf("line %d: seq %d; want %d", i, j.Seq, want)
		}
	}

	_, out, _ = f.run(t, ctx, Env{}, "stats", "--json")
	s := jsonLines[Stats](t, out)[0]
	if s.Total != n+len(letters) || s.BySubject["cio.track"] != n+4 {
		t.Errorf("stats = %+v", s)
	}
	noConsumersLeft(t, f.dlq)
}

func TestMissingStream(t *testing.T) {
	f := newFixture(t)
	code, _, errOut := f.run(t, t.Context(), Env{DLQStream: "NOPE"}, "stats")
	if code != 1 || !strings.Contains(errOut, "dead-letter stream NOPE not found") {
		t.Errorf("exit code %d, stderr %q", code, errOut)
	}
}

// TestWalkRecovers disturbs a walk's consumer in the middle of the walk:
// the walk goes on from where it was with a new consumer and meets every
// message once, in order.
func TestWalkRecovers(t *testing.T) {
	// The ordered consumer deletes the consumer it replaces in the
	// background: one listed may be gone by the time it is used.
	deleteConsumers := func(t *testing.T, s jetstream.Stream) {
		for name := range s.ConsumerNames(t.Context()).Name() {
			if err := s.DeleteConsumer(t.Context(), name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				t.Fatalf("deleting consumer %s: %v", name, err)
			}
		}
	}
	// steal fetches n messages from the walk's consumer, as a fetch the
	// client gave up on and the server answered later: messages delivered
	// where nobody reads them.
	steal := func(n int) func(t *testing.T, s jetstream.Stream) {
		return func(t *testing.T, s jetstream.Stream) {
			for name := range s.ConsumerNames(t.Context()).Name() {
				c, err := s.Consumer(t.Context(), name)
				if errors.Is(err, jetstream.ErrConsumerNotFound) {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				batch, err := c.FetchNoWait(n)
				if err != nil {
					t.Fatal(err)
				}
				for range batch.Messages() {
				}
			}
		}
	}
	tests := []struct {
		name    string
		total   int      // messages in the stream
		at      []uint64 // sequences at which to disturb
		disturb func(t *testing.T, s jetstream.Stream)
	}{
		// As the server does after inactiveThreshold, when the output is
		// piped to a pager nobody scrolls.
		{"consumer removed", 2*fetchBatch + 12, []uint64{3, fetchBatch + 10}, deleteConsumers},
		{"messages lost", 2*fetchBatch + 12, []uint64{3, fetchBatch + 10}, steal(10)},
		// The walk's next fetch finds nothing pending: the end, but for
		// the messages delivered elsewhere.
		{"messages lost at the end", 2 * fetchBatch, []uint64{3}, steal(fetchBatch)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			for i := len(letters); i < tt.total; i++ {
				f.putDead(t, i, dead{"cio.track", "rejected", 400, `{"userId":"u","event":"E"}`, time.Minute})
			}
			var seqs []uint64
			_, err := walk(t.Context(), f.dlq, Filter{}, f.now, walkOpts{headersOnly: true}, func(l *Letter) error {
				seqs = append(seqs, l.Seq)
				if slices.Contains(tt.at, l.Seq) {
					tt.disturb(t, f.dlq)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(seqs) != tt.total {
				t.Fatalf("walked %d messages; want %d", len(seqs), tt.total)
			}
			for i, seq := range seqs {
				if seq != uint64(i+1) {
					t.Fatalf("message %d has seq %d; want %d", i, seq, i+1)
				}
			}
			noConsumersLeft(t, f.dlq)
		})
	}
}
