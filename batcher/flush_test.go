package batcher

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func TestDeadline(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	type add struct {
		at      int // ms
		drained bool
	}
	for _, tt := range []struct {
		name   string
		adds   []add // into a batch opened at t0
		wantAt int
		want   FlushReason
	}{
		{"no drained call: the interval", []add{{0, false}, {3, false}}, 100, FlushInterval},
		{"a drained call: its linger", []add{{0, false}, {7, true}}, 12, FlushLinger},
		{"the first drained call counts", []add{{2, true}, {4, true}}, 7, FlushLinger},
		{"a later call that is not drained keeps the linger", []add{{2, true}, {3, false}}, 7, FlushLinger},
		{"a linger past the interval: the interval", []add{{0, false}, {98, true}}, 100, FlushInterval},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := deadline{interval: 100 * time.Millisecond, linger: 5 * time.Millisecond}
			for _, a := range tt.adds {
				d.added(ms(a.at), a.drained)
			}
			if at, why := d.at(t0); !at.Equal(ms(tt.wantAt)) || why != tt.want {
				t.Errorf("due at %v (%v), want %v (%v)", at.Sub(t0), why, ms(tt.wantAt).Sub(t0), tt.want)
			}
			d.reset()
			if at, why := d.at(t0); !at.Equal(ms(100)) || why != FlushInterval {
				t.Errorf("after reset: due at %v (%v), want the interval", at.Sub(t0), why)
			}
		})
	}
}

// arrival is a call reaching the batcher after the previous one.
type arrival struct {
	after   time.Duration
	size    int
	drained bool
}

// sent is a batch as the next stage received it.
type sent struct {
	at      time.Duration // since the run started, virtual
	created time.Duration
	items   []int
	bytes   int
	reason  FlushReason
}

// handOff is how calls reach the batcher in a timeline.
type handOff int

const (
	oneByOne handOff = iota // Run, a channel send per call
	sliced                  // RunSlices: calls that arrive together in one slice (at most sliceCalls)
)

func (h handOff) String() string { return [...]string{"Run", "RunSlices"}[h] }

// sliceCalls is how many calls one slice of a sliced timeline holds at most.
const sliceCalls = 64

// timeline runs b over arrivals in a synctest bubble and returns what it
// sent, when, and when each call arrived. Time is virtual: the run takes no
// real time, and every instant is exact. Sliced, the calls arriving at the
// same instant go in one slice, and the producer reuses two slices in
// turn, spoiling the one it takes back, so a batcher that kept anything of
// a slice past the next one would send wrong items.
func timeline(t *testing.T, b *Batcher[int], arrivals []arrival, mode ...handOff) (out []sent, arrived []time.Duration, calls [][]byte) {
	t.Helper()
	if len(mode) > 0 && mode[0] == sliced {
		return slicedTimeline(t, b, arrivals)
	}
	for i, a := range arrivals {
		calls = append(calls, makeCall(i, a.size))
	}
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		in := make(chan Call[int])
		batches := make(chan *Batch[int])
		done := make(chan error, 1)
		go func() {
			done <- b.Run(context.Background(), in, batches, func(Call[int], error) { t.Error("unexpected reject") })
			close(batches)
		}()
		collected := make(chan struct{})
		go func() {
			defer close(collected)
			for batch := range batches {
				out = append(out, sent{at: time.Since(start), created: batch.Created.Sub(start),
					items: batch.Items, bytes: len(batch.Body()), reason: batch.Reason})
			}
		}()
		for i, a := range arrivals {
			time.Sleep(a.after) // virtual time
			arrived = append(arrived, time.Since(start))
			in <- Call[int]{Data: calls[i], Item: i, Drained: a.drained}
		}
		time.Sleep(time.Minute) // virtual: every timer still set fires before the input ends
		close(in)
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
		<-collected
	})
	return out, arrived, calls
}

func slicedTimeline(t *testing.T, b *Batcher[int], arrivals []arrival) (out []sent, arrived []time.Duration, calls [][]byte) {
	t.Helper()
	for i, a := range arrivals {
		calls = append(calls, makeCall(i, a.size))
	}
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		in := make(chan []Call[int])
		batches := make(chan *Batch[int])
		done := make(chan error, 1)
		go func() {
			done <- b.RunSlices(context.Background(), in, batches, func(Call[int], error) { t.Error("unexpected reject") })
			close(batches)
		}()
		collected := make(chan struct{})
		go func() {
			defer close(collected)
			for batch := range batches {
				out = append(out, sent{at: time.Since(start), created: batch.Created.Sub(start),
					items: batch.Items, bytes: len(batch.Body()), reason: batch.Reason})
			}
		}()
		var bufs [2][]Call[int]
		cur := 0
		flush := func() {
			if len(bufs[cur]) == 0 {
				return
			}
			in <- bufs[cur]
			cur = 1 - cur
			// The batcher has the other slice now and is done with this
			// one: spoil it before it is filled again.
			for i := range bufs[cur] {
				bufs[cur][i] = Call[int]{Item: -1}
			}
			bufs[cur] = bufs[cur][:0]
		}
		for i, a := range arrivals {
			if a.after > 0 || len(bufs[cur]) == sliceCalls {
				flush()
			}
			time.Sleep(a.after) // virtual time
			arrived = append(arrived, time.Since(start))
			bufs[cur] = append(bufs[cur], Call[int]{Data: calls[i], Item: i, Drained: a.drained})
		}
		flush()
		time.Sleep(time.Minute) // virtual: every timer still set fires before the input ends
		close(in)
		if err := <-done; err != nil {
			t.Errorf("RunSlices = %v", err)
		}
		<-collected
	})
	return out, arrived, calls
}

func every(n int, gap time.Duration, size int, drained bool) []arrival {
	a := make([]arrival, n)
	for i := range a {
		a[i] = arrival{after: gap, size: size, drained: drained}
	}
	a[0].after = 0
	return a
}

func TestRunLinger(t *testing.T) {
	const ms = time.Millisecond
	type want struct {
		at     time.Duration
		calls  int
		reason FlushReason
	}
	for _, tt := range []struct {
		name     string
		maxCalls int
		arrivals []arrival
		want     []want
	}{
		{"no hint: the batch waits for the interval", 100,
			every(3, ms, 100, false),
			[]want{{100 * ms, 3, FlushInterval}}},
		{"backlog tail: the drained last call goes after the linger", 100,
			append(every(5, 0, 100, false), arrival{0, 100, true}),
			[]want{{5 * ms, 6, FlushLinger}}},
		{"trickle slower than the linger: a request per call, a linger after it", 100,
			every(4, 20*ms, 100, true),
			[]want{{5 * ms, 1, FlushLinger}, {25 * ms, 1, FlushLinger}, {45 * ms, 1, FlushLinger}, {65 * ms, 1, FlushLinger}}},
		{"trickle faster than the linger: a request per linger", 100,
			every(20, 1500*time.Microsecond, 100, true),
			[]want{{5 * ms, 4, FlushLinger}, {11 * ms, 4, FlushLinger}, {17 * ms, 4, FlushLinger}, {23 * ms, 4, FlushLinger}, {29 * ms, 4, FlushLinger}}},
		{"a burst behind a drained call rides along", 100,
			append([]arrival{{0, 100, true}}, every(3, ms, 100, false)...),
			[]want{{5 * ms, 4, FlushLinger}}},
		{"the cap closes before the linger, which starts again", 3,
			append(every(3, 0, 100, true), arrival{ms, 100, true}),
			[]want{{0, 3, FlushCap}, {6 * ms, 1, FlushLinger}}},
		{"a call that does not fit closes the batch; its own linger follows", 100,
			[]arrival{{0, 300_000, false}, {ms, 300_000, true}},
			[]want{{ms, 1, FlushFull}, {6 * ms, 1, FlushLinger}}},
	} {
		for _, mode := range []handOff{oneByOne, sliced} {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				b, err := New[int](MaxBatchBytes, tt.maxCalls, 100*ms)
				if err != nil {
					t.Fatal(err)
				}
				got, _, _ := timeline(t, b, tt.arrivals, mode)
				var gotW []want
				for _, s := range got {
					gotW = append(gotW, want{s.at, len(s.items), s.reason})
				}
				if !slices.Equal(gotW, tt.want) {
					t.Errorf("batches (at, calls, reason)\n got %v\nwant %v", gotW, tt.want)
				}
			})
		}
	}
}

// TestRunLingerProperties checks, over random timelines, the rules flush on
// drain must keep: every call sent once and in order; no batch waits past
// the flush interval, nor a drained call past its linger; a batch goes early
// only with a drained call in it; timed flushes are at least a linger after
// the batch before (the request-rate bound at a trickle); and a batch closed
// as full was full. Handed over in slices (RunSlices), about a third of the
// calls arrive together with the one before.
func TestRunLingerProperties(t *testing.T) {
	const (
		interval = 50 * time.Millisecond
		linger   = 5 * time.Millisecond
		maxBytes = 20_000
	)
	for _, mode := range []handOff{oneByOne, sliced} {
		for seed := range uint64(25) {
			lingerProperties(t, mode, seed, interval, linger, maxBytes)
		}
	}
}

func lingerProperties(t *testing.T, mode handOff, seed uint64, interval, linger time.Duration, maxBytes int) {
	t.Helper()
	{
		r := rand.New(rand.NewPCG(seed, 99))
		drainedPct := r.IntN(101)
		maxCalls := 1 + r.IntN(40)
		arrivals := make([]arrival, 300)
		for i := range arrivals {
			arrivals[i] = arrival{
				after:   time.Duration(r.ExpFloat64() * float64(time.Duration(r.IntN(4)+1)*time.Millisecond)),
				size:    30 + r.IntN(3000),
				drained: r.IntN(100) < drainedPct,
			}
			if mode == sliced && r.IntN(3) == 0 {
				arrivals[i].after = 0
			}
		}
		b, err := New[int](maxBytes, maxCalls, interval, WithLinger(linger))
		if err != nil {
			t.Fatal(err)
		}
		got, arrived, calls := timeline(t, b, arrivals, mode)
		next := 0
		var prev time.Duration
		for bi, s := range got {
			for _, item := range s.items {
				if item != next {
					t.Fatalf("%v seed %d batch %d: call %d, want %d", mode, seed, bi, item, next)
				}
				next++
			}
			first := s.items[0]
			drained := -1
			for _, item := range s.items {
				if arrivals[item].drained {
					drained = item
					break
				}
			}
			if s.created != arrived[first] {
				t.Errorf("seed %d batch %d: created at %v, its first call arrived at %v", seed, bi, s.created, arrived[first])
			}
			if s.at > arrived[first]+interval {
				t.Errorf("seed %d batch %d: sent at %v, past its oldest call's interval (%v)", seed, bi, s.at, arrived[first]+interval)
			}
			if drained >= 0 && s.at > arrived[drained]+linger {
				t.Errorf("seed %d batch %d: sent at %v, past the linger of drained call %d (%v)", seed, bi, s.at, drained, arrived[drained]+linger)
			}
			switch s.reason {
			case FlushLinger:
				if drained < 0 {
					t.Errorf("seed %d batch %d: sent early (linger) without a drained call", seed, bi)
				} else if s.at != arrived[drained]+linger {
					t.Errorf("seed %d batch %d: linger flush at %v, want %v", seed, bi, s.at, arrived[drained]+linger)
				}
			case FlushInterval:
				if s.at != arrived[first]+interval {
					t.Errorf("seed %d batch %d: interval flush at %v, want %v", seed, bi, s.at, arrived[first]+interval)
				}
			case FlushFull:
				if n := got[bi+1].items[0]; s.bytes+1+len(calls[n]) <= maxBytes {
					t.Errorf("seed %d batch %d: closed as full at %d bytes, but call %d (%d bytes) fit", seed, bi, s.bytes, n, len(calls[n]))
				}
			case FlushCap:
				if len(s.items) != maxCalls {
					t.Errorf("seed %d batch %d: closed at the cap with %d calls, cap %d", seed, bi, len(s.items), maxCalls)
				}
			}
			if (s.reason == FlushLinger || s.reason == FlushInterval) && bi > 0 && s.at-prev < linger {
				t.Errorf("seed %d batch %d: timed flush %v after the previous batch, under the linger", seed, bi, s.at-prev)
			}
			prev = s.at
		}
		if next != len(arrivals) {
			t.Fatalf("%v seed %d: %d of %d calls sent", mode, seed, next, len(arrivals))
		}
	}
}

// TestRunLingerKeepsFillUnderLoad: a backlog arrives faster than it can be
// sent and the server always has more pending, so no call is drained but
// the last. The batches must be the ones packing alone makes — every one
// full but the last, which goes a linger after the last call instead of a
// flush interval.
func TestRunLingerKeepsFillUnderLoad(t *testing.T) {
	for _, mode := range []handOff{oneByOne, sliced} {
		t.Run(mode.String(), func(t *testing.T) { lingerKeepsFill(t, mode) })
	}
}

func lingerKeepsFill(t *testing.T, mode handOff) {
	r := rand.New(rand.NewPCG(7, 7))
	arrivals := make([]arrival, 5_000)
	for i := range arrivals {
		arrivals[i] = arrival{size: 200 + r.IntN(4000)}
	}
	arrivals[len(arrivals)-1].drained = true
	b, err := New[int](MaxBatchBytes, 2000, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got, _, calls := timeline(t, b, arrivals, mode)
	want := pack(t, calls, MaxBatchBytes, 2000)
	if len(got) != len(want) {
		t.Fatalf("%d batches, packing alone makes %d", len(got), len(want))
	}
	for i := range got {
		last := i == len(got)-1
		if len(got[i].items) != want[i].Len() || got[i].bytes != len(want[i].Body()) {
			t.Errorf("batch %d: %d calls, %d bytes; packing alone: %d calls, %d bytes", i, len(got[i].items), got[i].bytes, want[i].Len(), len(want[i].Body()))
		}
		if wantR := FlushFull; last && got[i].reason != FlushLinger || !last && got[i].reason != wantR {
			t.Errorf("batch %d closed %v", i, got[i].reason)
		}
		if last && got[i].at != DefaultLinger {
			t.Errorf("last batch sent at %v, want the linger %v", got[i].at, DefaultLinger)
		}
	}
}

func TestNewLinger(t *testing.T) {
	for _, tt := range []struct {
		name     string
		interval time.Duration
		opts     []Option
		want     time.Duration // 0: an error
	}{
		{"default", time.Second, nil, DefaultLinger},
		{"default capped at a short interval", 2 * time.Millisecond, nil, 2 * time.Millisecond},
		{"set", time.Second, []Option{WithLinger(20 * time.Millisecond)}, 20 * time.Millisecond},
		{"equal to the interval", time.Second, []Option{WithLinger(time.Second)}, time.Second},
		{"zero", time.Second, []Option{WithLinger(0)}, 0},
		{"negative", time.Second, []Option{WithLinger(-time.Millisecond)}, 0},
		{"past the interval", 10 * time.Millisecond, []Option{WithLinger(11 * time.Millisecond)}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New[int](MaxBatchBytes, 10, tt.interval, tt.opts...)
			switch {
			case tt.want == 0 && err == nil:
				t.Errorf("no error; linger %v", b.due.linger)
			case tt.want != 0 && err != nil:
				t.Errorf("error %v", err)
			case tt.want != 0 && b.due.linger != tt.want:
				t.Errorf("linger %v, want %v", b.due.linger, tt.want)
			}
		})
	}
}
