package dlqcli

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/sink"
)

// TestInWindow: which of a broadcast's triggers count as an ambiguous
// request's, and what the verdict line says.
func TestInWindow(t *testing.T) {
	req := time.Date(2026, 12, 1, 12, 0, 0, 700_000_000, time.UTC) // .7: created_at is whole seconds
	at := func(d time.Duration) int64 { return req.Add(d).Unix() }
	trig := func(id string, d time.Duration) sink.Trigger {
		return sink.Trigger{ID: sink.FlexString(id), CreatedAt: at(d)}
	}
	recorded := deadletter.Record{RequestedAt: req, DeadLettered: req.Add(time.Second)}
	tests := []struct {
		name     string
		rec      deadletter.Record
		triggers []sink.Trigger
		wantIDs  []string
		wantText string
	}{
		{"none at all", recorded, nil, nil, "none from 2026-12-01T11:59:30Z to 2026-12-01T12:05:00Z — safe to replay"},
		{"one 2s after", recorded, []sink.Trigger{trig("9", 2*time.Second)}, []string{"9"}, "a trigger (id 9) was created 2s after the request — probably delivered; purge?"},
		{"in the request's second", recorded, []sink.Trigger{trig("9", -500*time.Millisecond)}, []string{"9"}, "created 0s after the request"},
		{"clock skew: 20s before", recorded, []sink.Trigger{trig("4", -20*time.Second)}, []string{"4"}, "created 20s before the request"},
		{"too early: an hour before", recorded, []sink.Trigger{trig("1", -time.Hour)}, nil, "(the broadcast's one trigger was created outside it) — safe to replay"},
		{"just before the skew", recorded, []sink.Trigger{trig("1", -ClockSkew-time.Second)}, nil, "safe to replay"},
		{"at the window's end", recorded, []sink.Trigger{trig("5", DefaultResolveWindow)}, []string{"5"}, "created 5m after the request"},
		{"past the window", recorded, []sink.Trigger{trig("5", DefaultResolveWindow+time.Second)}, nil, "safe to replay"},
		{"several, nearest first", recorded, []sink.Trigger{trig("1", -time.Hour), trig("7", 90*time.Second), trig("6", -3*time.Second), trig("8", 4*time.Minute)},
			[]string{"6", "7", "8"}, "3 triggers in the window (ids 6, 7, 8; the nearest created 3s before the request) — probably delivered; purge?"},
		{"request time not recorded: publish to dead-lettering", deadletter.Record{FirstSeen: req.Add(-time.Minute), DeadLettered: req.Add(time.Hour)},
			[]sink.Trigger{trig("3", 30*time.Minute), trig("2", 2*time.Hour)}, []string{"3"}, "created 31m after the publish (request time not recorded)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := windowOf(tt.rec, time.Time{}, DefaultResolveWindow)
			fs := inWindow(w, tt.triggers)
			var ids []string
			for _, f := range fs {
				ids = append(ids, f.ID)
			}
			if !slices.Equal(ids, tt.wantIDs) {
				t.Errorf("triggers in the window %q, want %q", ids, tt.wantIDs)
			}
			if got := w.sentence(fs, len(tt.triggers)-len(fs)); !strings.Contains(got, tt.wantText) {
				t.Errorf("verdict %q, want it to contain %q", got, tt.wantText)
			}
		})
	}
}

// triggerList is a broadcast's triggers, as Customer.io would list them.
type triggerList map[int64][]sink.Trigger

func (l triggerList) Triggers(_ context.Context, id int64) (sink.Items[sink.Trigger], error) {
	if id == 404 {
		return sink.Items[sink.Trigger]{}, errors.New("404 Not Found: no such broadcast")
	}
	return sink.Items[sink.Trigger]{Items: l[id]}, nil
}

// putAmbiguous stores ambiguous triggers for broadcasts ids, requested
// at f.now, and returns nothing: the i-th has dead-letter sequence i+1.
func (f *fixture) putAmbiguous(t *testing.T, ids ...string) {
	t.Helper()
	for i, id := range ids {
		m := deadletter.Msg("cio.broadcast", nil, []byte(`{"broadcast_id":`+id+`,"ids":["u-1"]}`), deadletter.Record{
			Reason: deadletter.ReasonAmbiguous, Detail: "broadcast " + id + ": 504", Deliveries: 1, Stream: "CIO", StreamSeq: uint64(i + 1),
			FirstSeen: f.now.Add(-time.Second), RequestedAt: f.now, DeadLettered: f.now.Add(time.Second),
		})
		if err := deadletter.Publish(t.Context(), f.js, m); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReplayAsksFirstForAmbiguous: a replay of an ambiguous trigger, which
// may have messaged its audience already, is never unchecked by default:
// without a terminal it is kept and resolve named; on a terminal the
// operator is asked, and only yes replays it; --force replays it without a
// question.
func TestReplayAsksFirstForAmbiguous(t *testing.T) {
	tests := []struct {
		name        string
		env         Env
		args        []string
		wantReplays int
		wantErr     string
	}{
		{"no terminal: kept", Env{}, nil, 0, `kept: an ambiguous broadcast trigger: its request may have reached Customer.io, and a replay would then message its audience twice; check it with "cio-relay dlq resolve 1"`},
		{"no terminal, dry run: kept", Env{}, []string{"--dry-run"}, 0, `check it with "cio-relay dlq resolve 1"`},
		{"terminal, no", Env{Interactive: true, Stdin: strings.NewReader("n\n")}, nil, 0, "Replay it unchecked? [y/N] seq 1: kept: not replayed"},
		{"terminal, end of input", Env{Interactive: true}, nil, 0, "Replay it unchecked? [y/N] seq 1: kept"},
		{"terminal, dry run: not asked", Env{Interactive: true, Stdin: strings.NewReader("y\n")}, []string{"--dry-run"}, 0, "kept: an ambiguous broadcast trigger"},
		{"terminal, yes", Env{Interactive: true, Stdin: strings.NewReader("y\n")}, nil, 1, `"cio-relay dlq resolve 1" checks the broadcast's triggers first. Replay it unchecked? [y/N] `},
		{"force: not asked", Env{}, []string{"--force"}, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newBareFixture(t, 2*time.Minute)
			f.putAmbiguous(t, "7")
			code, _, errOut := f.run(t, t.Context(), tt.env, append([]string{"replay", "--reason", "ambiguous"}, tt.args...)...)
			if code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			if got := len(replaysIn(t, f.cio)); got != tt.wantReplays {
				t.Errorf("%d replays in CIO, want %d", got, tt.wantReplays)
			}
			if !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("stderr %q, want %q", errOut, tt.wantErr)
			}
			if tt.wantErr == "" && strings.Contains(errOut, "[y/N]") {
				t.Errorf("--force asked: %q", errOut)
			}
			if left := len(dlqSeqs(t, f.dlq)); left != 1-tt.wantReplays {
				t.Errorf("%d left in CIO_DLQ, want %d", left, 1-tt.wantReplays)
			}
		})
	}
}

// TestResolveCases: resolve against a list of triggers, the letters named
// or filtered, and what it does with what it cannot check.
func TestResolveCases(t *testing.T) {
	near := func(f *fixture) triggerList {
		return triggerList{7: {{ID: "70", CreatedAt: f.now.Add(2 * time.Second).Unix()}}, 8: {{ID: "80", CreatedAt: f.now.Add(-2 * time.Hour).Unix()}}}
	}
	tests := []struct {
		name     string
		ids      []string // broadcasts of the ambiguous letters 1, 2, …
		args     []string
		noLister bool
		wantCode int
		wantOut  []string
		wantErr  string
		wantLeft []uint64
		replays  int
	}{
		{"report only", []string{"7", "8"}, nil, false, 0,
			[]string{"seq 1: broadcast 7: a trigger (id 70) was created 2s after the request — probably delivered; purge?", "seq 2: broadcast 8: none from ", "nothing changed"},
			"", []uint64{1, 2}, 0},
		{"yes", []string{"7", "8"}, []string{"--yes"}, false, 0,
			[]string{"seq 1: purged", "seq 2: replayed to CIO", "purged 1, replayed 1, kept 0, failed 0"}, "", nil, 1},
		{"dry run with yes", []string{"7", "8"}, []string{"--yes", "--dry-run"}, false, 0, []string{"dry run: nothing changed"}, "", []uint64{1, 2}, 0},
		{"named letters only", []string{"7", "8", "8"}, []string{"--yes", "3"}, false, 0, []string{"seq 3: replayed", "checked 1 ambiguous trigger:"}, "", []uint64{1, 2}, 1},
		{"a named letter that is not there", []string{"7"}, []string{"9"}, false, 0, []string{"no ambiguous triggers match"}, "seq 9: no such dead letter", []uint64{1}, 0},
		{"a broadcast that cannot be read", []string{"404", "8"}, []string{"--yes"}, false, 1,
			[]string{"seq 1: broadcast 404: could not be checked: reading broadcast 404's triggers: 404 Not Found", "seq 2: replayed"}, "", []uint64{1}, 1},
		{"no App API key", []string{"7"}, nil, true, 1, nil, "needs the App API key: set CIO_APP_API_KEY", []uint64{1}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newBareFixture(t, 2*time.Minute)
			f.putAmbiguous(t, tt.ids...)
			env := Env{Triggers: near(f)}
			if tt.noLister {
				env.Triggers = nil
			}
			code, out, errOut := f.run(t, t.Context(), env, append([]string{"resolve"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d", code, tt.wantCode)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout does not say %q", w)
				}
			}
			if !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("stderr %q, want %q", errOut, tt.wantErr)
			}
			if got := dlqSeqs(t, f.dlq); !slices.Equal(got, tt.wantLeft) {
				t.Errorf("left in CIO_DLQ %v, want %v", got, tt.wantLeft)
			}
			if got := len(replaysIn(t, f.cio)); got != tt.replays {
				t.Errorf("%d replays in CIO, want %d", got, tt.replays)
			}
			noConsumersLeft(t, f.dlq)
		})
	}
}
