package batcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"
)

// makeCall returns a JSON call of exactly n bytes (n ≥ 30) whose id is i,
// padded with text that is expensive to re-encode (<, >, &, multi-byte).
func makeCall(i, n int) []byte {
	head := fmt.Sprintf(`{"type":"track","messageId":"%d","p":"`, i)
	tail := `"}`
	pad := n - len(head) - len(tail)
	var b strings.Builder
	for b.Len() < pad {
		switch r := pad - b.Len(); {
		case r >= 4 && i%3 == 0:
			b.WriteString("😀")
		case r >= 2 && i%3 == 1:
			b.WriteString("é")
		default:
			b.WriteString("<&>"[b.Len()%3 : b.Len()%3+1])
		}
	}
	return []byte(head + b.String() + tail)
}

// checkBatches asserts the packing invariants over a sequence of batches built
// from calls: every body is at most maxBytes and at most maxCalls calls, is
// exactly {"batch":[...]} of the calls' bytes in order, every call appears
// exactly once, and a batch closed below the call cap was closed only because
// the next call did not fit.
func checkBatches(t *testing.T, calls [][]byte, batches []*Batch[int], maxBytes, maxCalls int) {
	t.Helper()
	next := 0
	for bi, b := range batches {
		body := b.Body()
		if len(body) > maxBytes {
			t.Fatalf("batch %d: %d bytes > limit %d", bi, len(body), maxBytes)
		}
		if b.Len() > maxCalls || b.Len() == 0 {
			t.Fatalf("batch %d: %d calls (cap %d)", bi, b.Len(), maxCalls)
		}
		var want bytes.Buffer
		want.WriteString(`{"batch":[`)
		for j, item := range b.Items {
			if item != next {
				t.Fatalf("batch %d: item %d is call %d, want %d", bi, j, item, next)
			}
			if j > 0 {
				want.WriteByte(',')
			}
			want.Write(calls[item])
			next++
		}
		want.WriteString(`]}`)
		if !bytes.Equal(body, want.Bytes()) {
			t.Fatalf("batch %d: body is not the calls' bytes", bi)
		}
		var parsed struct{ Batch []json.RawMessage }
		if err := json.Unmarshal(body, &parsed); err != nil || len(parsed.Batch) != b.Len() {
			t.Fatalf("batch %d: body does not parse to %d calls: %v", bi, b.Len(), err)
		}
		if bi < len(batches)-1 && b.Len() < maxCalls {
			nextCall := calls[batches[bi+1].Items[0]]
			if len(body)+1+len(nextCall) <= maxBytes {
				t.Fatalf("batch %d closed at %d bytes though the next call (%d bytes) fit", bi, len(body), len(nextCall))
			}
		}
	}
	if next != len(calls) {
		t.Fatalf("%d of %d calls packed", next, len(calls))
	}
}

func pack(t *testing.T, calls [][]byte, maxBytes, maxCalls int) []*Batch[int] {
	t.Helper()
	p, err := NewPacker[int](maxBytes, maxCalls)
	if err != nil {
		t.Fatal(err)
	}
	var out []*Batch[int]
	for i, c := range calls {
		b, err := p.Add(c, i, time.Time{})
		if err != nil {
			t.Fatalf("Add(call %d, %d bytes): %v", i, len(c), err)
		}
		if b != nil {
			out = append(out, b)
		}
	}
	if b := p.Flush(); b != nil {
		out = append(out, b)
	}
	return out
}

func TestPackerExactFit(t *testing.T) {
	// Two calls that fill a batch to the byte, then one more byte.
	a := makeCall(0, 100)
	for _, tt := range []struct {
		name     string
		secondSz int
		batches  int
	}{
		{"fills to the byte", MaxBatchBytes - Overhead - 100 - 1, 1},
		{"one byte over", MaxBatchBytes - Overhead - 100, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := [][]byte{a, makeCall(1, tt.secondSz)}
			// The second call is bigger than a CDP call may be; the
			// packer's own limit is the batch.
			got := pack(t, calls, MaxBatchBytes, 10)
			if len(got) != tt.batches {
				t.Fatalf("%d batches, want %d", len(got), tt.batches)
			}
			if tt.batches == 1 && len(got[0].Body()) != MaxBatchBytes {
				t.Fatalf("body %d bytes, want exactly %d", len(got[0].Body()), MaxBatchBytes)
			}
			checkBatches(t, calls, got, MaxBatchBytes, 10)
		})
	}
}

func TestPackerLimits(t *testing.T) {
	tests := []struct {
		name               string
		maxBytes, maxCalls int
		sizes              func(r *rand.Rand) int
	}{
		{"default, small calls", MaxBatchBytes, 2000, func(r *rand.Rand) int { return 30 + r.IntN(600) }},
		{"default, max-size calls", MaxBatchBytes, 2000, func(r *rand.Rand) int { return 31990 + r.IntN(11) }},
		{"long tail", MaxBatchBytes, 2000, func(r *rand.Rand) int {
			if r.IntN(50) == 0 {
				return 4000 + r.IntN(28001)
			}
			return 200 + r.IntN(3800)
		}},
		{"call cap", MaxBatchBytes, 7, func(r *rand.Rand) int { return 30 + r.IntN(100) }},
		{"small batches", 32100, 1000, func(r *rand.Rand) int { return 30 + r.IntN(32000-30+1) }},
		{"cap of one", 40000, 1, func(r *rand.Rand) int { return 30 + r.IntN(1000) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			calls := make([][]byte, 3000)
			for i := range calls {
				calls[i] = makeCall(i, tt.sizes(r))
			}
			checkBatches(t, calls, pack(t, calls, tt.maxBytes, tt.maxCalls), tt.maxBytes, tt.maxCalls)
		})
	}
}

func TestPackerRejects(t *testing.T) {
	if _, err := NewPacker[int](MaxBatchBytes+1, 10); err == nil {
		t.Error("NewPacker accepted a limit above Customer.io's")
	}
	if _, err := NewPacker[int](MaxBatchBytes, 0); err == nil {
		t.Error("NewPacker accepted a call cap of 0")
	}
	p, _ := NewPacker[int](1000, 10)
	if _, err := p.Add(makeCall(0, 1000-Overhead+1), 0, time.Time{}); !errors.Is(err, ErrCallTooLarge) {
		t.Errorf("Add of an oversize call: %v, want ErrCallTooLarge", err)
	}
	if p.Size() != 0 {
		t.Errorf("rejected call left %d bytes in the batch", p.Size())
	}
}

func FuzzPacker(f *testing.F) {
	f.Add([]byte{10, 200, 3, 255, 255, 1}, uint16(1000), uint8(5))
	f.Fuzz(func(t *testing.T, sizes []byte, limit uint16, maxCalls uint8) {
		maxBytes := int(limit)%MaxBatchBytes + Overhead + 31
		if maxCalls == 0 {
			maxCalls = 1
		}
		var calls [][]byte
		for i, s := range sizes {
			n := 30 + int(s)*int(s)%(maxBytes-Overhead-29)
			calls = append(calls, makeCall(i, n))
		}
		checkBatches(t, calls, pack(t, calls, maxBytes, int(maxCalls)), maxBytes, int(maxCalls))
	})
}

func TestRunFlushesOnDeadlineAndClose(t *testing.T) {
	b, err := New[int](MaxBatchBytes, 100, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	in := make(chan Call[int])
	out := make(chan *Batch[int])
	done := make(chan error, 1)
	go func() {
		done <- b.Run(context.Background(), in, out, func(Call[int], error) { t.Error("unexpected reject") })
	}()

	in <- Call[int]{Data: makeCall(0, 50), Item: 0}
	in <- Call[int]{Data: makeCall(1, 50), Item: 1}
	got := receive(t, out)
	if got.Len() != 2 {
		t.Fatalf("deadline batch has %d calls, want 2", got.Len())
	}
	if waited := time.Since(got.Created); waited < 20*time.Millisecond {
		t.Fatalf("batch flushed after %v, before the 20ms interval", waited)
	}

	in <- Call[int]{Data: makeCall(2, 50), Item: 2}
	close(in)
	if got := receive(t, out); got.Len() != 1 || got.Items[0] != 2 {
		t.Fatalf("close flush = %v", got.Items)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func TestRunCancelReturnsAtOnce(t *testing.T) {
	b, _ := New[int](MaxBatchBytes, 1, time.Hour)
	in := make(chan Call[int], 1)
	out := make(chan *Batch[int]) // nobody reads: Run blocks sending
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, in, out, func(Call[int], error) {}) }()
	in <- Call[int]{Data: makeCall(0, 50)}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func receive(t *testing.T, out <-chan *Batch[int]) *Batch[int] {
	t.Helper()
	select {
	case b := <-out:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no batch within 5s")
		return nil
	}
}

func BenchmarkPack(b *testing.B) { benchmarkPack(b, false) }

// BenchmarkPackReleased releases each batch as the worker does once it is
// sent, so bodies are recycled.
func BenchmarkPackReleased(b *testing.B) { benchmarkPack(b, true) }

func benchmarkPack(b *testing.B, release bool) {
	r := rand.New(rand.NewPCG(3, 4))
	calls := make([][]byte, 4096)
	total := 0
	for i := range calls {
		calls[i] = makeCall(i, 200+r.IntN(1000))
		total += len(calls[i])
	}
	p, _ := NewPacker[int](MaxBatchBytes, 100000)
	var filled, batches int
	b.SetBytes(int64(total / len(calls)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		batch, _ := p.Add(calls[i%len(calls)], i, time.Time{})
		if batch != nil {
			filled += len(batch.Body())
			batches++
			if release {
				batch.Release()
			}
		}
		i++
	}
	if batches > 0 {
		b.ReportMetric(100*float64(filled)/float64(batches*MaxBatchBytes), "fill%")
	}
}

// TestReleasedBodiesAreReusedSafely checks every batch's body as it closes,
// then releases it, so later batches are built in recycled buffers: a stale
// byte left in one would show as a body that is not its calls.
func TestReleasedBodiesAreReusedSafely(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	p, err := NewPacker[int](40000, 50)
	if err != nil {
		t.Fatal(err)
	}
	var calls [][]byte
	check := func(b *Batch[int]) {
		var want bytes.Buffer
		want.WriteString(`{"batch":[`)
		for j, item := range b.Items {
			if j > 0 {
				want.WriteByte(',')
			}
			want.Write(calls[item])
		}
		want.WriteString(`]}`)
		if !bytes.Equal(b.Body(), want.Bytes()) {
			t.Fatalf("batch of calls %v: body is not its calls", b.Items)
		}
		b.Release()
		if b.Body() != nil {
			t.Fatal("Body still set after Release")
		}
	}
	for i := range 5000 {
		calls = append(calls, makeCall(i, 30+r.IntN(3000)))
		b, err := p.Add(calls[i], i, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if b != nil {
			check(b)
		}
	}
	if b := p.Flush(); b != nil {
		check(b)
	}
}

// TestReleasedBodySurvivesGC: a busy relay collects garbage every few tens
// of milliseconds (113 cycles while the bench's 850 batches went), and a
// released body must still be there for the next batch afterwards rather
// than a fresh 500 KB buffer being allocated and zeroed.
func TestReleasedBodySurvivesGC(t *testing.T) {
	p, err := NewPacker[int](MaxBatchBytes, 3)
	if err != nil {
		t.Fatal(err)
	}
	call := makeCall(1, 1000)
	const batches = 20
	fresh := 0
	var last *byte
	for i := range batches {
		var b *Batch[int]
		for b == nil {
			if b, err = p.Add(call, i, time.Time{}); err != nil {
				t.Fatal(err)
			}
		}
		if first := &b.Body()[0]; i > 0 && first != last {
			fresh++
		}
		last = &b.Body()[0]
		b.Release()
		runtime.GC()
		runtime.GC()
	}
	if fresh > 0 {
		t.Errorf("%d of %d batches got a fresh body after their predecessor's was released", fresh, batches-1)
	}
}

// TestPackerAllocsPerBatch: at a steady state a batch costs the Batch and
// its item list, one allocation each, however many calls it holds; its
// body is a released one.
func TestPackerAllocsPerBatch(t *testing.T) {
	const calls = 300
	p, err := NewPacker[int](MaxBatchBytes, calls)
	if err != nil {
		t.Fatal(err)
	}
	call := makeCall(1, 1000)
	packOne := func() {
		for i := range calls {
			b, err := p.Add(call, i, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			if b != nil {
				if b.Len() != calls {
					t.Fatalf("batch of %d calls, want %d", b.Len(), calls)
				}
				b.Release()
			}
		}
	}
	packOne() // the first batch sizes what follows
	if n := testing.AllocsPerRun(20, packOne); n > 2 {
		t.Errorf("a batch of %d calls costs %v allocations, want at most 2", calls, n)
	}
}

// BenchmarkRun is the batcher as a pipeline stage, as the worker runs it:
// one goroutine sends calls one by one, another takes the batches and
// releases them. It measures the hand-off per call, not only the packing.
func BenchmarkRun(b *testing.B) {
	calls := make([][]byte, 1024)
	for i := range calls {
		calls[i] = makeCall(i, 1000)
	}
	bt, err := New[int](MaxBatchBytes, 2000, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	in := make(chan Call[int])
	out := make(chan *Batch[int])
	done := make(chan error, 1)
	go func() {
		done <- bt.Run(context.Background(), in, out, func(Call[int], error) { b.Error("unexpected reject") })
		close(out)
	}()
	go func() {
		for batch := range out {
			batch.Release()
		}
	}()
	b.SetBytes(1000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		in <- Call[int]{Data: calls[i%len(calls)], Item: i}
		i++
	}
	close(in)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRunSlices is BenchmarkRun with the calls handed over sliceCalls
// at a time (RunSlices), two slices used in turn, as the worker's reader
// does under load.
func BenchmarkRunSlices(b *testing.B) {
	calls := make([][]byte, 1024)
	for i := range calls {
		calls[i] = makeCall(i, 1000)
	}
	bt, err := New[int](MaxBatchBytes, 2000, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	in := make(chan []Call[int])
	out := make(chan *Batch[int])
	done := make(chan error, 1)
	go func() {
		done <- bt.RunSlices(context.Background(), in, out, func(Call[int], error) { b.Error("unexpected reject") })
		close(out)
	}()
	go func() {
		for batch := range out {
			batch.Release()
		}
	}()
	b.SetBytes(1000)
	b.ReportAllocs()
	var bufs [2][]Call[int]
	cur, i := 0, 0
	for b.Loop() {
		bufs[cur] = append(bufs[cur], Call[int]{Data: calls[i%len(calls)], Item: i})
		i++
		if len(bufs[cur]) == sliceCalls {
			in <- bufs[cur]
			cur = 1 - cur
			bufs[cur] = bufs[cur][:0]
		}
	}
	if len(bufs[cur]) > 0 {
		in <- bufs[cur]
	}
	close(in)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
