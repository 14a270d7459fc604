package bench

import (
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
)

// shortFill is the fill under which a request counts as short: a batch the
// worker closed by deadline (or as the last of a backlog) rather than by
// size.
const shortFill = 0.95

// standIn is a lean Customer.io CDP stand-in: POST /v1/batch only, answered
// 200 at once. Like Customer.io it answers an over-limit request 200 and
// delivers nothing in it; unlike internal/ciotest it keeps counters and a
// bitmap, not the requests.
type standIn struct {
	srv   *httptest.Server
	auth  string // the Authorization header expected
	start time.Time
	bufs  sync.Pool // *scratch
	phase atomic.Pointer[tracker]
	stray atomic.Int64 // requests that arrived while no phase was tracked
	// cpuNanos is the CPU its handlers have used, each measured on its own
	// locked thread: the stand-in shares the bench process with the worker,
	// and this is what to leave out to see the worker's own cost.
	cpuNanos atomic.Int64
}

// scratch is one request's reusable memory.
type scratch struct {
	body       []byte
	calls, ids []span
}

func newStandIn(apiKey string) *standIn {
	s := &standIn{
		auth:  "Basic " + base64.StdEncoding.EncodeToString([]byte(apiKey+":")),
		start: time.Now(),
	}
	s.bufs.New = func() any {
		return &scratch{body: make([]byte, batcher.MaxBatchBytes+1)}
	}
	s.srv = httptest.NewUnstartedServer(s)
	s.srv.Start() // 127.0.0.1, a random port
	return s
}

// URL is the CDP base URL to give sink.NewCDP.
func (s *standIn) URL() string { return s.srv.URL + "/v1" }

func (s *standIn) Close() { s.srv.Close() }

// now is the stand-in's clock, shared with the latency publisher: monotonic
// nanoseconds since the stand-in started.
func (s *standIn) now() int64 { return int64(time.Since(s.start)) }

// cpu returns the CPU time the stand-in's handlers have used so far.
func (s *standIn) cpu() time.Duration { return time.Duration(s.cpuNanos.Load()) }

// track makes t the phase that requests are counted in, returning the
// previous one.
func (s *standIn) track(t *tracker) *tracker { return s.phase.Swap(t) }

var okBody = []byte("{}")

func (s *standIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Hold the thread so its CPU clock is this handler's alone.
	runtime.LockOSThread()
	cpu0 := threadCPU()
	defer func() {
		s.cpuNanos.Add(int64(threadCPU() - cpu0))
		runtime.UnlockOSThread()
	}()
	t := s.phase.Load()
	if t == nil {
		s.stray.Add(1)
		t = &tracker{} // counted nowhere that is reported
	}
	t.requests.Add(1)
	if r.Method != http.MethodPost || r.URL.Path != "/v1/batch" {
		t.badRequests.Add(1)
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Authorization") != s.auth {
		t.badAuth.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="cdp"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	sc := s.bufs.Get().(*scratch)
	defer s.bufs.Put(sc)
	n, err := io.ReadFull(r.Body, sc.body)
	switch {
	case err == nil: // filled the buffer: one byte over the limit at least
		rest, _ := io.Copy(io.Discard, r.Body)
		t.overLimit.Add(1)
		t.bodyBytes.Add(int64(n) + rest)
		w.Write(okBody) // Customer.io's silent 200
		return
	case !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF):
		t.badRequests.Add(1)
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	// Accepted when the whole request has arrived: that is when Customer.io
	// could answer it.
	now := s.now()
	body := sc.body[:n]
	t.bodyBytes.Add(int64(n))
	if float64(n) < shortFill*batcher.MaxBatchBytes {
		t.short.Add(1)
	}
	sc.calls, sc.ids, err = scanBatch(body, sc.calls[:0], sc.ids[:0])
	if err != nil {
		t.badRequests.Add(1)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, c := range sc.calls {
		if c.end-c.start > event.MaxCallBytes {
			t.overLimit.Add(1)
			t.callsOverLimit.Add(1)
			w.Write(okBody) // dropped whole, answered 200
			return
		}
	}
	t.calls.Add(int64(len(sc.calls)))
	t.first.CompareAndSwap(0, max(now, 1))
	for _, id := range sc.ids {
		t.mark(body[id.start:id.end], now)
	}
	if float64(n) >= shortFill*batcher.MaxBatchBytes {
		t.fullArrived(now)
	}
	w.Write(okBody)
}

// tracker counts one phase's requests and the delivery of its N calls,
// whose messageIds are prefix followed by 0 … N-1.
type tracker struct {
	prefix string
	n      int
	bits   []atomic.Uint64
	// arrived[i] is when call i first arrived (standIn.now, never 0); nil
	// unless latency is measured.
	arrived []atomic.Int64
	done    chan struct{} // closed when all n have arrived

	mu       sync.Mutex
	lastFull int64 // standIn.now when the latest full batch arrived
	// deliveredAtFull is how many distinct calls had arrived by then: the
	// calls delivered before the backlog's last, partial batch, which waits
	// for the flush interval however fast the worker is.
	deliveredAtFull int64

	first          atomic.Int64 // standIn.now of the first valid request; 0 before
	complete       atomic.Int64 // standIn.now when the last of the n calls arrived; 0 before
	delivered      atomic.Int64 // distinct calls received in valid requests
	duplicates     atomic.Int64
	unknown        atomic.Int64 // calls whose messageId is not one of ours
	requests       atomic.Int64
	calls          atomic.Int64
	bodyBytes      atomic.Int64
	short          atomic.Int64
	overLimit      atomic.Int64 // requests dropped for a limit
	callsOverLimit atomic.Int64
	badAuth        atomic.Int64
	badRequests    atomic.Int64
}

func newTracker(prefix string, n int, latency bool) *tracker {
	t := &tracker{prefix: prefix, n: n, bits: make([]atomic.Uint64, (n+63)/64), done: make(chan struct{})}
	if latency {
		t.arrived = make([]atomic.Int64, n)
	}
	if n == 0 {
		close(t.done)
	}
	return t
}

func (t *tracker) fullArrived(now int64) {
	d := t.delivered.Load()
	t.mu.Lock()
	if now > t.lastFull {
		t.lastFull = now
	}
	t.deliveredAtFull = max(t.deliveredAtFull, d)
	t.mu.Unlock()
}

// lastFullBatch returns when the latest full batch arrived and how many
// calls had arrived by then.
func (t *tracker) lastFullBatch() (int64, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastFull, t.deliveredAtFull
}

func (t *tracker) mark(id []byte, now int64) {
	if len(id) <= len(t.prefix) || string(id[:len(t.prefix)]) != t.prefix {
		t.unknown.Add(1)
		return
	}
	i, ok := parseIndex(id[len(t.prefix):])
	if !ok || i >= uint64(t.n) {
		t.unknown.Add(1)
		return
	}
	bit := uint64(1) << (i % 64)
	if t.bits[i/64].Or(bit)&bit != 0 {
		t.duplicates.Add(1)
		return
	}
	if t.arrived != nil {
		t.arrived[i].Store(max(now, 1))
	}
	if t.delivered.Add(1) == int64(t.n) {
		t.complete.Store(max(now, 1))
		close(t.done)
	}
}

// parseIndex reads a decimal index of at most 18 digits.
func parseIndex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var i uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		i = i*10 + uint64(c-'0')
	}
	return i, true
}
