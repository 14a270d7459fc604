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
	// Location is sent as the Location header. With a 3xx Status it makes
	// the Fault a redirect, as a moved endpoint, a proxy or a load
	// balancer in front of Customer.io might answer; [Server.MovedURL]
	// is a target that answers 200 to anything, so a client that follows
	// the redirect gets a success for work nobody did.
	Location string
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
	// AfterApplying handles the request as Customer.io would first (a
	// trigger created, calls delivered, a suppression recorded), and
	// answers the Fault in place of the real answer: Customer.io acted,
	// and the answer was lost on the way, as when a gateway answers 502 or
	// 504 after its upstream accepted, or the connection drops after the
	// work was done. The request is recorded with the Fault's status and
	// the outcome of what was applied. Slow is ignored.
	AfterApplying bool
}

// fault applies f to a request instead of handling it. The request is
// recorded before the delay, so a client that gives up waiting still finds
// it in Requests.
func (s *Server) fault(w http.ResponseWriter, r *http.Request, req *Request, f *Fault) {
	status := faultStatus(f)
	s.mu.Lock()
	s.recordLocked(req, status, OutcomeFault, "fault injected")
	s.mu.Unlock()
	s.writeFault(w, r, f, status)
}

// faultStatus is the status f answers: 0 for a reset.
func faultStatus(f *Fault) int {
	switch {
	case f.Reset:
		return 0
	case f.Status == 0:
		return http.StatusInternalServerError
	}
	return f.Status
}

// writeFault waits f's delay and answers f, or resets the connection.
func (s *Server) writeFault(w http.ResponseWriter, r *http.Request, f *Fault, status int) {
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
	if f.Location != "" {
		w.Header().Set("Location", f.Location)
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

// FailCalls returns an Options.Fault that answers f to every CDP request
// carrying a call whose messageId is one of ids, however the calls are
// batched, and lets every other request through: a call Customer.io
// chokes on (a 500 every time it is sent, say) while the rest of the
// service is healthy. The body is parsed as the CDP endpoint parses it, so
// a messageId that only appears inside another field does not match.
func FailCalls(f Fault, ids ...string) func(*Request) *Fault {
	poison := make(map[string]bool, len(ids))
	for _, id := range ids {
		poison[id] = true
	}
	return func(r *Request) *Fault {
		if r.API != APICDP {
			return nil
		}
		calls, _, err := parseCDP(r.Body, cdpSingleTypes[r.Path])
		if err != nil {
			return nil
		}
		for _, c := range calls {
			if poison[c.MessageID] {
				f := f
				return &f
			}
		}
		return nil
	}
}
