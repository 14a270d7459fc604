package ciotest

import (
	"net"
	"net/http"
	"time"
)

// Fault is an answer Options.Fault chooses in place of the normal one.
type Fault struct {
	// Status is the status answered; 0 means 500. Ignored when Reset.
	Status int
	// RetryAfter is the raw Retry-After header value; "" sends none.
	RetryAfter string
	// Body is the response body, sent as is.
	Body string
	// Reset closes the connection without any response, as a crashed
	// server or a dropped network would.
	Reset bool
	// Delay is waited first, before the answer or the reset.
	Delay time.Duration
	// Slow makes the Fault only a Delay: the request is then handled
	// normally (a slow Customer.io, not a failing one). Other fields are
	// ignored. A client that gives up during the delay is recorded as a
	// fault with status 0, and nothing is applied.
	Slow bool
}

// fault applies f to a request instead of handling it. The request is
// recorded before the delay, so a client that gives up waiting still finds
// it in Requests.
func (s *Server) fault(w http.ResponseWriter, r *http.Request, req *Request, f *Fault) {
	status := f.Status
	switch {
	case f.Reset:
		status = 0
	case status == 0:
		status = http.StatusInternalServerError
	}
	s.mu.Lock()
	s.recordLocked(req, status, OutcomeFault, "fault injected")
	s.mu.Unlock()

	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
	if f.Reset {
		reset(w)
		return
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(f.Body))
}

// reset closes the connection under w without writing anything. On TCP it
// discards unsent data and sends RST, like a peer that has died.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		// HTTP/2 cannot be hijacked; aborting the handler resets the stream.
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}
