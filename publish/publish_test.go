package publish

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/internal/natstest"
)

// newJS starts NATS and, unless stream is "", a stream of that name on
// cio.> like the worker's.
func newJS(t *testing.T, stream string) (jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	_, js := natstest.Start(t).Connect(t)
	if stream == "" {
		return js, nil
	}
	s, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: stream, Subjects: []string{"cio.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	return js, s
}

// stored returns every message of s, in order.
func stored(t *testing.T, s jetstream.Stream) []*jetstream.RawStreamMsg {
	t.Helper()
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(t.Context(), seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestPublish(t *testing.T) {
	js, stream := newJS(t, "CIO")
	p, err := New(js, Options{Stream: "CIO", IDPrefix: "test-"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		typ        event.Type // Unknown: Publish, which reads the body's type
		body       string
		wantReason event.Reason // "": valid
		wantID     string
		wantWire   string
	}{
		{"track with its own id", event.Unknown, `{"type":"track", "userId":"u-1", "event":"Signed Up", "messageId":"m-1"}`, "",
			"m-1", `{"type":"track","userId":"u-1","event":"Signed Up","messageId":"m-1"}`},
		{"no messageId: one is made", event.Unknown, `{"type":"identify","userId":"u-2","traits":{"plan":"<pro>"}}`, "",
			"test-1", `{"messageId":"test-1","type":"identify","userId":"u-2","traits":{"plan":"<pro>"}}`},
		{"type given, not in the body", event.Page, `{"anonymousId":"a-3","name":"Home"}`, "",
			"test-2", `{"type":"page","messageId":"test-2","anonymousId":"a-3","name":"Home"}`},
		{"type given and in the body", event.Alias, `{"type":"alias","userId":"u-4","previousId":"a-4","messageId":"m-4"}`, "",
			"m-4", `{"type":"alias","userId":"u-4","previousId":"a-4","messageId":"m-4"}`},
		{"escaped key", event.Unknown, `{"typ\u0065":"screen","userId":"u-5","name":"S","messageId":"m-5"}`, "",
			"m-5", `{"typ\u0065":"screen","userId":"u-5","name":"S","messageId":"m-5"}`},

		{"no type", event.Unknown, `{"userId":"u","event":"E"}`, event.ReasonUnknownType, "", ""},
		{"unknown type", event.Unknown, `{"type":"purchase","userId":"u"}`, event.ReasonUnknownType, "", ""},
		{"type not a string", event.Unknown, `{"type":1,"userId":"u"}`, event.ReasonInvalidField, "", ""},
		{"type disagrees", event.Track, `{"type":"identify","userId":"u","event":"E"}`, event.ReasonTypeMismatch, "", ""},
		{"not JSON", event.Unknown, `{"type":"track",`, event.ReasonInvalidJSON, "", ""},
		{"not JSON, type given", event.Track, `{"userId":`, event.ReasonInvalidJSON, "", ""},
		{"an array", event.Unknown, `[{"type":"track"}]`, event.ReasonInvalidJSON, "", ""},
		{"null", event.Unknown, `null`, event.ReasonInvalidJSON, "", ""},
		{"not UTF-8", event.Unknown, "{\"type\":\"track\",\"userId\":\"\xff\"}", event.ReasonInvalidUTF8, "", ""},
		{"no user", event.Unknown, `{"type":"track","event":"E"}`, event.ReasonMissingUser, "", ""},
		{"no event", event.Track, `{"userId":"u"}`, event.ReasonMissingEvent, "", ""},
		{"empty messageId", event.Unknown, `{"type":"track","userId":"u","event":"E","messageId":""}`, event.ReasonInvalidField, "", ""},
		{"duplicate type", event.Unknown, `{"type":"track","type":"identify","userId":"u"}`, event.ReasonInvalidField, "", ""},
		{"traits not an object", event.Identify, `{"userId":"u","traits":"pro"}`, event.ReasonInvalidField, "", ""},
		{"timestamp not RFC 3339", event.Track, `{"userId":"u","event":"E","timestamp":"2026-11-29 01:02:03"}`, event.ReasonInvalidField, "", ""},
		{"too large", event.Unknown, `{"type":"track","userId":"u","event":"E","properties":{"x":"` + strings.Repeat("x", event.MaxCallBytes) + `"}}`,
			event.ReasonTooLarge, "", ""},
	}
	var want []string // wire forms, in publish order
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := p.PublishType(t.Context(), tt.typ, []byte(tt.body))
			if tt.wantReason != "" {
				var ie *event.InvalidError
				if !errors.As(err, &ie) || ie.Reason != tt.wantReason {
					t.Fatalf("error = %v; want an *event.InvalidError with reason %s", err, tt.wantReason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id != tt.wantID {
				t.Errorf("messageId = %q; want %q", id, tt.wantID)
			}
			want = append(want, tt.wantWire)
		})
	}
	if err := p.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}

	msgs := stored(t, stream)
	if len(msgs) != len(want) {
		t.Fatalf("stream holds %d calls; want %d", len(msgs), len(want))
	}
	var prep event.Preparer
	for i, m := range msgs {
		if string(m.Data) != want[i] {
			t.Errorf("call %d: stored %s; want %s", i, m.Data, want[i])
		}
		// What is stored passes the worker's check unchanged: its type
		// agrees with the subject and its messageId is the Nats-Msg-Id.
		again, err := prep.Prepare(nil, event.TypeOfSubject(m.Subject), m.Data, event.ID{Prefix: "worker-", Seq: 99})
		if err != nil || string(again) != string(m.Data) {
			t.Errorf("call %d on %s: the worker would make %s of it (%v)", i, m.Subject, again, err)
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); !strings.Contains(string(m.Data), `"messageId":"`+id+`"`) {
			t.Errorf("call %d: Nats-Msg-Id %q is not its messageId: %s", i, id, m.Data)
		}
	}
	if s := p.Stats(); s.Published != int64(len(want)) || s.Failed != 0 || s.Duplicates != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestPublishDuplicate(t *testing.T) {
	js, stream := newJS(t, "CIO")
	p, err := New(js, Options{})
	if err != nil {
		t.Fatal(err)
	}
	call := []byte(`{"type":"track","userId":"u","event":"E","messageId":"same"}`)
	for range 3 {
		if _, err := p.Publish(t.Context(), call); err != nil {
			t.Fatal(err)
		}
	}
	// Without a messageId of their own, two equal calls are two calls.
	for range 2 {
		if _, err := p.Publish(t.Context(), []byte(`{"type":"track","userId":"u","event":"E"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := len(stored(t, stream)); n != 3 {
		t.Errorf("stream holds %d calls; want 3", n)
	}
	if s := p.Stats(); s.Published != 5 || s.Duplicates != 2 {
		t.Errorf("stats = %+v; want 5 published, 2 of them duplicates", s)
	}
}

// TestPublishBounded publishes with at most one call in flight: every call
// is stored, in order.
func TestPublishBounded(t *testing.T) {
	js, stream := newJS(t, "CIO")
	p, err := New(js, Options{MaxPending: 1, IDPrefix: "b-"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if _, err := p.Publish(t.Context(), []byte(`{"type":"track","userId":"u","event":"E`+strconv.Itoa(i)+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	msgs := stored(t, stream)
	if len(msgs) != n {
		t.Fatalf("stream holds %d calls; want %d", len(msgs), n)
	}
	for i, m := range msgs {
		if !strings.Contains(string(m.Data), `"event":"E`+strconv.Itoa(i)+`"`) {
			t.Fatalf("call %d is %s", i, m.Data)
		}
	}
}

func TestPublishFailures(t *testing.T) {
	tests := []struct {
		name    string
		stream  string // created on cio.>; "" none
		expect  string // Options.Stream
		wantErr string
		retries bool          // sent again until the budget is spent
		budget  time.Duration // Options.RetryMaxElapsed
	}{
		// Another stream rejects it: sending it again would not help.
		{"another stream", "CIO", "ELSEWHERE", "expected stream does not match", false, 500 * time.Millisecond},
		// No responders is also what a stream between leaders answers.
		{"no stream", "", "", "no response from stream (gave up after", true, 500 * time.Millisecond},
		{"no stream, no retry", "", "", "no response from stream", false, NoRetry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js, _ := newJS(t, tt.stream)
			var reported []*PublishError
			p, err := New(js, Options{Stream: tt.expect, RetryMaxElapsed: tt.budget,
				OnFailure: func(pe *PublishError) { reported = append(reported, pe) }})
			if err != nil {
				t.Fatal(err)
			}
			id, err := p.Publish(t.Context(), []byte(`{"type":"track","userId":"u","event":"E"}`))
			if err != nil {
				t.Fatal(err)
			}
			err = p.Wait(t.Context())
			var pe *PublishError
			if !errors.As(err, &pe) || pe.MessageID != id || pe.Subject != "cio.track" || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Wait = %v; want a *PublishError for %s on cio.track containing %q", err, id, tt.wantErr)
			}
			if s := p.Stats(); s.Failed != 1 || s.Published != 0 || (s.Retries > 0) != tt.retries {
				t.Errorf("stats = %+v; want 1 failed, retried: %v", s, tt.retries)
			}
			if len(reported) != 1 || reported[0].MessageID != id {
				t.Errorf("OnFailure got %v, want the one failed call %s", reported, id)
			}
			if err := p.Wait(t.Context()); err != nil {
				t.Errorf("a second Wait = %v; want nil: the failure was reported", err)
			}
		})
	}
}

func TestWaitHonoursContext(t *testing.T) {
	js, _ := newJS(t, "")
	p, err := New(js, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(t.Context(), []byte(`{"type":"track","userId":"u","event":"E"}`)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := p.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait = %v; want context.Canceled", err)
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"defaults", Options{}, ""},
		{"prefix", Options{IDPrefix: "app-1.web:"}, ""},
		{"prefix needing escapes", Options{IDPrefix: `a"b`}, "IDPrefix"},
		{"prefix with a space", Options{IDPrefix: "a b"}, "IDPrefix"},
		{"negative pending", Options{MaxPending: -1}, "MaxPending"},
		{"negative ack timeout", Options{AckTimeout: -time.Second}, "AckTimeout"},
		{"negative retry budget", Options{RetryMaxElapsed: -time.Second}, "RetryMaxElapsed"},
		{"no retry", Options{RetryMaxElapsed: NoRetry}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(nil, tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if p.opts.MaxPending < 1 || p.opts.IDPrefix == "" || p.opts.AckTimeout <= 0 || p.opts.RetryMaxElapsed == 0 {
					t.Errorf("defaults not set: %+v", p.opts)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New error = %v; want one naming %s", err, tt.wantErr)
			}
		})
	}
	a, _ := New(nil, Options{})
	b, _ := New(nil, Options{})
	if a.opts.IDPrefix == b.opts.IDPrefix || len(a.opts.IDPrefix) != 33 {
		t.Errorf("default prefixes %q and %q: want 32 random hex digits and '-', new for each Publisher", a.opts.IDPrefix, b.opts.IDPrefix)
	}
}

func TestHeaderID(t *testing.T) {
	long := strings.Repeat("x", maxMsgIDHeader+1)
	tests := []struct {
		id, want string
	}{
		{"m-1", "m-1"},
		{"ünïcode", "ünïcode"},
		{strings.Repeat("x", maxMsgIDHeader), strings.Repeat("x", maxMsgIDHeader)},
		{long, "sha256-" + "…"},
		{"a\r\nNats-Expected-Stream: X", "sha256-" + "…"},
	}
	for _, tt := range tests {
		got := headerID(tt.id)
		if strings.HasSuffix(tt.want, "…") {
			if !strings.HasPrefix(got, "sha256-") || len(got) != 7+64 || got != headerID(tt.id) {
				t.Errorf("headerID(%q) = %q; want a stable sha256- hash", tt.id, got)
			}
			continue
		}
		if got != tt.want {
			t.Errorf("headerID(%q) = %q; want %q", tt.id, got, tt.want)
		}
	}
}

// TestPublishConcurrent publishes from several goroutines at once through
// one Publisher: every call is stored once, each with its own messageId.
func TestPublishConcurrent(t *testing.T) {
	js, stream := newJS(t, "CIO")
	p, err := New(js, Options{MaxPending: 8})
	if err != nil {
		t.Fatal(err)
	}
	const goroutines, each = 4, 50
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				call := `{"type":"track","userId":"u-` + strconv.Itoa(g) + `","event":"E` + strconv.Itoa(i) + `"}`
				if _, err := p.Publish(t.Context(), []byte(call)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := p.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	msgs := stored(t, stream)
	ids := map[string]bool{}
	for _, m := range msgs {
		ids[m.Header.Get(jetstream.MsgIDHeader)] = true
	}
	if len(msgs) != goroutines*each || len(ids) != goroutines*each {
		t.Errorf("stream holds %d calls with %d distinct ids; want %d of each", len(msgs), len(ids), goroutines*each)
	}
}
