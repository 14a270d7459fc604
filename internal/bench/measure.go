package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Phase is what one phase of a run measured. CPU, RSS and allocations are
// the bench process's (see the package doc); Server* are the nats-server
// process's, when it runs in its own.
type Phase struct {
	Name                 string  `json:"name"`
	Events               int     `json:"events"`
	Seconds              float64 `json:"seconds"`
	EventsPerSec         float64 `json:"events_per_sec"`
	MBPerSec             float64 `json:"mb_per_sec"` // published body bytes, 10^6
	CPUSeconds           float64 `json:"cpu_seconds"`
	CPUUserSeconds       float64 `json:"cpu_user_seconds"`
	CPUSysSeconds        float64 `json:"cpu_sys_seconds"`
	CPUSecondsPerMillion float64 `json:"cpu_seconds_per_million_events"`
	CoresUsed            float64 `json:"cores_used"` // CPU seconds per wall second
	// OtherCores is the CPU other processes used during the phase, in cores
	// (from /proc/stat; -1 when unknown). Anything well above 0 means the
	// machine was shared and the phase's numbers are pessimistic.
	OtherCores float64 `json:"other_cores"`
	// PeakRSSBytes is VmHWM after it was reset at the phase's start; 0 when
	// the kernel does not allow that (then see Result.MaxRSSBytes).
	PeakRSSBytes  int64   `json:"peak_rss_bytes"`
	PeakHeapBytes uint64  `json:"peak_heap_bytes"`  // heap objects, live and not yet swept, sampled
	PeakLiveBytes uint64  `json:"peak_live_bytes"`  // heap marked live by the latest GC, sampled
	PeakGoBytes   uint64  `json:"peak_go_bytes"`    // all memory the Go runtime had mapped, sampled
	Mallocs       uint64  `json:"mallocs"`          // heap allocations during the phase
	AllocsPerEv   float64 `json:"allocs_per_event"` // Mallocs / Events
	AllocBytesEv  float64 `json:"alloc_bytes_per_event"`
	GCs           uint32  `json:"gcs"`

	// StandInCPUSeconds is the CPU the Customer.io stand-in's handlers used
	// (measured per request on its thread; 0 when not measured), included
	// in CPUSeconds. RelayCPUSecondsPerMillion leaves it out: what cio-relay
	// itself costs.
	StandInCPUSeconds         float64 `json:"standin_cpu_seconds"`
	RelayCPUSecondsPerMillion float64 `json:"relay_cpu_seconds_per_million_events"`

	// The nats-server process's CPU (/proc/<pid>/stat) and peak RSS during
	// the phase; -1 when it is not a process the bench can see (in-process:
	// then its CPU is inside CPUSeconds).
	ServerCPUSeconds           float64 `json:"server_cpu_seconds"`
	ServerCPUSecondsPerMillion float64 `json:"server_cpu_seconds_per_million_events"`
	ServerPeakRSSBytes         int64   `json:"server_peak_rss_bytes"`
}

// meter measures one phase: begin, then end.
type meter struct {
	name      string
	start     time.Time
	cpu0      cpuTimes
	server    int     // the nats-server's pid, or 0
	srvCPU0   float64 // its CPU seconds at the start, or -1
	srvReset  bool
	standIn   *standIn // whose handler CPU is counted, or nil
	standIn0  time.Duration
	busy0     float64 // machine-wide busy CPU seconds, or -1
	ms0       runtime.MemStats
	rssReset  bool
	samples   sync.WaitGroup
	stop      chan struct{}
	peakHeap  uint64
	peakTotal uint64
	peakLive  uint64
}

// begin collects garbage and returns memory to the OS (outside the timed
// span), resets the peak RSS and starts sampling the heap.
//
// server is the nats-server's pid (0: none to measure); si, when not nil,
// is the stand-in whose CPU the phase reports apart.
func begin(name string, server int, si *standIn) *meter {
	debug.FreeOSMemory()
	m := &meter{name: name, stop: make(chan struct{}), server: server, srvCPU0: -1, standIn: si}
	m.rssReset = resetPeakRSS("self")
	if server > 0 {
		m.srvReset = resetPeakRSS(strconv.Itoa(server))
		m.srvCPU0 = procCPU(server)
	}
	if si != nil {
		m.standIn0 = si.cpu()
	}
	runtime.ReadMemStats(&m.ms0)
	m.samples.Go(m.sample)
	m.cpu0 = processCPU()
	m.busy0 = machineBusy()
	m.start = time.Now()
	return m
}

// sample polls runtime/metrics for the heap's peak. Reading them does not
// stop the world, unlike runtime.ReadMemStats.
func (m *meter) sample() {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/total:bytes"}, {Name: "/gc/heap/live:bytes"}}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		metrics.Read(s)
		if s[0].Value.Kind() == metrics.KindUint64 {
			m.peakHeap = max(m.peakHeap, s[0].Value.Uint64())
		}
		if s[1].Value.Kind() == metrics.KindUint64 {
			m.peakTotal = max(m.peakTotal, s[1].Value.Uint64())
		}
		if s[2].Value.Kind() == metrics.KindUint64 {
			m.peakLive = max(m.peakLive, s[2].Value.Uint64())
		}
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

// end closes the phase at the time it finished (end may be called later,
// after confirming it), for events events of bytes bytes.
func (m *meter) end(finished time.Time, events int, bytes int64) Phase {
	cpu := processCPU()
	busy := machineBusy()
	srvCPU := -1.0
	if m.server > 0 && m.srvCPU0 >= 0 {
		srvCPU = procCPU(m.server)
	}
	var standIn time.Duration
	if m.standIn != nil {
		standIn = m.standIn.cpu() - m.standIn0
	}
	now := time.Now()
	close(m.stop)
	m.samples.Wait()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	wall := finished.Sub(m.start).Seconds()
	p := Phase{
		Name:           m.name,
		Events:         events,
		Seconds:        wall,
		CPUUserSeconds: (cpu.user - m.cpu0.user).Seconds(),
		CPUSysSeconds:  (cpu.sys - m.cpu0.sys).Seconds(),
		PeakHeapBytes:  m.peakHeap,
		PeakGoBytes:    m.peakTotal,
		PeakLiveBytes:  m.peakLive,
		Mallocs:        ms.Mallocs - m.ms0.Mallocs,
		GCs:            ms.NumGC - m.ms0.NumGC,
	}
	p.CPUSeconds = p.CPUUserSeconds + p.CPUSysSeconds
	p.StandInCPUSeconds = standIn.Seconds()
	p.ServerCPUSeconds, p.ServerCPUSecondsPerMillion, p.ServerPeakRSSBytes = -1, -1, -1
	if srvCPU >= 0 {
		p.ServerCPUSeconds = srvCPU - m.srvCPU0
		if m.srvReset {
			p.ServerPeakRSSBytes = peakRSS(strconv.Itoa(m.server))
		}
	}
	p.OtherCores = -1
	if m.busy0 >= 0 && busy >= 0 {
		if span := now.Sub(m.start).Seconds(); span > 0 {
			p.OtherCores = max(0, (busy-m.busy0-p.CPUSeconds-max(0, p.ServerCPUSeconds))/span)
		}
	}
	if wall > 0 {
		p.EventsPerSec = float64(events) / wall
		p.MBPerSec = float64(bytes) / 1e6 / wall
		p.CoresUsed = p.CPUSeconds / wall
	}
	if events > 0 {
		p.CPUSecondsPerMillion = p.CPUSeconds * 1e6 / float64(events)
		p.RelayCPUSecondsPerMillion = (p.CPUSeconds - p.StandInCPUSeconds) * 1e6 / float64(events)
		if p.ServerCPUSeconds >= 0 {
			p.ServerCPUSecondsPerMillion = p.ServerCPUSeconds * 1e6 / float64(events)
		}
		p.AllocsPerEv = float64(p.Mallocs) / float64(events)
		p.AllocBytesEv = float64(ms.TotalAlloc-m.ms0.TotalAlloc) / float64(events)
	}
	if m.rssReset {
		p.PeakRSSBytes = peakRSS("self")
	}
	return p
}

// machineBusy returns the CPU seconds all processes have used since boot
// (user, nice, system, irq, softirq and steal from /proc/stat), or -1.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return -1
		}
		ticks += v
	}
	return float64(ticks) / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// procCPU returns the CPU seconds (user and system) process pid has used,
// from /proc/<pid>/stat, or -1.
func procCPU(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15, the 12th and 13th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return float64(utime+stime) / clockTicks
}

// resetPeakRSS resets the kernel's high-water mark of a process's RSS
// ("self" or a pid) to its current RSS (Linux 4.0+), so each phase's peak
// is its own.
func resetPeakRSS(proc string) bool {
	return os.WriteFile("/proc/"+proc+"/clear_refs", []byte("5"), 0) == nil
}

// peakRSS returns a process's VmHWM ("self" or a pid) in bytes, or 0.
func peakRSS(proc string) int64 {
	b, err := os.ReadFile("/proc/" + proc + "/status")
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(rest)), " kB"), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// Machine describes where a run happened.
type Machine struct {
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPUModel   string `json:"cpu_model"`
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	Kernel     string `json:"kernel,omitempty"`
	MemTotal   int64  `json:"mem_total_bytes,omitempty"`
}

func describeMachine() Machine {
	m := Machine{
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
		CPUModel:   "unknown",
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				m.MemTotal = kb << 10
			}
		}
	}
	return m
}
