package worker

import (
	"log/slog"
	"sync"
	"time"
)

// pauseState is shared by all senders of one API: delivery is paused while
// any of them holds work that got a configuration error. It is logged at
// error level once per probe interval, exposed as a metric and through
// Ready.
type pauseState struct {
	mu      sync.Mutex
	api     string // label and log field
	fix     string // what to check, for the log
	m       *metrics
	log     *slog.Logger
	every   time.Duration
	holders int
	since   time.Time
	lastLog time.Time
	lastErr string
}
