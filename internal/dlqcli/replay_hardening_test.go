package dlqcli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// newBareFixture starts NATS with the CIO stream (duplicate window dup)
// and an empty CIO_DLQ.
func newBareFixture(t *testing.T, dup time.Duration) *fixture {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	ctx := t.Context()
	cio, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "CIO", Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage, Duplicates: dup,
	})
	if err != nil {
		t.Fatalf("creating CIO: %v", err)
	}
	dlq, err := js.CreateStream(ctx, deadletter.StreamConfig("CIO_DLQ", 30*24*time.Hour, -1))
	if err != nil {
		t.Fatalf("creating CIO_DLQ: %v", err)
	}
	return &fixture{js: js, cio: cio, dlq: dlq, now: time.Now().UTC().Truncate(time.Second)}
}

// publishOriginal stores body on subject in CIO, as a producer would, and
// returns it as stored.
func (f *fixture) publishOriginal(t *testing.T, subject string, h nats.Header, body []byte) *jetstream.RawStreamMsg {
	t.Helper()
	m := nats.NewMsg(subject)
	for k, vs := range h {
		m.Header[k] = vs
	}
	m.Data = body
	ack, err := f.js.PublishMsg(t.Context(), m)
	if err != nil {
		t.Fatalf("publishing %d bytes to %s: %v", len(body), subject, err)
	}
	raw, err := f.cio.GetMsg(t.Context(), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// putStub dead-letters orig as the worker does when the body and the
// dead-letter headers exceed NATS's max_payload: a stub without the body,
// pointing at orig's sequence.
func (f *fixture) putStub(t *testing.T, orig *jetstream.RawStreamMsg, reason string) {
	t.Helper()
	m := deadletter.Msg(orig.Subject, orig.Header, orig.Data, deadletter.Record{
		Reason: deadletter.Reason(reason), Status: 400, Detail: "too large for the API", Deliveries: 1,
		Stream: "CIO", StreamSeq: orig.Sequence, FirstSeen: orig.Time, MessageID: "mid-big", Version: "test",
	})
	if err := deadletter.Publish(t.Context(), f.js, deadletter.Stub(m)); err != nil {
		t.Fatal(err)
	}
}

// replaysIn returns the messages of CIO that replay a dead letter (they
// carry Cio-Relay-Replayed-From), by dead-letter sequence.
func replaysIn(t *testing.T, s jetstream.Stream) map[uint64][]*jetstream.RawStreamMsg {
	t.Helper()
	out := map[uint64][]*jetstream.RawStreamMsg{}
	for _, m := range stored(t, s) {
		v := m.Header.Get(deadletter.HeaderReplayedFrom)
		if v == "" {
			continue
		}
		seq, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CIO message %d: %s %q", m.Sequence, deadletter.HeaderReplayedFrom, v)
		}
		out[seq] = append(out[seq], m)
	}
	return out
}

// bigBody is a call near NATS's default max_payload (1 MiB): with the
// dead-letter headers it no longer fits, so the worker writes a stub.
func bigBody() []byte {
	var b bytes.Buffer
	b.WriteString(`{"broadcast_id":7,"ids":["`)
	for b.Len() < 1<<20-4096 {
		b.WriteString(`x`)
	}
	b.WriteString(`"]}`)
	return b.Bytes()
}

// TestReplayBodyOmittedStub: a dead letter written without its body (it did
// not fit in a NATS message) is replayed with the body read back from the
// original stream, or kept and reported when that is gone.
func TestReplayBodyOmittedStub(t *testing.T) {
	body := bigBody()
	tests := []struct {
		name string
		// setup stores the original and the stub, and returns the
		// original; it may remove or replace it afterwards.
		setup      func(t *testing.T, f *fixture) *jetstream.RawStreamMsg
		wantCode   int
		wantOut    string
		wantErr    string
		wantReplay bool
	}{
		{
			name: "original present: the full body is replayed",
			setup: func(t *testing.T, f *fixture) *jetstream.RawStreamMsg {
				orig := f.publishOriginal(t, "cio.broadcast", nats.Header{"X-Trace": {"big-1"}}, body)
				f.putStub(t, orig, "rejected")
				return orig
			},
			wantOut:    "matched 1, replayed 1",
			wantReplay: true,
		},
		{
			name: "original gone: kept and reported",
			setup: func(t *testing.T, f *fixture) *jetstream.RawStreamMsg {
				orig := f.publishOriginal(t, "cio.broadcast", nil, body)
				f.putStub(t, orig, "rejected")
				if err := f.cio.DeleteMsg(t.Context(), orig.Sequence); err != nil {
					t.Fatal(err)
				}
				return orig
			},
			wantCode: 1,
			wantOut:  "matched 1, replayed 0",
			wantErr:  "seq 1: kept: its body was left out of the dead letter",
		},
		{
			name: "another message at the sequence: kept and reported",
			setup: func(t *testing.T, f *fixture) *jetstream.RawStreamMsg {
				orig := f.publishOriginal(t, "cio.broadcast", nil, body)
				f.putStub(t, orig, "rejected")
				// The stream recreated: its sequence 1 is another message.
				if err := f.js.DeleteStream(t.Context(), "CIO"); err != nil {
					t.Fatal(err)
				}
				cio, err := f.js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "CIO", Subjects: []string{"cio.>"}})
				if err != nil {
					t.Fatal(err)
				}
				f.cio = cio
				f.publishOriginal(t, "cio.broadcast", nil, []byte(`{"broadcast_id":8,"ids":["other"]}`))
				return orig
			},
			wantCode: 1,
			wantOut:  "matched 1, replayed 0",
			wantErr:  "seq 1: kept: its body was left out of the dead letter",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newBareFixture(t, 2*time.Minute)
			orig := tt.setup(t, f)
			before := len(stored(t, f.cio))
			code, out, errOut := f.run(t, t.Context(), Env{}, "replay")
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("exit code %d, stdout %q, stderr %q; want %d, %q, %q", code, out, errOut, tt.wantCode, tt.wantOut, tt.wantErr)
			}
			replays := replaysIn(t, f.cio)[1]
			if !tt.wantReplay {
				if len(replays) != 0 || len(stored(t, f.cio)) != before {
					t.Errorf("published %d replays (%d bytes first); want none", len(replays), len(replays[0].Data))
				}
				if got := dlqSeqs(t, f.dlq); !slices.Equal(got, []uint64{1}) {
					t.Errorf("left in CIO_DLQ: %v; want the stub, 1", got)
				}
				return
			}
			if len(replays) != 1 {
				t.Fatalf("%d replays of the stub; want 1", len(replays))
			}
			r := replays[0]
			if !bytes.Equal(r.Data, orig.Data) || r.Subject != orig.Subject {
				t.Errorf("replayed %d bytes on %s; want the original's %d bytes on %s", len(r.Data), r.Subject, len(orig.Data), orig.Subject)
			}
			if r.Header.Get("X-Trace") != "big-1" || r.Header.Get(deadletter.HeaderMessageID) != "mid-big" {
				t.Errorf("replay headers %v; want the original's X-Trace and the messageId", r.Header)
			}
			if got := dlqSeqs(t, f.dlq); len(got) != 0 {
				t.Errorf("left in CIO_DLQ: %v; want nothing", got)
			}
		})
	}
}

// failingSender answers every batch with a 500, so the worker, at
// MaxDeliver 1 and without retries, dead-letters each call it gets as
// retries_exhausted: a poison call.
type failingSender struct{}

func (failingSender) SendBatch(context.Context, []byte) error {
	return &sink.StatusError{API: "cdp", Status: 500}
}

// startPoisonWorker runs a worker that dead-letters everything it receives.
func startPoisonWorker(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	w, err := worker.New(js, failingSender{}, worker.Options{
		ManageStreams: true, MaxDeliver: 1, NoRetry: true, FlushInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
}

// TestReplayCountAcrossReplayDeadLetterCycles replays a poison call that a
// real worker dead-letters again each time: the count of replays travels
// with it, the original publish time stays, and once replayed
// deadletter.DefaultMaxReplays times it is kept, unless --max-replays
// allows more or --force.
func TestReplayCountAcrossReplayDeadLetterCycles(t *testing.T) {
	f := newBareFixture(t, 2*time.Minute)
	nc, err := nats.Connect(f.js.Conn().ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	letters := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(deadletter.StreamSubjects, letters)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	next := func(t *testing.T) *nats.Msg {
		t.Helper()
		for {
			select {
			case m := <-letters:
				if m.Header.Get(deadletter.HeaderReason) != "" { // not the replay's own bookkeeping
					return m
				}
			case <-time.After(20 * time.Second):
				t.Fatal("no dead letter within 20s")
				return nil
			}
		}
	}

	orig := f.publishOriginal(t, "cio.track", nats.Header{"X-Trace": {"poison"}}, []byte(`{"userId":"u-1","event":"Poison"}`))
	startPoisonWorker(t, f.js)
	dl := next(t)
	if got := dl.Header.Get(deadletter.HeaderFirstSeen); got != orig.Time.UTC().Format(time.RFC3339Nano) {
		t.Fatalf("first dead letter: First-Seen %q; want %q", got, orig.Time.UTC().Format(time.RFC3339Nano))
	}

	cycle := func(t *testing.T, args ...string) (code int, out, errOut string) {
		t.Helper()
		return f.run(t, t.Context(), Env{}, append([]string{"replay", "--reason", "retries_exhausted"}, args...)...)
	}
	for n := 1; n <= deadletter.DefaultMaxReplays; n++ {
		code, out, _ := cycle(t)
		if code != 0 || !strings.Contains(out, "replayed 1") {
			t.Fatalf("replay %d: exit code %d, summary %q", n, code, out)
		}
		dl = next(t)
		if got := dl.Header.Get(deadletter.HeaderReplays); got != strconv.Itoa(n) {
			t.Errorf("dead letter after replay %d: %s %q; want %d", n, deadletter.HeaderReplays, got, n)
		}
		if got, want := dl.Header.Get(deadletter.HeaderFirstSeen), orig.Time.UTC().Format(time.RFC3339Nano); got != want {
			t.Errorf("dead letter after replay %d: First-Seen %q; want the original publish time %q", n, got, want)
		}
		if dl.Header.Get("X-Trace") != "poison" {
			t.Errorf("dead letter after replay %d lost the original header: %v", n, dl.Header)
		}
	}

	cioBefore := len(stored(t, f.cio))
	code, out, errOut := cycle(t)
	if code != 0 || !strings.Contains(out, "matched 1, replayed 0") || !strings.Contains(out, "kept 1") ||
		!strings.Contains(errOut, fmt.Sprintf("replayed %d times already", deadletter.DefaultMaxReplays)) {
		t.Errorf("replay %d: exit code %d, stdout %q, stderr %q; want it kept, saying why", deadletter.DefaultMaxReplays+1, code, out, errOut)
	}
	if got := len(stored(t, f.cio)); got != cioBefore {
		t.Errorf("replay past the limit published %d messages", got-cioBefore)
	}
	if info, err := f.dlq.Info(t.Context()); err != nil || info.State.Msgs != 1 {
		t.Errorf("CIO_DLQ holds %v messages (%v); want the kept letter", info.State.Msgs, err)
	}

	for _, args := range [][]string{{"--max-replays", strconv.Itoa(deadletter.DefaultMaxReplays + 1)}, {"--force"}} {
		code, out, _ := cycle(t, args...)
		if code != 0 || !strings.Contains(out, "replayed 1") {
			t.Fatalf("replay %v: exit code %d, summary %q", args, code, out)
		}
		next(t)
	}
}

// TestReplayRefusesValidationReasons: a call dead-lettered for what its
// bytes are would be dead-lettered again the same way, so replay keeps it
// unless --force, and says why.
func TestReplayRefusesValidationReasons(t *testing.T) {
	const n = 300
	f := newBareFixture(t, 2*time.Minute)
	var msgs []*nats.Msg
	for i := range n {
		msgs = append(msgs, deadletter.Msg("cio.track", nil, []byte(`{"userId":"u-`+strconv.Itoa(i)+`"}`), deadletter.Record{
			Reason: "missing_event", Detail: "track needs event, a non-empty string", Stream: "CIO", StreamSeq: uint64(i + 1),
		}))
	}
	f.publishAll(t, msgs)

	code, out, errOut := f.run(t, t.Context(), Env{}, "replay", "--reason", "missing_event")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("matched %d, replayed 0", n)) || !strings.Contains(out, fmt.Sprintf("kept %d", n)) {
		t.Errorf("exit code %d, summary %q; want all %d kept", code, out, n)
	}
	if !strings.Contains(errOut, "missing_event is a validation failure") || !strings.Contains(errOut, "--force") {
		t.Errorf("stderr %q does not say why they were kept, or how to replay them anyway", errOut)
	}
	if got := len(replaysIn(t, f.cio)); got != 0 {
		t.Errorf("%d of %d validation failures put back into CIO; want 0", got, n)
	}
	if got := len(dlqSeqs(t, f.dlq)); got != n {
		t.Errorf("%d left in CIO_DLQ; want %d", got, n)
	}

	code, out, _ = f.run(t, t.Context(), Env{}, "replay", "--reason", "missing_event", "--force", "--max", "2")
	if code != 0 || !strings.Contains(out, "matched 2, replayed 2") {
		t.Errorf("--force: exit code %d, summary %q; want 2 replayed", code, out)
	}
	if got := len(replaysIn(t, f.cio)); got != 2 {
		t.Errorf("--force replayed %d; want 2", got)
	}
}

// faultyJS makes DeleteMsg on the dead-letter stream fail for the
// sequences in fail: the number of failures still to come, -1 for all.
type faultyJS struct {
	jetstream.JetStream
	fail     map[uint64]*atomic.Int64
	attempts atomic.Int64
}

type faultyStream struct {
	jetstream.Stream
	js *faultyJS
}

func (j *faultyJS) Stream(ctx context.Context, name string) (jetstream.Stream, error) {
	s, err := j.JetStream.Stream(ctx, name)
	if err != nil || name != "CIO_DLQ" {
		return s, err
	}
	return faultyStream{Stream: s, js: j}, nil
}

var errDeleteFault = errors.New("injected: delete failed")

func (s faultyStream) DeleteMsg(ctx context.Context, seq uint64) error {
	if left, ok := s.js.fail[seq]; ok {
		s.js.attempts.Add(1)
		if n := left.Load(); n != 0 {
			left.Add(-1)
			return errDeleteFault
		}
	}
	return s.Stream.DeleteMsg(ctx, seq)
}

func failing(n int64) *atomic.Int64 {
	var a atomic.Int64
	a.Store(n)
	return &a
}

// awaitDuplicateWindow returns once CIO's duplicate window has passed for
// everything published so far: a probe id published now is accepted again.
func (f *fixture) awaitDuplicateWindow(t *testing.T) {
	t.Helper()
	probe := func() *jetstream.PubAck {
		ack, err := f.js.Publish(t.Context(), "cio.probe", nil, jetstream.WithMsgID("probe-"+t.Name()))
		if err != nil {
			t.Fatal(err)
		}
		return ack
	}
	probe()
	deadline := time.Now().Add(20 * time.Second)
	for probe().Duplicate {
		if time.Now().After(deadline) {
			t.Fatal("the duplicate window did not pass within 20s")
		}
		time.Sleep(10 * time.Millisecond) // polling the server: it has no event for this
	}
}

// TestReplayPublishedThenNotDeleted: a replay publishes a letter and then
// cannot delete it (the delete fails, or the process dies), and runs again
// after the target stream's duplicate window has passed, when JetStream no
// longer drops the second copy: the letter must not be published twice.
func TestReplayPublishedThenNotDeleted(t *testing.T) {
	const k = 3
	errCrash := errors.New("crash")
	tests := []struct {
		name         string
		fail         map[uint64]*atomic.Int64
		afterPublish func(seq uint64) error
		wantCode     int
		wantFirst    string // in the first run's summary
		wantAttempts int64  // to delete letter k in the first run
	}{
		{"delete fails every time", map[uint64]*atomic.Int64{k: failing(-1)}, nil, 1, "replayed 6, failed 1", 4},
		{"crash between publish and delete", nil, func(seq uint64) error {
			if seq == k {
				return errCrash
			}
			return nil
		}, 1, "matched 3, replayed 2", 0},
		// A delete that fails once is retried at once: no second run needed.
		{"delete fails once", map[uint64]*atomic.Int64{k: failing(1)}, nil, 0, "replayed 7, failed 0", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newBareFixture(t, 100*time.Millisecond)
			for i := range 7 {
				f.putDead(t, i, dead{"cio.track", "retries_exhausted", 503, `{"userId":"u-` + strconv.Itoa(i+1) + `","event":"E"}`, time.Minute})
			}
			js := &faultyJS{JetStream: f.js, fail: tt.fail}
			c, _, err := Parse([]string{"replay"})
			if err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			code := c.Run(t.Context(), Env{JS: js, Stdout: &out, Stderr: &errOut, afterPublish: tt.afterPublish})
			t.Logf("first run → %d\nstdout:\n%sstderr:\n%s", code, out.String(), errOut.String())
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantFirst) {
				t.Fatalf("first run: exit code %d, summary %q; want %d and %q", code, out.String(), tt.wantCode, tt.wantFirst)
			}
			if n := js.attempts.Load(); n != tt.wantAttempts {
				t.Errorf("first run: %d attempts to delete letter %d; want %d", n, k, tt.wantAttempts)
			}

			f.awaitDuplicateWindow(t)
			code, outs, _ := f.run(t, t.Context(), Env{}, "replay")
			if code != 0 {
				t.Errorf("second run: exit code %d, summary %q", code, outs)
			}
			replays := replaysIn(t, f.cio)
			for seq := uint64(1); seq <= 7; seq++ {
				if n := len(replays[seq]); n != 1 {
					t.Errorf("dead letter %d replayed %d times; want once", seq, n)
				}
			}
			if got := dlqSeqs(t, f.dlq); len(got) != 0 {
				t.Errorf("left in CIO_DLQ: %v; want nothing", got)
			}
		})
	}
}

// crashAt returns an afterPublish hook that abandons the replay right
// after the PubAck of dead letter k, as a crash would.
func crashAt(k uint64) func(uint64) error {
	return func(seq uint64) error {
		if seq == k {
			return errors.New("crash")
		}
		return nil
	}
}

// putExhausted stores n retries_exhausted dead letters of cio.track.
func (f *fixture) putExhausted(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		f.putDead(t, i, dead{"cio.track", "retries_exhausted", 503, `{"userId":"u-` + strconv.Itoa(i+1) + `","event":"E"}`, time.Minute})
	}
}

// intentsIn returns the sequences of the replay intents in s.
func intentsIn(t *testing.T, s jetstream.Stream) []uint64 {
	t.Helper()
	var out []uint64
	for _, m := range stored(t, s) {
		if deadletter.IsIntent(m.Subject) {
			out = append(out, m.Sequence)
		}
	}
	return out
}

// TestReplayEarlierReplayUnknowable: a replay stopped between its publish
// and its delete, and the target stream has since dropped the messages of
// that time: whether the letter was published cannot be told, so it is
// kept and reported with what to look for, unless --force.
func TestReplayEarlierReplayUnknowable(t *testing.T) {
	const k = 2
	f := newBareFixture(t, 100*time.Millisecond)
	f.putExhausted(t, 3)
	if code, _, _ := f.run(t, t.Context(), Env{afterPublish: crashAt(k)}, "replay"); code != 1 {
		t.Fatalf("first run: exit code %d; want 1", code)
	}
	f.awaitDuplicateWindow(t)
	if err := f.cio.Purge(t.Context()); err != nil { // as retention would
		t.Fatal(err)
	}

	code, out, errOut := f.run(t, t.Context(), Env{}, "replay")
	if code != 1 || !strings.Contains(out, "matched 2, replayed 1, failed 0, skipped 0, kept 1") ||
		!strings.Contains(errOut, "seq 2: kept: a replay that began at") || !strings.Contains(errOut, deadletter.HeaderReplayOf+": CIO_DLQ-2-") {
		t.Errorf("exit code %d, stdout %q, stderr %q; want letter 2 kept, saying what to look for", code, out, errOut)
	}
	if got := dlqSeqs(t, f.dlq); !slices.Equal(got, []uint64{k}) {
		t.Errorf("left in CIO_DLQ: %v; want %d", got, k)
	}
	if n := len(replaysIn(t, f.cio)[k]); n != 0 {
		t.Errorf("letter %d published %d times more; want 0", k, n)
	}

	code, out, _ = f.run(t, t.Context(), Env{}, "replay", "--force")
	if code != 0 || !strings.Contains(out, "matched 1, replayed 1") {
		t.Errorf("--force: exit code %d, stdout %q", code, out)
	}
	if n := len(replaysIn(t, f.cio)[k]); n != 1 {
		t.Errorf("--force: letter %d published %d times; want 1", k, n)
	}
	if got := intentsIn(t, f.dlq); len(got) != 0 {
		t.Errorf("replay intents left: %v", got)
	}
}

// TestReplayIntentsAreNotDeadLetters: the intent an interrupted replay
// leaves is not listed, counted or purged as a dead letter, and a later
// replay removes it once its letter is gone.
func TestReplayIntentsAreNotDeadLetters(t *testing.T) {
	const k = 2
	f := newBareFixture(t, 2*time.Minute)
	f.putExhausted(t, 3)
	if code, _, _ := f.run(t, t.Context(), Env{afterPublish: crashAt(k)}, "replay"); code != 1 {
		t.Fatalf("first run: exit code %d; want 1", code)
	}
	if got := intentsIn(t, f.dlq); len(got) != 1 {
		t.Fatalf("replay intents after the crash: %v; want 1", got)
	}

	_, out, _ := f.run(t, t.Context(), Env{}, "list", "--json", "--subject", "cio.>")
	var seqs []uint64
	for _, j := range jsonLines[jsonLetter](t, out) {
		seqs = append(seqs, j.Seq)
	}
	if !slices.Equal(seqs, []uint64{2, 3}) {
		t.Errorf("list: %v; want the dead letters 2 and 3 only", seqs)
	}
	_, out, _ = f.run(t, t.Context(), Env{}, "stats", "--json")
	if s := jsonLines[Stats](t, out)[0]; s.Total != 2 {
		t.Errorf("stats: total %d; want 2", s.Total)
	}
	if code, out, _ := f.run(t, t.Context(), Env{}, "purge", "--yes"); code != 0 || !strings.Contains(out, "deleted 2 of 2") {
		t.Errorf("purge: exit code %d, stdout %q", code, out)
	}
	if got := intentsIn(t, f.dlq); len(got) != 1 {
		t.Fatalf("purge removed the replay intent: %v left", got)
	}

	if code, out, _ := f.run(t, t.Context(), Env{}, "replay"); code != 0 || !strings.Contains(out, "matched 0") {
		t.Errorf("replay: exit code %d, stdout %q", code, out)
	}
	if got := intentsIn(t, f.dlq); len(got) != 0 {
		t.Errorf("the intent of a purged letter is still there: %v", got)
	}
}

func TestReplayDryRunSaysWhatIsKept(t *testing.T) {
	f := newFixture(t)
	f.putDead(t, len(letters), dead{"cio.track", "retries_exhausted", 503, `{"userId":"u-8","event":"Again"}`, time.Minute})
	// Replayed three times already.
	m := deadletter.Msg("cio.track", nil, []byte(`{"userId":"u-9","event":"Poison"}`), deadletter.Record{
		Reason: "retries_exhausted", Stream: "CIO", StreamSeq: 999, Replays: 3,
	})
	if err := deadletter.Publish(t.Context(), f.js, m); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := f.run(t, t.Context(), Env{}, "replay", "--dry-run")
	if code != 0 || !strings.Contains(out, "dry run: 7 would be replayed to CIO, 2 kept (see above); nothing changed") {
		t.Errorf("exit code %d, stdout %q", code, out)
	}
	if !strings.Contains(errOut, "seq 9: kept: replayed 3 times already") || !strings.Contains(errOut, "kept 1 with reason invalid_json") {
		t.Errorf("stderr %q does not say what is kept and why", errOut)
	}
	if strings.Contains(out, "\n3 ") || strings.Contains(out, "\n9 ") {
		t.Errorf("dry run lists kept letters as replayed:\n%s", out)
	}
	if n := len(stored(t, f.cio)); n != 0 {
		t.Errorf("dry run published %d", n)
	}
}

func TestSubjectMatches(t *testing.T) {
	tests := []struct {
		pattern, subject string
		want             bool
	}{
		{"cio.broadcast", "cio.broadcast", true},
		{"cio.broadcast", "cio.track", false},
		{"cio.*", "cio.track", true},
		{"cio.*", "cio.track.x", false},
		{"cio.>", "cio.track.x", true},
		{"cio.>", "cio", false},
		{"*.track", "cio.track", true},
		{">", "cio.track", true},
		{"cio.track.x", "cio.track", false},
		{"cio", "cio.track", false},
	}
	for _, tt := range tests {
		if got := subjectMatches(tt.pattern, tt.subject); got != tt.want {
			t.Errorf("subjectMatches(%q, %q) = %v; want %v", tt.pattern, tt.subject, got, tt.want)
		}
	}
}
