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
	NATSServerPID   int     `json:"nats_server_pid,omitempty"`
	NATSVersion     string  `json:"nats_server_version"`
	Machine         Machine `json:"machine"`
	FlushInterval   float64 `json:"flush_interval_seconds"`
	LatencyDuration float64 `json:"latency_duration_seconds"` // per scenario

	PublishedBytes int64  `json:"published_bytes"` // message bodies
	StreamBytes    uint64 `json:"stream_bytes"`    // as the stream reports them
	// SyncSeconds is the time spent flushing dirty pages to disk before the
	// consume phases, outside any timed phase.
	SyncSeconds float64 `json:"sync_seconds"`

	Publish Phase `json:"publish"`
	Bare    Phase `json:"bare"` // ends when the server holds no unacked message
	// Worker runs from the worker's start until the stand-in accepted the
	// last call; WorkerSettledSeconds is when the server also held no
	// unacked message.
	Worker               Phase   `json:"worker"`
	WorkerSettledSeconds float64 `json:"worker_settled_seconds"`
	// WorkerFirstCallSeconds is when the first batch arrived: binding the
	// consumer, the first pull and the first batch filling.
	WorkerFirstCallSeconds float64 `json:"worker_first_call_seconds"`
	// The worker's rate while the backlog lasted (secondary): the calls
	// delivered up to the last full batch, over the time from start to its
	// arrival. It leaves out the backlog's last, partial batch, which waits
	// for the flush interval unless the worker flushes on drain.
	WorkerBacklogRate    float64 `json:"worker_backlog_events_per_sec"`
	WorkerBacklogSeconds float64 `json:"worker_backlog_seconds"`
	WorkerBacklogCalls   int64   `json:"worker_backlog_calls"`
	// Ratio is the headline: Worker.EventsPerSec (worker start → last call
	// accepted) ÷ Bare.EventsPerSec; 0 when bare was skipped.
	Ratio float64 `json:"ratio"`
	// BacklogRatio is WorkerBacklogRate ÷ Bare.EventsPerSec.
	BacklogRatio float64 `json:"backlog_ratio"`
	// CPURatio is the relay's CPU per event (the stand-in's left out) ÷ the
	// bare consumer's.
	CPURatio float64    `json:"cpu_ratio"`
	Batches  BatchStats `json:"batches"`
	// Ordered is the same backlog drained again with ordering on
	// (Config.CompareOrdering); OrderedRatio its events/s ÷ Worker's.
	Ordered *Phase `json:"ordered,omitempty"`
	// BarePinned is the bare consumer again with the ordered path's
	// pinned priority policy (Config.CompareOrdering): what a pinned
	// consumer costs JetStream and its client, before the relay does
	// anything; PinnedRatio its events/s ÷ Bare's.
	BarePinned     *Phase      `json:"bare_pinned,omitempty"`
	PinnedRatio    float64     `json:"pinned_ratio,omitempty"`
	OrderedBatches *BatchStats `json:"ordered_batches,omitempty"`
	OrderedRatio   float64     `json:"ordered_ratio,omitempty"`
	Latency        []*Latency  `json:"latency,omitempty"`
	MaxRSSBytes    int64       `json:"max_rss_bytes"` // whole run: the largest phase peak, or getrusage
	Targets        []Target    `json:"targets"`
	// InProcess is a second run with nats-server inside the bench process
	// (cio-relay bench --inprocess), for comparison.
	InProcess *Result `json:"inprocess,omitempty"`
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

// Latency is one fixed-rate scenario: publish → accepted by the stand-in,
// in seconds.
type Latency struct {
	Rate          int     `json:"rate"` // events per second asked for
	Corpus        Corpus  `json:"corpus"`
	MeanBodyBytes float64 `json:"mean_body_bytes"`
	// RequestsPerSec is the requests the stand-in received over the
	// scenario's span: what a trickle costs in Customer.io's rate limit.
	RequestsPerSec float64 `json:"requests_per_sec"`
	Events         int     `json:"events"`
	AchievedRate   float64 `json:"achieved_rate"`
	P50            float64 `json:"p50_seconds"`
	P90            float64 `json:"p90_seconds"`
	P99            float64 `json:"p99_seconds"`
	Max            float64 `json:"max_seconds"`
	Mean           float64 `json:"mean_seconds"`
	// P99OtherKeys is CorpusHotKey's p99 over every person but the hot one.
	P99OtherKeys float64    `json:"p99_other_keys_seconds,omitempty"`
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
	targetRatio     = 0.85
	targetOrdered   = 0.75 // ordered ÷ unordered throughput
	targetCPURatio  = 1.5
	targetFill      = 0.95
	targetRSS       = 150 << 20
	targetLatency   = 0.100 // seconds, p99 at 5,000 events/s
	targetTrickle   = 0.050 // seconds, p99 at a trickle (50 events/s)
	trickleRateUpTo = 50    // events/s that count as a trickle
)

func (r *Result) evaluate() {
	if r.Bare.EventsPerSec > 0 {
		r.Ratio = r.Worker.EventsPerSec / r.Bare.EventsPerSec
		r.BacklogRatio = r.WorkerBacklogRate / r.Bare.EventsPerSec
		r.Targets = append(r.Targets, Target{"throughput vs bare consumer (start → last call accepted)", fmt.Sprintf("≥ %.2f×", targetRatio),
			fmt.Sprintf("%.2f×", r.Ratio), r.Ratio >= targetRatio})
		if r.Bare.CPUSecondsPerMillion > 0 {
			r.CPURatio = r.Worker.RelayCPUSecondsPerMillion / r.Bare.CPUSecondsPerMillion
			r.Targets = append(r.Targets, Target{"relay CPU per event vs bare consumer's", fmt.Sprintf("≤ %.1f×", targetCPURatio),
				fmt.Sprintf("%.2f×", r.CPURatio), r.CPURatio <= targetCPURatio})
		}
	}
	if r.BarePinned != nil && r.Bare.EventsPerSec > 0 {
		r.PinnedRatio = r.BarePinned.EventsPerSec / r.Bare.EventsPerSec
	}
	if r.Ordered != nil && r.Worker.EventsPerSec > 0 {
		r.OrderedRatio = r.Ordered.EventsPerSec / r.Worker.EventsPerSec
		r.Targets = append(r.Targets, Target{"ordered vs unordered throughput", fmt.Sprintf("≥ %.2f×", targetOrdered),
			fmt.Sprintf("%.2f×", r.OrderedRatio), r.OrderedRatio >= targetOrdered})
	}
	r.Targets = append(r.Targets, Target{"mean batch fill (backlog)", fmt.Sprintf("≥ %.0f%%", 100*targetFill),
		fmt.Sprintf("%.1f%%", 100*r.Batches.MeanFill), r.Batches.MeanFill >= targetFill})
	over := r.Batches.OverLimit
	rss := r.Worker.PeakRSSBytes
	for _, l := range r.Latency {
		over += l.Batches.OverLimit
		rss = max(rss, l.Phase.PeakRSSBytes)
	}
	r.Targets = append(r.Targets, Target{"over-limit requests", "0", strconv.FormatInt(over, 10), over == 0})
	if rss == 0 {
		rss = r.MaxRSSBytes
	}
	what := "peak RSS while the worker ran (process incl. in-process nats-server)"
	if r.NATSExternal {
		what = "peak RSS while the worker ran (cio-relay process; NATS external)"
	}
	r.Targets = append(r.Targets, Target{what, "≤ 150 MB", mb(rss), rss <= targetRSS})
	for _, l := range r.Latency {
		want := targetLatency
		if l.Rate <= trickleRateUpTo {
			want = targetTrickle
		}
		r.Targets = append(r.Targets, Target{fmt.Sprintf("latency p99, %s calls at %s/s", l.Corpus, thousands(int64(l.Rate))),
			fmt.Sprintf("≤ %.0f ms", 1e3*want), fmt.Sprintf("%.0f ms", 1e3*l.P99), l.P99 <= want})
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
			"          the stand-in (cio-relay and latency phases; \"relay\" leaves the stand-in's handlers out);\n" +
			"          \"server\" is the nats-server process's (/proc/<pid>), when the bench knows its pid.\n")
	} else {
		b.WriteString("note:     CPU, RSS and allocations are the whole process's: they include the in-process nats-server\n" +
			"          (every phase) and the stand-in (cio-relay and latency phases; \"relay\" leaves its handlers out).\n")
	}
	b.WriteString("          \"other procs\" is CPU the rest of the machine used meanwhile: well above 0, the machine was\n" +
		"          shared and the rates are pessimistic. live heap: peak heap marked live.\n\n")

	r.writePhases(&b)
	b.WriteString("\n")
	fmt.Fprintf(&b, "cio-relay timeline: first batch at %.0f ms; last full batch at %.2fs (%s calls); last call accepted at %.2fs;\n"+
		"                    every ack confirmed at %.2fs\n",
		1e3*r.WorkerFirstCallSeconds, r.WorkerBacklogSeconds, thousands(r.WorkerBacklogCalls), r.Worker.Seconds, r.WorkerSettledSeconds)
	if r.Ratio > 0 {
		fmt.Fprintf(&b, "cio-relay / bare:   %.2f× (%s events/s from worker start to the last call accepted, vs %s);\n"+
			"                    %.2f× while the backlog lasted (%s events/s up to the last full batch)\n",
			r.Ratio, thousands(int64(r.Worker.EventsPerSec)), thousands(int64(r.Bare.EventsPerSec)),
			r.BacklogRatio, thousands(int64(r.WorkerBacklogRate)))
		fmt.Fprintf(&b, "CPU per event:      relay %.2f× the bare consumer's (%.1f vs %.1f CPU-s per M events)", r.CPURatio,
			r.Worker.RelayCPUSecondsPerMillion, r.Bare.CPUSecondsPerMillion)
		if r.Worker.ServerCPUSeconds >= 0 && r.Bare.ServerCPUSeconds >= 0 {
			fmt.Fprintf(&b, "; nats-server %.1f vs %.1f", r.Worker.ServerCPUSecondsPerMillion, r.Bare.ServerCPUSecondsPerMillion)
		}
		b.WriteString("\n")
	}
	writeBatches(&b, "backlog batches:   ", r.Batches)
	if r.Ordered != nil {
		fmt.Fprintf(&b, "ordered/unordered:  %.2f× (%s events/s ordered, %s unordered; latency scenarios below ran ordered)\n",
			r.OrderedRatio, thousands(int64(r.Ordered.EventsPerSec)), thousands(int64(r.Worker.EventsPerSec)))
		writeBatches(&b, "ordered batches:   ", *r.OrderedBatches)
		if p := r.BarePinned; p != nil && r.Bare.EventsPerSec > 0 {
			server := ""
			if p.ServerCPUSeconds >= 0 && r.Bare.ServerCPUSeconds >= 0 { // < 0: the bench does not know the server's pid
				server = fmt.Sprintf(", nats-server %.1f vs %.1f", p.ServerCPUSecondsPerMillion, r.Bare.ServerCPUSecondsPerMillion)
			}
			fmt.Fprintf(&b, "pinned bare/bare:   %.2f× (%s events/s; CPU-s per M events: client %.1f vs %.1f%s): "+
				"what the pinned consumer itself costs, before the relay\n",
				r.PinnedRatio, thousands(int64(p.EventsPerSec)), p.CPUSecondsPerMillion, r.Bare.CPUSecondsPerMillion, server)
		}
	}
	for _, l := range r.Latency {
		fmt.Fprintf(&b, "latency %-5s %6s/s: %s events of %.0f B (achieved %.0f/s): p50 %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms, mean %.0f ms\n",
			l.Corpus, thousands(int64(l.Rate)), thousands(int64(l.Events)), l.MeanBodyBytes, l.AchievedRate,
			1e3*l.P50, 1e3*l.P90, 1e3*l.P99, 1e3*l.Max, 1e3*l.Mean)
		if l.Corpus == CorpusHotKey {
			fmt.Fprintf(&b, "  one person = 20%% of calls; p99 of the other persons' calls %.0f ms\n", 1e3*l.P99OtherKeys)
		}
		writeBatches(&b, fmt.Sprintf("  %.1f requests/s, ", l.RequestsPerSec), l.Batches)
	}
	fmt.Fprintf(&b, "max RSS (run):      %s\n", mb(r.MaxRSSBytes))
	if ip := r.InProcess; ip != nil {
		fmt.Fprintf(&b, "\nsecond run, %s:\n", ip.NATS)
		ip.writePhases(&b)
		fmt.Fprintf(&b, "cio-relay / bare:   %.2f× (%s vs %s events/s), %.2f× while the backlog lasted; fill %.1f%%\n",
			ip.Ratio, thousands(int64(ip.Worker.EventsPerSec)), thousands(int64(ip.Bare.EventsPerSec)), ip.BacklogRatio, 100*ip.Batches.MeanFill)
	}
	b.WriteString("\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
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

// writePhases writes a row per phase.
func (r *Result) writePhases(b *strings.Builder) {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tevents\tseconds\tevents/s\tMB/s\tCPU-s\tcores\tCPU-s/M ev\trelay CPU-s/M\tserver CPU-s/M\tpeak RSS\tserver RSS\tlive heap\tallocs/ev\tB alloc/ev\tGCs\tother procs\t")
	row := func(p Phase) {
		other := "?"
		if p.OtherCores >= 0 {
			other = fmt.Sprintf("%.2f cores", p.OtherCores)
		}
		srv := "n/a"
		if p.ServerCPUSeconds >= 0 {
			srv = fmt.Sprintf("%.1f", p.ServerCPUSecondsPerMillion)
		}
		fmt.Fprintf(tw, "%-13s\t%s\t%.2f\t%s\t%.1f\t%.2f\t%.2f\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%.1f\t%s\t%d\t%s\t\n",
			p.Name, thousands(int64(p.Events)), p.Seconds, thousands(int64(p.EventsPerSec)), p.MBPerSec,
			p.CPUSeconds, p.CoresUsed, p.CPUSecondsPerMillion, p.RelayCPUSecondsPerMillion, srv, mb(p.PeakRSSBytes), mb(p.ServerPeakRSSBytes),
			mb(int64(p.PeakLiveBytes)), p.AllocsPerEv, thousands(int64(p.AllocBytesEv)), p.GCs, other)
	}
	if r.Publish.Events > 0 {
		row(r.Publish)
	}
	if r.Bare.Events > 0 {
		row(r.Bare)
	}
	if r.BarePinned != nil {
		row(*r.BarePinned)
	}
	row(r.Worker)
	if r.Ordered != nil {
		row(*r.Ordered)
	}
	for _, l := range r.Latency {
		row(l.Phase)
	}
	_ = tw.Flush() // a strings.Builder does not fail
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
