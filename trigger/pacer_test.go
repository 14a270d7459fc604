package trigger_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/trigger"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func mustParse(t *testing.T, body string) *trigger.Request {
	t.Helper()
	r, err := trigger.Parse([]byte(body))
	if err != nil {
		t.Fatalf("Parse(%s): %v", body, err)
	}
	return r
}

func newPacer(t *testing.T, opts trigger.PacerOptions) *trigger.Pacer[int] {
	t.Helper()
	p, err := trigger.NewPacer[int](opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// release is one request a test expects: its body and the items it covers.
type release struct {
	body  string
	items []int
}

func TestPacerCoalescing(t *testing.T) {
	const ids = `"id_ignore_missing":true`
	const emails = `"email_ignore_missing":true`
	tests := []struct {
		name   string
		opts   trigger.PacerOptions
		bodies []string // all broadcast 1, added in order, item i for bodies[i]
		want   []release
	}{
		{
			name: "ids merged, de-duplicated in first-seen order",
			bodies: []string{
				`{"broadcast_id":1,"ids":["a","b"],"data":{"x":1},` + ids + `}`,
				`{"broadcast_id":1,"ids":["b","c","a"],"data":{"x":1},` + ids + `}`,
				`{"broadcast_id":1,"data":{"x":1},` + ids + `,"ids":["d","c"]}`,
			},
			want: []release{{`{"ids":["a","b","c","d"],"data":{"x":1},"id_ignore_missing":true}`, []int{0, 1, 2}}},
		},
		{
			name: "a string id and a number with the same digits are one person",
			bodies: []string{
				`{"broadcast_id":1,"ids":[5],` + ids + `}`,
				`{"broadcast_id":1,"ids":["5",6],` + ids + `}`,
			},
			want: []release{{`{"ids":[5,6],"id_ignore_missing":true}`, []int{0, 1}}},
		},
		{
			name: "emails compared case-insensitively",
			bodies: []string{
				`{"broadcast_id":1,"emails":["Ann@x.io"],` + emails + `}`,
				`{"broadcast_id":1,"emails":["ann@X.io","bob@x.io"],` + emails + `}`,
			},
			want: []release{{`{"emails":["Ann@x.io","bob@x.io"],"email_ignore_missing":true}`, []int{0, 1}}},
		},
		{
			name: "different data never merged",
			bodies: []string{
				`{"broadcast_id":1,"ids":["a"],"data":{"x":1},` + ids + `}`,
				`{"broadcast_id":1,"ids":["b"],"data":{"x":2},` + ids + `}`,
				`{"broadcast_id":1,"ids":["c"],"data":{"x":1},` + ids + `}`,
				`{"broadcast_id":1,"ids":["d"],"data":{"x":1,"y":2},` + ids + `}`,
				`{"broadcast_id":1,"ids":["e"],` + ids + `}`,
			},
			want: []release{
				{`{"ids":["a","c"],"data":{"x":1},"id_ignore_missing":true}`, []int{0, 2}},
				{`{"ids":["b"],"data":{"x":2},"id_ignore_missing":true}`, []int{1}},
				{`{"ids":["d"],"data":{"x":1,"y":2},"id_ignore_missing":true}`, []int{3}},
				{`{"ids":["e"],"id_ignore_missing":true}`, []int{4}},
			},
		},
		{
			name: "data keys in another order are different data; whitespace is not",
			bodies: []string{
				`{"broadcast_id":1,"ids":["a"],"data":{"x":1,"y":2},` + ids + `}`,
				`{"broadcast_id":1,"ids":["b"],"data":{"y":2,"x":1},` + ids + `}`,
				`{"broadcast_id":1, "ids": ["c"], "data": { "x": 1, "y": 2 }, "id_ignore_missing": true}`,
			},
			want: []release{
				{`{"ids":["a","c"],"data":{"x":1,"y":2},"id_ignore_missing":true}`, []int{0, 2}},
				{`{"ids":["b"],"data":{"y":2,"x":1},"id_ignore_missing":true}`, []int{1}},
			},
		},
		{
			name: "flags must match; false is the same as absent",
			bodies: []string{
				`{"broadcast_id":1,"emails":["a@x.io"],` + emails + `}`,
				`{"broadcast_id":1,"emails":["b@x.io"],` + emails + `,"email_add_duplicates":true}`,
				`{"broadcast_id":1,"emails":["c@x.io"],` + emails + `,"email_add_duplicates":false,"id_ignore_missing":false}`,
			},
			want: []release{
				{`{"emails":["a@x.io","c@x.io"],"email_ignore_missing":true}`, []int{0, 2}},
				{`{"emails":["b@x.io"],"email_ignore_missing":true,"email_add_duplicates":true}`, []int{1}},
			},
		},
		{
			name: "without the ignore_missing flag a trigger goes alone",
			bodies: []string{
				`{"broadcast_id":1,"ids":["a"]}`,
				`{"broadcast_id":1,"ids":["b"]}`,
				`{"broadcast_id":1,"emails":["c@x.io"],` + ids + `}`,
			},
			want: []release{
				{`{"ids":["a"]}`, []int{0}},
				{`{"ids":["b"]}`, []int{1}},
				{`{"emails":["c@x.io"],"id_ignore_missing":true}`, []int{2}},
			},
		},
		{
			name: "recipients, data_file_url and other audiences never merged",
			bodies: []string{
				`{"broadcast_id":1,"recipients":{"segment":{"id":1}}}`,
				`{"broadcast_id":1,"recipients":{"segment":{"id":1}}}`,
				`{"broadcast_id":1,"data_file_url":"https://f.example/a"}`,
				`{"broadcast_id":1,"data_file_url":"https://f.example/a"}`,
				`{"broadcast_id":1,"ids":["a"],` + ids + `,` + emails + `}`,
				`{"broadcast_id":1,"emails":["a@x.io"],` + ids + `,` + emails + `}`,
			},
			want: []release{
				{`{"recipients":{"segment":{"id":1}}}`, []int{0}},
				{`{"recipients":{"segment":{"id":1}}}`, []int{1}},
				{`{"data_file_url":"https://f.example/a"}`, []int{2}},
				{`{"data_file_url":"https://f.example/a"}`, []int{3}},
				{`{"ids":["a"],"id_ignore_missing":true,"email_ignore_missing":true}`, []int{4}},
				{`{"emails":["a@x.io"],"id_ignore_missing":true,"email_ignore_missing":true}`, []int{5}},
			},
		},
		{
			name: "per_user_data: same entry merged once, a different one waits for the next request",
			bodies: []string{
				`{"broadcast_id":1,"per_user_data":[{"id":"u1","data":{"n":1}}],` + ids + `}`,
				`{"broadcast_id":1,"per_user_data":[{"id":"u1","data":{"n":2}},{"id":"u3"}],` + ids + `}`,
				`{"broadcast_id":1,"per_user_data":[{"id":"u2"},{"id":"u1","data":{"n":1}}],` + ids + `}`,
				`{"broadcast_id":1,"per_user_data":[{"email":"E@x.io"}],` + ids + `,` + emails + `}`,
			},
			want: []release{
				{`{"per_user_data":[{"id":"u1","data":{"n":1}},{"id":"u2"}],"id_ignore_missing":true}`, []int{0, 2}},
				{`{"per_user_data":[{"id":"u1","data":{"n":2}},{"id":"u3"}],"id_ignore_missing":true}`, []int{1}},
				{`{"per_user_data":[{"email":"E@x.io"}],"id_ignore_missing":true,"email_ignore_missing":true}`, []int{3}},
			},
		},
		{
			name: "per_user_data by email needs email_ignore_missing",
			bodies: []string{
				`{"broadcast_id":1,"per_user_data":[{"email":"a@x.io"}],` + ids + `}`,
				`{"broadcast_id":1,"per_user_data":[{"email":"b@x.io"}],` + ids + `}`,
			},
			want: []release{
				{`{"per_user_data":[{"email":"a@x.io"}],"id_ignore_missing":true}`, []int{0}},
				{`{"per_user_data":[{"email":"b@x.io"}],"id_ignore_missing":true}`, []int{1}},
			},
		},
		{
			name: "a trigger naming one person twice with different data goes alone",
			bodies: []string{
				`{"broadcast_id":1,"per_user_data":[{"id":"u1","data":{"n":1}},{"id":"u1","data":{"n":2}}],` + ids + `}`,
				`{"broadcast_id":1,"per_user_data":[{"id":"u2"}],` + ids + `}`,
				`{"broadcast_id":1,"per_user_data":[{"id":"u3"}],` + ids + `}`,
			},
			want: []release{
				{`{"per_user_data":[{"id":"u1","data":{"n":1}},{"id":"u1","data":{"n":2}}],"id_ignore_missing":true}`, []int{0}},
				{`{"per_user_data":[{"id":"u2"},{"id":"u3"}],"id_ignore_missing":true}`, []int{1, 2}},
			},
		},
		{
			name: "recipient cap splits; a trigger of duplicates still joins a full request",
			opts: trigger.PacerOptions{MaxRecipients: 3},
			bodies: []string{
				`{"broadcast_id":1,"ids":["a","b"],` + ids + `}`,
				`{"broadcast_id":1,"ids":["b","c"],` + ids + `}`,
				`{"broadcast_id":1,"ids":["d"],` + ids + `}`,
				`{"broadcast_id":1,"ids":["a","c"],` + ids + `}`,
				`{"broadcast_id":1,"ids":["e","f","g","h"],` + ids + `}`,
				`{"broadcast_id":1,"ids":["i"],` + ids + `}`,
			},
			want: []release{
				{`{"ids":["a","b","c"],"id_ignore_missing":true}`, []int{0, 1, 3}},
				{`{"ids":["d","i"],"id_ignore_missing":true}`, []int{2, 5}},
				// Over the pacer's cap on its own: sent alone, as given.
				{`{"ids":["e","f","g","h"],"id_ignore_missing":true}`, []int{4}},
			},
		},
		{
			name: "byte cap splits",
			// {"ids":["a","b"],"id_ignore_missing":true} is 42 bytes.
			opts: trigger.PacerOptions{MaxBodyBytes: 42},
			bodies: []string{
				`{"broadcast_id":1,"ids":["a"],` + ids + `}`,
				`{"broadcast_id":1,"ids":["b"],` + ids + `}`,
				`{"broadcast_id":1,"ids":["c"],` + ids + `}`,
			},
			want: []release{
				{`{"ids":["a","b"],"id_ignore_missing":true}`, []int{0, 1}},
				{`{"ids":["c"],"id_ignore_missing":true}`, []int{2}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPacer(t, tt.opts)
			for i, b := range tt.bodies {
				if err := p.Add(mustParse(t, b), i); err != nil {
					t.Fatal(err)
				}
			}
			now := t0
			var got []release
			for p.Len() > 0 {
				batches := p.Ready(now)
				if len(batches) != 1 {
					t.Fatalf("at +%v Ready released %d batches, want 1", now.Sub(t0), len(batches))
				}
				b := batches[0]
				if !json.Valid(b.Body) {
					t.Errorf("invalid JSON body %s", b.Body)
				}
				got = append(got, release{string(b.Body), b.Items})
				p.Done(b, now)
				now = now.Add(trigger.Interval)
			}
			if !slices.EqualFunc(got, tt.want, func(a, b release) bool { return a.body == b.body && slices.Equal(a.items, b.items) }) {
				t.Errorf("released:\n%s\nwant:\n%s", show(got), show(tt.want))
			}
		})
	}
}

func show(rs []release) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "  %v %s\n", r.items, r.body)
	}
	return b.String()
}

// TestPacerPacesBroadcasts feeds 50 triggers for 3 broadcasts over 15
// seconds, answers each request 300 ms after its release, and checks that
// no broadcast is released within Interval of its previous answer, that
// none waits for another, and that every trigger is released exactly once.
func TestPacerPacesBroadcasts(t *testing.T) {
	const n, latency = 50, 300 * time.Millisecond
	broadcasts := []int64{7, 8, 9}
	p := newPacer(t, trigger.PacerOptions{})
	type inFlight struct {
		batch *trigger.Batch[int]
		at    time.Time // when it is answered
	}
	var flying []inFlight
	released := make(map[int]int)           // item → times released
	lastAnswer := make(map[int64]time.Time) // broadcast → when its last request was answered
	releases := make(map[int64][]time.Time) // broadcast → release times
	type group struct {
		broadcast int64
		data      string
	}
	want := make(map[group]map[string]bool) // ids asked for, per broadcast and data
	got := make(map[group]map[string]bool)  // ids released
	add := func(m map[group]map[string]bool, g group, ids ...string) {
		if m[g] == nil {
			m[g] = make(map[string]bool)
		}
		for _, id := range ids {
			m[g][id] = true
		}
	}

	now, next := t0, 0
	for step := 0; next < n || p.Len() > 0; step++ {
		if step > 10*n {
			t.Fatal("no progress")
		}
		// Arrivals every 300 ms, round-robin over the broadcasts, ids
		// overlapping so that coalescing has duplicates to remove.
		for next < n && !t0.Add(time.Duration(next)*300*time.Millisecond).After(now) {
			g := group{broadcasts[next%3], fmt.Sprintf(`{"d":%d}`, next%2)}
			a, b := fmt.Sprintf("u%d", next%11), fmt.Sprintf("u%d", (next+1)%11)
			add(want, g, a, b)
			body := fmt.Sprintf(`{"broadcast_id":%d,"ids":[%q,%q],"data":%s,"id_ignore_missing":true}`, g.broadcast, a, b, g.data)
			if err := p.Add(mustParse(t, body), next); err != nil {
				t.Fatal(err)
			}
			next++
		}
		// Answers due.
		flying = slices.DeleteFunc(flying, func(f inFlight) bool {
			if f.at.After(now) {
				return false
			}
			p.Done(f.batch, f.at)
			lastAnswer[f.batch.BroadcastID] = f.at
			return true
		})
		for _, b := range p.Ready(now) {
			if last, ok := lastAnswer[b.BroadcastID]; ok && now.Sub(last) < trigger.Interval {
				t.Errorf("broadcast %d released at +%v, %v after its last answer", b.BroadcastID, now.Sub(t0), now.Sub(last))
			}
			if prev := releases[b.BroadcastID]; len(prev) > 0 && now.Sub(prev[len(prev)-1]) < trigger.Interval {
				t.Errorf("broadcast %d released twice within %v", b.BroadcastID, trigger.Interval)
			}
			releases[b.BroadcastID] = append(releases[b.BroadcastID], now)
			for _, it := range b.Items {
				released[it]++
			}
			var body struct {
				IDs  []string
				Data json.RawMessage
			}
			if err := json.Unmarshal(b.Body, &body); err != nil {
				t.Fatalf("body %s: %v", b.Body, err)
			}
			add(got, group{b.BroadcastID, string(body.Data)}, body.IDs...)
			if len(body.IDs) != len(slices.Compact(slices.Sorted(slices.Values(body.IDs)))) {
				t.Errorf("body lists an id twice: %s", b.Body)
			}
			flying = append(flying, inFlight{b, now.Add(latency)})
		}
		// Advance the clock to the next thing that can happen.
		var wake []time.Time
		if next < n {
			wake = append(wake, t0.Add(time.Duration(next)*300*time.Millisecond))
		}
		for _, f := range flying {
			wake = append(wake, f.at)
		}
		if at, ok := p.Next(); ok {
			wake = append(wake, at)
		}
		if len(wake) == 0 {
			break
		}
		now = later(now, slices.MinFunc(wake, func(a, b time.Time) int { return a.Compare(b) }))
	}
	for i := range n {
		if released[i] != 1 {
			t.Errorf("item %d released %d times", i, released[i])
		}
	}
	for _, id := range broadcasts {
		// The first trigger of each broadcast goes at once, never behind
		// another broadcast.
		if first := releases[id][0]; first.Sub(t0) > time.Second {
			t.Errorf("broadcast %d first released at +%v", id, first.Sub(t0))
		}
		// 17 triggers in 15 s need no more than a handful of requests.
		if len(releases[id]) > 6 {
			t.Errorf("broadcast %d took %d requests for 17 triggers", id, len(releases[id]))
		}
		t.Logf("broadcast %d: %d requests", id, len(releases[id]))
	}
	if !maps.EqualFunc(got, want, maps.Equal) {
		t.Errorf("ids released per broadcast and data:\n%v\nwant\n%v", got, want)
	}
	if p.Len() != 0 {
		t.Errorf("Len() = %d after everything was answered", p.Len())
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func TestPacerBroadcastsIndependent(t *testing.T) {
	p := newPacer(t, trigger.PacerOptions{})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(p.Add(mustParse(t, `{"broadcast_id":8,"ids":["a"]}`), 0))
	first := p.Ready(t0)
	if len(first) != 1 || first[0].BroadcastID != 8 {
		t.Fatalf("Ready = %v, want broadcast 8", first)
	}
	// 8 is in flight and has more waiting; 7 arrives and goes at once.
	must(p.Add(mustParse(t, `{"broadcast_id":8,"ids":["b"]}`), 1))
	must(p.Add(mustParse(t, `{"broadcast_id":7,"ids":["c"]}`), 2))
	if at, ok := p.Next(); !ok || at.After(t0) {
		t.Errorf("Next() = %v, %v; want now", at, ok)
	}
	got := p.Ready(t0)
	if len(got) != 1 || got[0].BroadcastID != 7 {
		t.Fatalf("Ready = %v, want only broadcast 7", got)
	}
	// In flight means no release, however long the answer takes.
	if got := p.Ready(t0.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("released %d batches while both broadcasts are in flight", len(got))
	}
	if _, ok := p.Next(); ok {
		t.Error("Next() reports a release while everything pending is behind a request in flight")
	}
	p.Done(first[0], t0.Add(2*time.Second))
	if at, ok := p.Next(); !ok || !at.Equal(t0.Add(12*time.Second)) {
		t.Errorf("Next() = %v, %v; want +12s (Interval after the answer)", at.Sub(t0), ok)
	}
}

func TestPacerDefer(t *testing.T) {
	p := newPacer(t, trigger.PacerOptions{})
	if err := p.Add(mustParse(t, `{"broadcast_id":3,"ids":["a"],"id_ignore_missing":true}`), 0); err != nil {
		t.Fatal(err)
	}
	b := p.Ready(t0)[0]
	// Customer.io answered 429 with Retry-After: 25.
	p.Defer(3, t0.Add(25*time.Second))
	p.Retry(b, t0)
	if err := p.Add(mustParse(t, `{"broadcast_id":3,"ids":["b"],"id_ignore_missing":true}`), 1); err != nil {
		t.Fatal(err)
	}
	if at, ok := p.Next(); !ok || !at.Equal(t0.Add(25*time.Second)) {
		t.Fatalf("Next() = +%v, %v; want +25s", at.Sub(t0), ok)
	}
	if got := p.Ready(t0.Add(24 * time.Second)); len(got) != 0 {
		t.Fatalf("released before Retry-After: %s", got[0].Body)
	}
	p.Defer(3, t0.Add(time.Second)) // earlier: no effect
	if got := p.Ready(t0.Add(24 * time.Second)); len(got) != 0 {
		t.Fatal("an earlier Defer brought the release forward")
	}
	got := p.Ready(t0.Add(25 * time.Second))
	if len(got) != 1 || !slices.Equal(got[0].Items, []int{0, 1}) || string(got[0].Body) != `{"ids":["a","b"],"id_ignore_missing":true}` {
		t.Fatalf("after Retry-After released %v", got)
	}
	// Defer on a broadcast the pacer has not seen holds its first trigger.
	p.Defer(4, t0.Add(time.Minute))
	if err := p.Add(mustParse(t, `{"broadcast_id":4,"ids":["a"]}`), 2); err != nil {
		t.Fatal(err)
	}
	if got := p.Ready(t0.Add(59 * time.Second)); len(got) != 0 {
		t.Fatal("broadcast 4 released before its Defer")
	}
}

func TestPacerBounded(t *testing.T) {
	body := `{"broadcast_id":1,"ids":["a"]}`
	cost := mustParse(t, body).MemoryCost()
	tests := []struct {
		name     string
		opts     trigger.PacerOptions
		accepted int
	}{
		{"by count", trigger.PacerOptions{MaxPending: 3}, 3},
		{"by bytes", trigger.PacerOptions{MaxPendingBytes: 2*cost + 1}, 3}, // 0, c, 2c < 2c+1; 3c is not
		{"one over the byte bound when empty", trigger.PacerOptions{MaxPendingBytes: 5}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPacer(t, tt.opts)
			for i := range tt.accepted {
				if p.Full() {
					t.Fatalf("Full() after %d triggers", i)
				}
				if err := p.Add(mustParse(t, body), i); err != nil {
					t.Fatalf("Add #%d: %v", i, err)
				}
			}
			if !p.Full() {
				t.Fatal("not Full() at the bound")
			}
			if err := p.Add(mustParse(t, body), 99); !errors.Is(err, trigger.ErrFull) {
				t.Fatalf("Add when full = %v, want ErrFull", err)
			}
			if p.Len() != tt.accepted {
				t.Fatalf("Len() = %d, want %d", p.Len(), tt.accepted)
			}
			// Released but unanswered still counts; answered does not.
			b := p.Ready(t0)[0]
			if !p.Full() {
				t.Fatal("a release without an answer freed room")
			}
			p.Retry(b, t0)
			if !p.Full() || p.Len() != tt.accepted {
				t.Fatal("Retry changed what is held")
			}
			b = p.Ready(t0.Add(trigger.Interval))[0]
			p.Done(b, t0.Add(trigger.Interval))
			p.Done(b, t0.Add(trigger.Interval)) // a second answer changes nothing
			if p.Full() || p.Len() != tt.accepted-len(b.Items) {
				t.Fatalf("after Done: Full() = %v, Len() = %d", p.Full(), p.Len())
			}
		})
	}
}

func TestPacerDrain(t *testing.T) {
	p := newPacer(t, trigger.PacerOptions{})
	for i, b := range []string{
		`{"broadcast_id":2,"ids":["a"]}`, `{"broadcast_id":1,"ids":["b"]}`,
		`{"broadcast_id":2,"ids":["c"]}`, `{"broadcast_id":1,"ids":["d"]}`,
	} {
		if err := p.Add(mustParse(t, b), i); err != nil {
			t.Fatal(err)
		}
	}
	inFlight := p.Ready(t0)
	if got := p.Drain(); !slices.Equal(got, []int{3, 2}) {
		t.Fatalf("Drain() = %v, want the pending [3 2]", got)
	}
	if p.Len() != 2 {
		t.Fatalf("Len() = %d after Drain, want the 2 in flight", p.Len())
	}
	for _, b := range inFlight {
		p.Done(b, t0)
	}
	if p.Len() != 0 {
		t.Fatalf("Len() = %d", p.Len())
	}
}

func TestNewPacerRejectsBadOptions(t *testing.T) {
	_, err := trigger.NewPacer[int](trigger.PacerOptions{
		Interval: -time.Second, MaxPending: -1, MaxPendingBytes: -2, MaxRecipients: trigger.MaxRecipients + 1, MaxBodyBytes: -5,
	})
	if err == nil {
		t.Fatal("NewPacer accepted invalid options")
	}
	for _, name := range []string{"Interval", "MaxPending -1 must be positive", "MaxPendingBytes", "MaxRecipients 10001 must be between 1 and 10000", "MaxBodyBytes"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}
