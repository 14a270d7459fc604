package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/cio-relay/cio-relay/batcher"
)

// Result is everything a run measured.
type Result struct {
	Events          int     `json:"events"`
	Seed            uint64  `json:"seed"`
	Stream          string  `json:"stream"`
	NATS            string  `json:"nats"`
	NATSExternal    bool    `json:"nats_external"` // CPU, RSS and allocations then exclude the server
	NATSVersion     string  `json:"nats_server_version"`
	Machine         Machine `json:"machine"`
	FlushInterval   float64 `json:"flush_interval_seconds"`
	LatencyRate     int     `json:"latency_rate"`
	LatencyDuration float64 `json:"latency_duration_seconds"`

	PublishedBytes int64  `json:"published_bytes"` // message bodies
	StreamBytes    uint64 `json:"stream_bytes"`    // as the stream reports them
	// SyncSeconds is the time spent flushing dirty pages to disk before the
	// consume phases, outside any timed phase.
	SyncSeconds float64 `json:"sync_seconds"`

	Publish Phase `json:"publish"`
	Bare    Phase `json:"bare"` // ends when the server holds no unacked message
	// Worker ends when the stand-in has received every call;
	// WorkerSettledSeconds is when the server also held no unacked message.
	Worker               Phase   `json:"worker"`
	WorkerSettledSeconds float64 `json:"worker_settled_seconds"`
	// WorkerFirstCallSeconds is when the first batch arrived: binding the
	// consumer, the first pull and the first batch filling.
	WorkerFirstCallSeconds float64 `json:"worker_first_call_seconds"`
	// The worker's rate while the backlog lasted: the calls delivered up to
	// the last full batch, over the time from start to its arrival. The
	// backlog's last, partial batch is sent only when the flush interval
	// expires, so Worker.EventsPerSec includes up to one FlushInterval of
	// waiting that has nothing to do with throughput.
	WorkerBacklogRate    float64    `json:"worker_backlog_events_per_sec"`
	WorkerBacklogSeconds float64    `json:"worker_backlog_seconds"`
	WorkerBacklogCalls   int64      `json:"worker_backlog_calls"`
	Ratio                float64    `json:"ratio"` // WorkerBacklogRate ÷ bare events/s; 0 when bare was skipped
	Batches              BatchStats `json:"batches"`
	Latency              *Latency   `json:"latency,omitempty"`
	MaxRSSBytes          int64      `json:"max_rss_bytes"` // whole run (getrusage)
	Targets              []Target   `json:"targets"`
}

// BatchStats describes the requests the stand-in received in one phase.
type BatchStats struct {
	Requests        int64   `json:"requests"`
	Calls           int64   `json:"calls"`
	BodyBytes       int64   `json:"body_bytes"`
	MeanFill        float64 `json:"mean_fill"` // mean body bytes ÷ 500,000
	MeanCalls       float64 `json:"mean_calls_per_request"`
	Short           int64   `json:"short_requests"` // body under 95% of the limit
	OverLimit       int64   `json:"over_limit_requests"`
	CallsOverLimit  int64   `json:"calls_over_limit"`
	Duplicates      int64   `json:"duplicate_calls"`
	UnknownIDs      int64   `json:"unknown_message_ids"`
	BadAuth         int64   `json:"bad_auth_requests"`
	BadRequests     int64   `json:"bad_requests"`
	DistinctArrived int64   `json:"distinct_calls_delivered"`
}

// Latency is the fixed-rate phase: publish → stand-in arrival, in seconds.
type Latency struct {
	Events       int        `json:"events"`
	AchievedRate float64    `json:"achieved_rate"`
	P50          float64    `json:"p50_seconds"`
	P90          float64    `json:"p90_seconds"`
	P99          float64    `json:"p99_seconds"`
	Max          float64    `json:"max_seconds"`
	Mean         float64    `json:"mean_seconds"`
	Phase        Phase      `json:"phase"`
	Batches      BatchStats `json:"batches"`
}

// Target is one of the performance targets and whether it was met.
type Target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

func (t *tracker) stats() BatchStats {
	s := BatchStats{
		Requests:        t.requests.Load(),
		Calls:           t.calls.Load(),
		BodyBytes:       t.bodyBytes.Load(),
		Short:           t.short.Load(),
		OverLimit:       t.overLimit.Load(),
		CallsOverLimit:  t.callsOverLimit.Load(),
		Duplicates:      t.duplicates.Load(),
		UnknownIDs:      t.unknown.Load(),
		BadAuth:         t.badAuth.Load(),
		BadRequests:     t.badRequests.Load(),
		DistinctArrived: t.delivered.Load(),
	}
	if s.Requests > 0 {
		s.MeanFill = float64(s.BodyBytes) / float64(s.Requests) / batcher.MaxBatchBytes
		s.MeanCalls = float64(s.Calls) / float64(s.Requests)
	}
	return s
}

// summary says what arrived, for an error.
func (t *tracker) summary() string {
	s := t.stats()
	return fmt.Sprintf("%d of %d calls delivered; %d requests, %d over the limit, %d bad auth, %d bad, %d duplicate calls, %d unknown ids",
		s.DistinctArrived, t.n, s.Requests, s.OverLimit, s.BadAuth, s.BadRequests, s.Duplicates, s.UnknownIDs)
}

// The targets.
const (
	targetRatio   = 0.75
	targetFill    = 0.95
	targetRSS     = 150 << 20
	targetLatency = 0.100 // seconds over the flush interval
)

func (r *Result) evaluate() {
	if r.Bare.EventsPerSec > 0 {
		r.Ratio = r.WorkerBacklogRate / r.Bare.EventsPerSec
		r.Targets = append(r.Targets, Target{"throughput vs bare consumer", fmt.Sprintf("≥ %.2f×", targetRatio),
			fmt.Sprintf("%.2f×", r.Ratio), r.Ratio >= targetRatio})
	}
	r.Targets = append(r.Targets, Target{"mean batch fill (backlog)", fmt.Sprintf("≥ %.0f%%", 100*targetFill),
		fmt.Sprintf("%.1f%%", 100*r.Batches.MeanFill), r.Batches.MeanFill >= targetFill})
	over := r.Batches.OverLimit
	if r.Latency != nil {
		over += r.Latency.Batches.OverLimit
	}
	r.Targets = append(r.Targets, Target{"over-limit requests", "0", strconv.FormatInt(over, 10), over == 0})
	rss := r.Worker.PeakRSSBytes
	if r.Latency != nil {
		rss = max(rss, r.Latency.Phase.PeakRSSBytes)
	}
	if rss == 0 {
		rss = r.MaxRSSBytes
	}
	what := "peak RSS while the worker ran (process incl. in-process nats-server)"
	if r.NATSExternal {
		what = "peak RSS while the worker ran (cio-relay process; NATS external)"
	}
	r.Targets = append(r.Targets, Target{what, "≤ 150 MB", mb(rss), rss <= targetRSS})
	if r.Latency != nil {
		want := r.FlushInterval + targetLatency
		r.Targets = append(r.Targets, Target{"latency p99", fmt.Sprintf("≤ %.0f ms", 1e3*want),
			fmt.Sprintf("%.0f ms", 1e3*r.Latency.P99), r.Latency.P99 <= want})
	}
}

// WriteJSON writes r as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes r for a person: the machine, a row per phase, the
// batches, the latency and the targets.
func (r *Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "cio-relay bench: %s events, seed %d, stream %s\n", thousands(int64(r.Events)), r.Seed, r.Stream)
	fmt.Fprintf(&b, "machine:  %s/%s, %s, %d CPUs, GOMAXPROCS %d, %s RAM, kernel %s, %s\n",
		m.OS, m.Arch, m.CPUModel, m.NumCPU, m.GOMAXPROCS, gb(m.MemTotal), m.Kernel, m.GoVersion)
	fmt.Fprintf(&b, "nats:     %s\n", r.NATS)
	fmt.Fprintf(&b, "backlog:  %s of bodies (mean %s B/event), %s in the stream\n",
		mb(r.PublishedBytes), thousands(r.PublishedBytes/int64(max(r.Events, 1))), mb(int64(r.StreamBytes)))
	if r.NATSExternal {
		b.WriteString("note:     CPU, RSS and allocations are this process's: the worker, the publisher, the bare consumer and\n" +
			"          the stand-in (cio-relay phase only); the external nats-server counts under \"other procs\".\n")
	} else {
		b.WriteString("note:     CPU, RSS and allocations are the whole process's: they include the in-process nats-server\n" +
			"          (both consume phases) and the stand-in (cio-relay phase only); --nats-url leaves the server out.\n")
	}
	b.WriteString("          \"other procs\" is CPU the rest of the machine used meanwhile: well above 0 (beyond an external\n" +
		"          nats-server), the machine was shared and the rates are pessimistic. live heap: peak heap marked live.\n\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tevents\tseconds\tevents/s\tMB/s\tCPU-s\tcores\tCPU-s/M ev\tpeak RSS\tlive heap\tallocs/ev\tB alloc/ev\tGCs\tother procs\t")
	row := func(p Phase) {
		other := "?"
		if p.OtherCores >= 0 {
			other = fmt.Sprintf("%.2f cores", p.OtherCores)
		}
		fmt.Fprintf(tw, "%-13s\t%s\t%.2f\t%s\t%.1f\t%.2f\t%.2f\t%.1f\t%s\t%s\t%.1f\t%s\t%d\t%s\t\n",
			p.Name, thousands(int64(p.Events)), p.Seconds, thousands(int64(p.EventsPerSec)), p.MBPerSec,
			p.CPUSeconds, p.CoresUsed, p.CPUSecondsPerMillion, mb(p.PeakRSSBytes), mb(int64(p.PeakLiveBytes)),
			p.AllocsPerEv, thousands(int64(p.AllocBytesEv)), p.GCs, other)
	}
	row(r.Publish)
	if r.Bare.Events > 0 {
		row(r.Bare)
	}
	row(r.Worker)
	if r.Latency != nil {
		row(r.Latency.Phase)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "cio-relay timeline: first batch at %.0f ms; last full batch at %.2fs (%s calls: %s events/s while the backlog lasted);\n"+
		"                    all delivered at %.2fs (the last, partial batch waits for the flush interval); every ack confirmed at %.2fs\n",
		1e3*r.WorkerFirstCallSeconds, r.WorkerBacklogSeconds, thousands(r.WorkerBacklogCalls), thousands(int64(r.WorkerBacklogRate)),
		r.Worker.Seconds, r.WorkerSettledSeconds)
	if r.Ratio > 0 {
		fmt.Fprintf(&b, "cio-relay / bare:   %.2f× (%s events/s while the backlog lasted vs %s; %.2f× counting the final flush wait)\n", r.Ratio,
			thousands(int64(r.WorkerBacklogRate)), thousands(int64(r.Bare.EventsPerSec)), r.Worker.EventsPerSec/r.Bare.EventsPerSec)
	}
	writeBatches(&b, "backlog batches:   ", r.Batches)
	if l := r.Latency; l != nil {
		writeBatches(&b, "latency batches:   ", l.Batches)
		fmt.Fprintf(&b, "latency:            %s events at %s/s (achieved %.0f/s): p50 %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms, mean %.0f ms\n",
			thousands(int64(l.Events)), thousands(int64(r.LatencyRate)), l.AchievedRate,
			1e3*l.P50, 1e3*l.P90, 1e3*l.P99, 1e3*l.Max, 1e3*l.Mean)
	}
	fmt.Fprintf(&b, "max RSS (run):      %s\n\n", mb(r.MaxRSSBytes))

	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\twant\tgot\t")
	for _, t := range r.Targets {
		mark := "met"
		if !t.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Want, t.Got, mark)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeBatches(b *strings.Builder, label string, s BatchStats) {
	fmt.Fprintf(b, "%s%s requests, mean fill %.1f%%, mean %.0f calls/request, %s short (<95%%), %d over-limit, %d duplicate calls\n",
		label, thousands(s.Requests), 100*s.MeanFill, s.MeanCalls, thousands(s.Short), s.OverLimit, s.Duplicates)
}

func mb(n int64) string {
	if n <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
}

func gb(n int64) string {
	if n <= 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f GiB", float64(n)/(1<<30))
}

// thousands formats n with comma separators.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
