package trigger_test

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cio-relay/cio-relay/trigger"
)

func TestPacerSplit(t *testing.T) {
	const ids = `"id_ignore_missing":true`
	p := newPacer(t, trigger.PacerOptions{})
	for i, body := range []string{
		`{"broadcast_id":1,"ids":["a"],` + ids + `}`,
		`{"broadcast_id":1,"ids":["b"],` + ids + `}`,
		`{"broadcast_id":1,"ids":["c"],` + ids + `}`,
		`{"broadcast_id":1,"ids":["d"],` + ids + `}`,
		`{"broadcast_id":1,"ids":["e"],` + ids + `}`,
	} {
		if err := p.Add(mustParse(t, body), i); err != nil {
			t.Fatal(err)
		}
	}
	merged := p.Ready(t0)[0]
	if !slices.Equal(merged.Items, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("merged %v", merged.Items)
	}
	// A trigger arriving meanwhile is not merged into a half.
	if err := p.Add(mustParse(t, `{"broadcast_id":1,"ids":["f"],`+ids+`}`), 5); err != nil {
		t.Fatal(err)
	}
	if !p.Split(merged, t0.Add(time.Second)) {
		t.Fatal("Split refused a merged request")
	}
	if p.Split(merged, t0.Add(time.Second)) {
		t.Fatal("a second Split of the same batch did something")
	}
	if p.Len() != 6 {
		t.Fatalf("Len() = %d after Split, want all 6 still held", p.Len())
	}
	if at, ok := p.Next(); !ok || !at.Equal(t0.Add(11*time.Second)) {
		t.Fatalf("Next() = +%v, want Interval after the rejection", at.Sub(t0))
	}
	if got := p.Ready(t0.Add(10 * time.Second)); len(got) != 0 {
		t.Fatal("a half released within Interval of the rejection")
	}
	// The first half is rejected again and split into single triggers;
	// everything else is accepted. Each request comes a turn after the
	// previous answer, halves first, each alone, then what arrived meanwhile.
	now := t0.Add(11 * time.Second)
	var got []release
	for p.Len() > 0 {
		bs := p.Ready(now)
		if len(bs) != 1 {
			t.Fatalf("Ready(+%v) released %d batches", now.Sub(t0), len(bs))
		}
		b := bs[0]
		got = append(got, release{string(b.Body), b.Items})
		switch {
		case slices.Equal(b.Items, []int{0, 1}):
			if !p.Split(b, now) {
				t.Fatal("Split refused a half of two")
			}
		case len(b.Items) == 1 && p.Split(b, now):
			t.Fatal("Split accepted a single trigger")
		default:
			p.Done(b, now)
		}
		if at, ok := p.Next(); ok && !at.Equal(now.Add(trigger.Interval)) {
			t.Fatalf("after +%v, Next() = +%v, want Interval later", now.Sub(t0), at.Sub(t0))
		}
		now = now.Add(trigger.Interval)
	}
	want := []release{
		{`{"ids":["a","b"],"id_ignore_missing":true}`, []int{0, 1}},
		{`{"ids":["a"],"id_ignore_missing":true}`, []int{0}},
		{`{"ids":["b"],"id_ignore_missing":true}`, []int{1}},
		{`{"ids":["c","d","e"],"id_ignore_missing":true}`, []int{2, 3, 4}},
		{`{"ids":["f"],"id_ignore_missing":true}`, []int{5}},
	}
	if show(got) != show(want) {
		t.Errorf("released\n%s\nwant\n%s", show(got), show(want))
	}
}

func TestPacerWithdraw(t *testing.T) {
	const ids = `"id_ignore_missing":true`
	p := newPacer(t, trigger.PacerOptions{})
	for i, id := range []string{"a", "b", "c"} {
		if err := p.Add(mustParse(t, `{"broadcast_id":1,"ids":["`+id+`"],`+ids+`}`), i); err != nil {
			t.Fatal(err)
		}
	}
	b := p.Ready(t0)[0]
	// Trigger 1 turned out to be sent already: the request is not made, and
	// the others go at once, without it.
	p.Withdraw(b, func(i int) bool { return i == 1 })
	if p.Len() != 2 {
		t.Fatalf("Len() = %d, want 2", p.Len())
	}
	again := p.Ready(t0)
	if len(again) != 1 || string(again[0].Body) != `{"ids":["a","c"],"id_ignore_missing":true}` {
		t.Fatalf("after Withdraw released %v", again)
	}
	p.Withdraw(again[0], func(int) bool { return true })
	if p.Len() != 0 || p.Full() {
		t.Fatalf("Len() = %d after withdrawing everything", p.Len())
	}
	p.Withdraw(again[0], func(int) bool { return true }) // answered already: nothing
	if p.Len() != 0 {
		t.Fatal("a second Withdraw changed the count")
	}
}

// fakeApp is Customer.io's App API in a synctest bubble: it answers after
// latency, 429 to a second request of a broadcast within interval of the
// last one it accepted, and 422 to any request naming a person in bad.
type fakeApp struct {
	interval, latency time.Duration
	bad               [][]byte
	last              map[int64]time.Time
	arrivals          map[int64][]time.Time
	accepted          map[int]int // item → times in an accepted request
	rejectedAlone     map[int]int // item → times rejected in a request of its own
}

type answer int

const (
	ok answer = iota
	tooMany
	rejected
)

func (f *fakeApp) send(b *trigger.Batch[int]) answer {
	now := time.Now()
	f.arrivals[b.BroadcastID] = append(f.arrivals[b.BroadcastID], now)
	time.Sleep(f.latency)
	for _, bad := range f.bad {
		if bytes.Contains(b.Body, bad) {
			if len(b.Items) == 1 {
				f.rejectedAlone[b.Items[0]]++
			}
			return rejected
		}
	}
	if last, seen := f.last[b.BroadcastID]; seen && now.Sub(last) < f.interval {
		return tooMany
	}
	f.last[b.BroadcastID] = now
	for _, it := range b.Items {
		f.accepted[it]++
	}
	return ok
}

// TestPacerBisectsRejectedRequestAtPace, in virtual time: a thousand
// coalescable triggers of one broadcast, some naming a person Customer.io
// rejects. The merged request is bisected, each half waiting its turn:
// every good trigger is accepted once, each bad one is rejected alone, no
// two requests of the broadcast arrive within Interval, and the requests
// grow with the logarithm of the triggers, not with their number.
func TestPacerBisectsRejectedRequestAtPace(t *testing.T) {
	for _, tt := range []struct {
		n   int
		bad []int
	}{
		{1000, []int{999}},
		{1000, []int{0}},
		{1000, []int{17, 500, 998}},
		{2, []int{1}},
	} {
		t.Run(fmt.Sprintf("%d triggers, bad %v", tt.n, tt.bad), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				app := &fakeApp{interval: trigger.Interval, latency: 300 * time.Millisecond,
					last: map[int64]time.Time{}, arrivals: map[int64][]time.Time{}, accepted: map[int]int{}, rejectedAlone: map[int]int{}}
				for _, i := range tt.bad {
					app.bad = append(app.bad, fmt.Appendf(nil, `"bad-%d"`, i))
				}
				p := newPacer(t, trigger.PacerOptions{MaxPending: tt.n})
				for i := range tt.n {
					id := fmt.Sprintf("u-%d", i)
					if slices.Contains(tt.bad, i) {
						id = fmt.Sprintf("bad-%d", i)
					}
					if err := p.Add(mustParse(t, fmt.Sprintf(`{"broadcast_id":9,"ids":[%q],"id_ignore_missing":true}`, id)), i); err != nil {
						t.Fatal(err)
					}
				}
				start := time.Now()
				for p.Len() > 0 {
					for _, b := range p.Ready(time.Now()) {
						switch app.send(b) {
						case ok:
							p.Done(b, time.Now())
						case tooMany:
							p.Retry(b, time.Now())
						case rejected:
							if !p.Split(b, time.Now()) {
								p.Done(b, time.Now()) // dead-lettered
							}
						}
					}
					if at, ok := p.Next(); ok {
						time.Sleep(time.Until(at))
					}
				}
				arrivals := app.arrivals[9]
				for i := 1; i < len(arrivals); i++ {
					if gap := arrivals[i].Sub(arrivals[i-1]); gap < trigger.Interval {
						t.Errorf("requests %d and %d %v apart", i, i+1, gap)
					}
				}
				for i := range tt.n {
					if slices.Contains(tt.bad, i) {
						if app.accepted[i] != 0 || app.rejectedAlone[i] != 1 {
							t.Errorf("bad trigger %d accepted %d times, rejected alone %d times", i, app.accepted[i], app.rejectedAlone[i])
						}
					} else if app.accepted[i] != 1 {
						t.Errorf("trigger %d accepted %d times, want once", i, app.accepted[i])
					}
				}
				levels := int(math.Ceil(math.Log2(float64(tt.n))))
				if limit := 1 + 2*levels*len(tt.bad); len(arrivals) > limit {
					t.Errorf("%d requests, want at most %d", len(arrivals), limit)
				}
				t.Logf("%d triggers, %d bad: %d requests over %v (virtual time)", tt.n, len(tt.bad), len(arrivals), time.Since(start))
			})
		})
	}
}
