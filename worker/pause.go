package worker

import (
	"log/slog"
	"sync"
	"time"

	"github.com/cio-relay/cio-relay/sink"
)

// pauseState is shared by all senders of one API: delivery is paused while
// any of them holds work that got a configuration error. It is logged at
// error level once per probe interval, exposed as a metric and through
// Ready.
type pauseState struct {
	mu      sync.Mutex
	api     sink.API // label and log field
	fix     string   // what to check, for the log
	m       *metrics
	log     *slog.Logger
	every   time.Duration
	holders int
	since   time.Time
	lastLog time.Time
	lastErr string
}

func (p *pauseState) init(api sink.API, fix string, m *metrics, log *slog.Logger, every time.Duration) {
	p.api, p.fix, p.m, p.log, p.every = api, fix, m, log, every
	m.authPaused.WithLabelValues(string(api)).Set(0)
}

func (p *pauseState) enter(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.holders == 0 {
		p.since = now
	}
	p.holders++
	p.lastErr = err.Error()
	p.m.authPaused.WithLabelValues(string(p.api)).Set(1)
	if now.Sub(p.lastLog) >= p.every {
		p.lastLog = now
		p.log.Error("delivery PAUSED: Customer.io refused the credentials or URL; nothing is dead-lettered, "+
			"retrying every probe interval; a rotated key file is picked up without restart",
			"api", string(p.api), "check", p.fix, "err", err, "probe_interval", p.every.String(),
			"paused_for", now.Sub(p.since).Round(time.Second).String())
	}
}

func (p *pauseState) leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holders--
	if p.holders == 0 {
		p.m.authPaused.WithLabelValues(string(p.api)).Set(0)
		p.log.Info("delivery resumed", "api", string(p.api), "paused_for", time.Since(p.since).Round(time.Millisecond).String())
		p.lastLog = time.Time{}
	}
}

func (p *pauseState) paused() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holders > 0 {
		return true, string(p.api) + " paused: " + p.lastErr
	}
	return false, ""
}
