package bench

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/batcher"
	"github.com/cio-relay/cio-relay/event"
)

// TestBenchSmall runs every phase on a small backlog, as the bench's
// headline runs them (nats-server in its own process), so CI covers the
// bench code: Run fails unless every call arrives exactly as published.
func TestBenchSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and the worker")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	r, err := Run(ctx, Config{
		Events:          5_000,
		StoreDir:        t.TempDir(),
		LatencyRates:    []int{1_000, 50},
		LatencyDuration: time.Second,
		StallTimeout:    30 * time.Second,
		Progress:        &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	if r.Batches.DistinctArrived != 5_000 || r.Batches.Duplicates != 0 || r.Batches.UnknownIDs != 0 {
		t.Errorf("backlog: %+v", r.Batches)
	}
	if !r.NATSExternal || r.NATSServerPID <= 0 {
		t.Errorf("nats-server not in its own process: %s (pid %d)", r.NATS, r.NATSServerPID)
	}
	for _, p := range []Phase{r.Bare, r.Worker} {
		if p.ServerCPUSeconds <= 0 || p.ServerPeakRSSBytes <= 0 {
			t.Errorf("%s: server CPU %.3fs, RSS %d: not measured", p.Name, p.ServerCPUSeconds, p.ServerPeakRSSBytes)
		}
	}
	if r.Worker.StandInCPUSeconds <= 0 || r.Worker.StandInCPUSeconds >= r.Worker.CPUSeconds {
		t.Errorf("stand-in CPU %.3fs of the phase's %.3fs", r.Worker.StandInCPUSeconds, r.Worker.CPUSeconds)
	}
	if r.Batches.BadAuth+r.Batches.BadRequests != 0 {
		t.Errorf("bad requests: %+v", r.Batches)
	}
	if r.Batches.MeanFill <= 0.8 {
		t.Errorf("mean fill %.3f, want > 0.8", r.Batches.MeanFill)
	}
	if r.Bare.Events != 5_000 || r.Bare.EventsPerSec <= 0 || r.Worker.EventsPerSec <= 0 || r.Ratio <= 0 || r.CPURatio <= 0 {
		t.Errorf("rates: bare %+v, worker %+v, ratio %v, CPU ratio %v", r.Bare, r.Worker, r.Ratio, r.CPURatio)
	}
	if r.Worker.Seconds < r.WorkerBacklogSeconds {
		t.Errorf("the phase (%.3fs) ends before the last full batch (%.3fs)", r.Worker.Seconds, r.WorkerBacklogSeconds)
	}
	want := []struct {
		rate   int
		corpus Corpus
	}{{1_000, CorpusBench}, {1_000, CorpusSmall}, {50, CorpusBench}, {50, CorpusSmall}}
	if len(r.Latency) != len(want) {
		t.Fatalf("%d latency scenarios, want %d", len(r.Latency), len(want))
	}
	for i, l := range r.Latency {
		if l.Rate != want[i].rate || l.Corpus != want[i].corpus || l.Events != want[i].rate {
			t.Errorf("scenario %d: %d %s/s, %d events; want %d %s", i, l.Rate, l.Corpus, l.Events, want[i].rate, want[i].corpus)
		}
		if l.P50 <= 0 || l.P99 < l.P50 || l.Max < l.P99 || l.Max > 10 || l.RequestsPerSec <= 0 || l.Batches.OverLimit != 0 {
			t.Errorf("latency %d %s/s: %+v", l.Rate, l.Corpus, l)
		}
		if small := l.Corpus == CorpusSmall; small != (l.MeanBodyBytes < 150) {
			t.Errorf("%s corpus: mean body %.0f bytes", l.Corpus, l.MeanBodyBytes)
		}
	}
	var table, js bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"bare consumer", "cio-relay", "latency small", "requests/s", "server CPU-s/M", "mean fill", "GOMAXPROCS"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	for _, want := range []string{`"server_cpu_seconds_per_million_events"`, `"requests_per_sec"`, `"corpus": "small"`, `"cpu_ratio"`} {
		if !strings.Contains(js.String(), want) {
			t.Errorf("JSON lacks %s", want)
		}
	}
	t.Logf("\n%s", table.String())
}

// TestBenchInProcess runs the second row's setup: nats-server inside the
// bench process, whose CPU the bench then cannot tell apart.
func TestBenchInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and the worker")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{Events: 2_000, InProcess: true, StoreDir: t.TempDir(), LatencyDuration: -1, StallTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.NATSExternal || r.Batches.DistinctArrived != 2_000 || r.Ratio <= 0 {
		t.Errorf("external %v, delivered %d, ratio %v", r.NATSExternal, r.Batches.DistinctArrived, r.Ratio)
	}
	if r.Worker.ServerCPUSeconds != -1 || len(r.Latency) != 0 {
		t.Errorf("server CPU %v (want -1: not a process of its own), %d latency scenarios", r.Worker.ServerCPUSeconds, len(r.Latency))
	}
}

// BenchmarkEndToEnd runs the bench on 50,000 events per iteration, with
// nats-server in its own process (go test -bench EndToEnd -benchtime 1x
// ./internal/bench).
func BenchmarkEndToEnd(b *testing.B) {
	var rate, backlog, bare, fill, allocs, cpu, srv float64
	for b.Loop() {
		r, err := Run(context.Background(), Config{
			Events:          50_000,
			StoreDir:        b.TempDir(),
			LatencyDuration: -1,
		})
		if err != nil {
			b.Fatal(err)
		}
		rate += r.Worker.EventsPerSec
		backlog += r.WorkerBacklogRate
		bare += r.Bare.EventsPerSec
		fill += r.Batches.MeanFill
		allocs += r.Worker.AllocsPerEv
		cpu += r.Worker.RelayCPUSecondsPerMillion
		srv += r.Worker.ServerCPUSecondsPerMillion
	}
	n := float64(b.N)
	b.ReportMetric(rate/n, "events/s")
	b.ReportMetric(bare/n, "bare-events/s")
	b.ReportMetric(rate/bare, "ratio")
	b.ReportMetric(backlog/bare, "backlog-ratio") // without the last batch's wait
	b.ReportMetric(100*fill/n, "fill%")
	b.ReportMetric(allocs/n, "allocs/event")
	b.ReportMetric(cpu/n, "CPU-s/Mevent")
	b.ReportMetric(srv/n, "server-CPU-s/Mevent")
}

func TestSmallCorpus(t *testing.T) {
	g := newCorpusGenerator(5, "bench-latency-small-50-", CorpusSmall)
	var prep event.Preparer
	total := 0
	for i := range 2_000 {
		subject, body := g.next(i)
		wire, err := prep.Prepare(nil, event.TypeOfSubject(subject), body, event.ID{Prefix: "unused-", Seq: uint64(i)})
		if err != nil {
			t.Fatalf("call %d (%s) invalid: %v\n%s", i, subject, err, body)
		}
		if len(wire) < 60 || len(wire) > 140 {
			t.Errorf("call %d: %d bytes on the wire, want about 100: %s", i, len(wire), wire)
		}
		total += len(wire)
	}
	if mean := total / 2_000; mean < 80 || mean > 120 {
		t.Errorf("mean %d bytes on the wire, want about 100", mean)
	}
}

func TestProcCPU(t *testing.T) {
	// Burn a little CPU so there is something to read at USER_HZ.
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	got := procCPU(os.Getpid())
	self := processCPU()
	if got <= 0 || got > (self.user+self.sys).Seconds()+0.02 {
		t.Errorf("procCPU(self) = %.3fs, getrusage says %.3fs", got, (self.user + self.sys).Seconds())
	}
	if procCPU(-1) != -1 {
		t.Error("procCPU of no process is not -1")
	}
}

func TestGenerator(t *testing.T) {
	const n = 20_000
	g := newGenerator(7, "gen-")
	var prep event.Preparer
	counts := map[event.Type]int{}
	var big, total int
	for i := range n {
		subject, body := g.next(i)
		typ := event.TypeOfSubject(subject)
		counts[typ]++
		total += len(body)
		if len(body) > sizeBody {
			big++
		}
		if len(body) > sizeTail+100 {
			t.Fatalf("call %d is %d bytes", i, len(body))
		}
		wire, err := prep.Prepare(nil, typ, body, event.ID{Prefix: "unused-", Seq: uint64(i)})
		if err != nil {
			t.Fatalf("call %d (%s) invalid: %v\n%s", i, subject, err, body)
		}
		if len(wire) > event.MaxCallBytes {
			t.Fatalf("call %d is %d bytes on the wire", i, len(wire))
		}
		if want := `"messageId":"gen-` + strconv.Itoa(i) + `"`; !bytes.Contains(wire, []byte(want)) {
			t.Fatalf("call %d lacks %s", i, want)
		}
	}
	for _, m := range mix {
		got := 100 * float64(counts[m.typ]) / n
		if got < float64(m.pct)-1.5 || got > float64(m.pct)+1.5 {
			t.Errorf("%s: %.1f%% of calls, want about %d%%", m.typ, got, m.pct)
		}
	}
	if got := 100 * float64(big) / n; got < 0.5 || got > 2 {
		t.Errorf("%.2f%% of calls over %d bytes, want about %d%%", got, sizeBody, tailPerCents)
	}
	if mean := total / n; mean < 900 || mean > 2000 {
		t.Errorf("mean body %d bytes", mean)
	}

	// The same seed gives the same calls.
	a, b := newGenerator(3, "x-"), newGenerator(3, "x-")
	for i := range 100 {
		sa, ba := a.next(i)
		sb, bb := b.next(i)
		if sa != sb || !bytes.Equal(ba, bb) {
			t.Fatalf("call %d differs between two generators of one seed", i)
		}
	}
}

func TestScanBatch(t *testing.T) {
	body := `{"batch":[{"type":"track","messageId":"m-1","properties":{"messageId":"inner","s":"a\"b\\","a":[1,{"x":"]}"}]}},` +
		`{"note":"messageId","userId":7,"messageId":"m-2"},{"userId":"u"}]}`
	calls, ids, err := scanBatch([]byte(body), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 3 {
		t.Fatalf("%d calls", len(calls))
	}
	var gotIDs []string
	for i, id := range ids {
		gotIDs = append(gotIDs, body[id.start:id.end])
		if c := body[calls[i].start:calls[i].end]; c[0] != '{' || c[len(c)-1] != '}' {
			t.Errorf("call %d is %q", i, c)
		}
	}
	if strings.Join(gotIDs, ",") != "m-1,m-2," {
		t.Errorf("ids %q", gotIDs)
	}
	if _, _, err := scanBatch([]byte(`{"batch":[]}`), nil, nil); err != nil {
		t.Errorf("empty batch: %v", err)
	}
	for _, bad := range []string{``, `{"batch":[}`, `{"batch":[{"a":1}`, `{"batch":[{"a":"1}]}`, `{"batch":[{"a":1}x]}`, `[{"a":1}]`, `{"batch":[1]}`} {
		if _, _, err := scanBatch([]byte(bad), nil, nil); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestStandIn(t *testing.T) {
	si := newStandIn("key")
	defer si.Close()
	tr := newTracker("p-", 3, true)
	si.track(tr)
	post := func(key, body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, si.URL()+"/batch", strings.NewReader(body))
		req.SetBasicAuth(key, "")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	call := func(id string, pad int) string {
		return `{"userId":"u","messageId":"` + id + `","p":"` + strings.Repeat("x", pad) + `"}`
	}

	if got := post("wrong", `{"batch":[]}`); got != http.StatusUnauthorized {
		t.Errorf("wrong key: %d", got)
	}
	if got := post("key", `{"batch":[`+call("p-0", 10)+`,`+call("p-1", 10)+`,`+call("p-0", 10)+`]}`); got != http.StatusOK {
		t.Errorf("valid batch: %d", got)
	}
	// A call one byte over 32,000: the whole request is dropped with a 200.
	long := call("p-2", 0)
	long = call("p-2", event.MaxCallBytes+1-len(long))
	if got := post("key", `{"batch":[`+long+`]}`); got != http.StatusOK {
		t.Errorf("over-limit call: %d", got)
	}
	// A body one byte over 500,000.
	var sb strings.Builder
	sb.WriteString(`{"batch":[`)
	for i := 0; sb.Len() < batcher.MaxBatchBytes; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(call("p-2", 20_000))
	}
	over := sb.String()[:batcher.MaxBatchBytes-1] + "]}"
	if got := post("key", over); got != http.StatusOK {
		t.Errorf("over-limit body: %d", got)
	}
	if got := post("key", `{"batch":[{"a":]}`); got != http.StatusBadRequest {
		t.Errorf("malformed: %d", got)
	}

	s := tr.stats()
	want := BatchStats{Requests: 5, Calls: 3, Short: 3, OverLimit: 2, CallsOverLimit: 1, Duplicates: 1, BadAuth: 1,
		BadRequests: 1, DistinctArrived: 2}
	s.BodyBytes, s.MeanFill, s.MeanCalls = 0, 0, 0
	if s != want {
		t.Errorf("stats\n got %+v\nwant %+v", s, want)
	}
	if tr.arrived[0].Load() == 0 || tr.arrived[1].Load() == 0 || tr.arrived[2].Load() != 0 {
		t.Errorf("arrival times %d %d %d", tr.arrived[0].Load(), tr.arrived[1].Load(), tr.arrived[2].Load())
	}
	select {
	case <-tr.done:
		t.Error("done before every call arrived")
	default:
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestBenchCompareOrdering: with CompareOrdering the backlog is drained a
// second time ordered, every call arriving once, and the latency scenarios
// gain the hot-key one, whose other persons' p99 is measured.
func TestBenchCompareOrdering(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server and the worker")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	r, err := Run(ctx, Config{
		Events:          3_000,
		StoreDir:        t.TempDir(),
		SkipBare:        true,
		CompareOrdering: true,
		LatencyRates:    []int{500},
		LatencyCorpora:  []Corpus{CorpusSmall},
		LatencyDuration: time.Second,
		StallTimeout:    30 * time.Second,
		Progress:        &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	if r.Ordered == nil || r.OrderedBatches.DistinctArrived != 3_000 || r.OrderedBatches.Duplicates != 0 || r.OrderedRatio <= 0 {
		t.Fatalf("ordered phase: %+v, batches %+v, ratio %v", r.Ordered, r.OrderedBatches, r.OrderedRatio)
	}
	if len(r.Latency) != 2 || r.Latency[1].Corpus != CorpusHotKey || r.Latency[1].P99OtherKeys <= 0 {
		t.Fatalf("latency scenarios: %+v", r.Latency)
	}
	var table strings.Builder
	if err := r.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ordered/unordered:", "p99 of the other persons' calls", "ordered vs unordered throughput"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

// TestHotKeyCorpus: every fifth call is the hot person's, the others are
// spread.
func TestHotKeyCorpus(t *testing.T) {
	g := newCorpusGenerator(5, "x-", CorpusHotKey)
	for i := range 50 {
		_, body := g.next(i)
		if hot := bytes.Contains(body, []byte(`"userId":"hot"`)); hot != hotCall(i) {
			t.Fatalf("call %d hot=%v: %s", i, hot, body)
		}
	}
}

// BenchmarkPrepareCorpus is event.Preparer.PrepareAt over 500 of the
// bench's calls (1.4 KB mean, long ASCII notes, a non-ASCII city and an
// escaped title in each), as the worker prepares them: per call, with its
// publish time. The bodies stay in cache, as a just-received one is.
func BenchmarkPrepareCorpus(b *testing.B) {
	g := newGenerator(1, "CIO-1-")
	type call struct {
		typ  event.Type
		body []byte
	}
	calls := make([]call, 500)
	total := 0
	for i := range calls {
		subject, body := g.next(i)
		calls[i] = call{event.TypeOfSubject(subject), body}
		total += len(body)
	}
	var p event.Preparer
	dst := make([]byte, 0, 64<<10)
	at := time.Unix(0, 1764624546123456789)
	b.SetBytes(int64(total / len(calls)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c := calls[i%len(calls)]
		var err error
		if dst, _, err = p.PrepareAt(dst[:0], c.typ, c.body, event.ID{Prefix: "CIO-1-", Seq: uint64(i)}, at); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWriteTableServerCPU: the table gives nats-server's CPU only where the
// bench measured it (its own process, pid known); a server it did not start
// has none (-1), which is not printed as a figure.
func TestWriteTableServerCPU(t *testing.T) {
	for _, tt := range []struct {
		name      string
		serverCPU float64
		want      string
	}{
		{"measured", 1.5, "nats-server 5.0 vs 5.0"},
		{"not measured", -1, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			phase := Phase{Events: 300_000, Seconds: 3, EventsPerSec: 100_000, CPUSecondsPerMillion: 6,
				ServerCPUSeconds: tt.serverCPU, ServerCPUSecondsPerMillion: 5}
			if tt.serverCPU < 0 {
				phase.ServerCPUSecondsPerMillion = -1
			}
			r := &Result{Events: 300_000, Bare: phase, Worker: phase, Ordered: &phase, BarePinned: &phase,
				OrderedBatches: &BatchStats{}, NATSExternal: tt.serverCPU < 0}
			r.evaluate()
			var b strings.Builder
			if err := r.WriteTable(&b); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			if strings.Contains(out, "-1.0") {
				t.Errorf("the table prints an unmeasured server CPU as -1.0:\n%s", out)
			}
			if tt.want != "" && !strings.Contains(out, tt.want) {
				t.Errorf("the table lacks %q:\n%s", tt.want, out)
			}
		})
	}
}
