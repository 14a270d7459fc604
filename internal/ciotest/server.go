package ciotest

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options configures a [Server]. CDPKey is required. An API whose
// credentials are left empty answers every request with 401, as Customer.io
// answers a key that does not exist.
type Options struct {
	// CDPKey is the CDP source's API key: the Basic auth user, with a blank
	// password.
	CDPKey string
	// SiteID and TrackKey are the Track API's Basic auth user and password.
	SiteID   string
	TrackKey string
	// AppKey is the App API's Bearer token.
	AppKey string
	// Now is the clock for the broadcast rate limit and for every recorded
	// time; default time.Now. It is called under the Server's lock, so it
	// must not call the Server.
	Now func() time.Time
	// Fault, when set, is consulted for every request once its body has
	// been read, before any other handling; the Request has everything but
	// Status, Outcome, Reason and Calls. A non-nil Fault is applied instead
	// of the normal answer. Fault is called concurrently and must not
	// modify the Request.
	Fault func(r *Request) *Fault
	// Rule, when set, is one more validation rule for CDP calls, applied
	// to each call that passes the documented ones: a call it returns an
	// error for is invalid, answered as any invalid call in the request's
	// mode (strict: 400, permissive: 200 and dropped). It stands for the
	// rules Customer.io applies that a client cannot know in advance (a
	// workspace's own, or one added later), so a test can show what
	// happens to a call only Customer.io refuses. Called concurrently.
	Rule func(c Call) error
}

// validate checks o once, returning every problem at once.
func (o *Options) validate() error {
	var errs []error
	if o.CDPKey == "" {
		errs = append(errs, errors.New("CDPKey is required"))
	}
	if (o.SiteID == "") != (o.TrackKey == "") {
		errs = append(errs, errors.New("SiteID and TrackKey must be set together"))
	}
	return errors.Join(errs...)
}

// API names the Customer.io API a request's path belongs to.
type API string

// The APIs the stand-in serves; APIUnknown is any other path (404).
const (
	APIUnknown API = ""
	APICDP     API = "cdp"
	APITrack   API = "track"
	APIApp     API = "app"
	// APIMoved is the target of redirects ([Server.MovedURL]): not
	// Customer.io, it answers 200 to any request and applies nothing.
	APIMoved API = "moved"
)

// Outcome is what the stand-in did with a request.
type Outcome string

// Outcomes of a request.
const (
	// OutcomeAccepted: answered 2xx and applied (CDP calls delivered,
	// suppression or trigger recorded).
	OutcomeAccepted Outcome = "accepted"
	// OutcomeDroppedOverLimit: answered 200 but nothing applied, because the
	// body or one call was over Customer.io's size limit.
	OutcomeDroppedOverLimit Outcome = "dropped_over_limit"
	// OutcomeDroppedInvalid: a CDP request in permissive mode (no
	// X-Strict-Mode: 1) that failed validation as a whole or in every
	// call: answered 200, nothing applied. A permissive request with some
	// valid calls is OutcomeAccepted, its invalid calls dropped (see
	// Call.Problem).
	OutcomeDroppedInvalid Outcome = "dropped_invalid"
	// OutcomeRejected: answered 4xx (other than 401 and 429); nothing
	// applied.
	OutcomeRejected Outcome = "rejected"
	// OutcomeUnauthorized: answered 401; nothing applied.
	OutcomeUnauthorized Outcome = "unauthorized"
	// OutcomeRateLimited: a broadcast trigger or an App API read answered 429.
	OutcomeRateLimited Outcome = "rate_limited"
	// OutcomeFault: Options.Fault chose the answer.
	OutcomeFault Outcome = "fault"
	// OutcomeMoved: a request to [Server.MovedURL], answered 200 and
	// applied nowhere. A client that follows a redirect ends here.
	OutcomeMoved Outcome = "moved"
)

// Request records one HTTP request the stand-in received. Body and the Raw
// bytes of Calls share memory: neither may be modified.
type Request struct {
	Time      time.Time   // when it arrived, by Options.Now
	API       API         // which API its path belongs to
	Method    string      // HTTP method
	Path      string      // the path as received, still escaped
	RawQuery  string      // the query as received, without '?'
	Header    http.Header // request headers
	Body      []byte      // the body exactly as received
	BodyBytes int         // len(Body)
	AuthOK    bool        // credentials were right for API
	Status    int         // status answered; 0 when a fault reset the connection
	Outcome   Outcome
	Reason    string // why it was not accepted; "" when accepted
	// Calls are the CDP calls in the body, in order, whenever it could be
	// parsed: for accepted requests and also for dropped and rejected ones,
	// so a test can name what was lost.
	Calls []Call
	// RemoteAddr is the client's address (host:port) as the connection
	// has it: which connection, and so which client process, sent it.
	RemoteAddr string
}

// Call is one CDP call as received.
type Call struct {
	Type      string          // "track", …; implied by the path for single-call endpoints
	MessageID string          // "" when absent
	UserID    string          // a string decoded, a number as written; "" when absent
	Raw       json.RawMessage // the call's exact bytes as they appear in the body
	Size      int             // len(Raw), the size Customer.io's per-call limit reads
	// Problem is why Customer.io's validation refuses the call; "" when
	// it passes. In an accepted (permissive) request, a call with a
	// Problem was silently dropped.
	Problem string
}

// Suppression is one accepted Track API suppress or unsuppress.
type Suppression struct {
	Action     string // "suppress" or "unsuppress"
	Identifier string // path-unescaped
	Time       time.Time
}

// Trigger is one accepted broadcast trigger.
type Trigger struct {
	BroadcastID int64
	TriggerID   int64           // the id answered, increasing from 1
	Body        json.RawMessage // the request body exactly as received
	Time        time.Time
}

// Stats counts what the stand-in saw. Delivery is judged by calls; requests
// tell how they were packed.
type Stats struct {
	Requests                 int
	ByStatus                 map[int]int // status 0: connection reset by a fault
	ByOutcome                map[Outcome]int
	BatchesAccepted          int // accepted POST /v1/batch requests
	CallsAccepted            int // calls delivered, from batches and single-call endpoints
	CallsWithoutMessageID    int // delivered calls with no (or an empty) messageId
	RequestsDroppedOverLimit int
	CallsDroppedOverLimit    int // calls parsed from requests dropped over a limit
	// Permissive mode's silent losses: requests answered 200 with nothing
	// applied, and calls answered 200 and dropped for failing validation
	// (those requests' and those dropped from accepted ones).
	RequestsDroppedInvalid int
	CallsDroppedInvalid    int
	RateLimited            int // broadcast triggers and App API reads answered 429
	MaxBodyBytes           int // largest body of any request
	MaxCallBytes           int // largest delivered call
	TotalBodyBytes         int64
}

// Server is a Customer.io stand-in listening on 127.0.0.1. It is safe for
// concurrent use.
type Server struct {
	opts Options
	srv  *httptest.Server
	done chan struct{} // closed when the test ends

	mu          sync.Mutex
	log         []Request
	stats       Stats
	supps       []Suppression
	unsubs      []Unsubscribe
	metrics     []MetricReport
	triggers    []Trigger
	lastTrigger map[int64]time.Time // by broadcast id: when the last accepted trigger arrived
	reads       appReads            // App API read endpoints: data and rate window (appread.go)
	changed     chan struct{}       // closed and replaced whenever calls are delivered
}

// NewServer starts a stand-in for the duration of t. It fails t at once if
// opts are invalid.
func NewServer(t testing.TB, opts Options) *Server {
	t.Helper()
	if err := opts.validate(); err != nil {
		t.Fatalf("ciotest: invalid options: %v", err)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		opts:        opts,
		done:        make(chan struct{}),
		lastTrigger: make(map[int64]time.Time),
		changed:     make(chan struct{}),
		stats: Stats{
			ByStatus:  make(map[int]int),
			ByOutcome: make(map[Outcome]int),
		},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(func() {
		close(s.done) // ends fault delays, so Close need not wait for them
		s.srv.Close()
	})
	return s
}

// CDPURL is the base URL of the CDP API, like https://cdp.customer.io/v1.
func (s *Server) CDPURL() string { return s.srv.URL + "/v1" }

// TrackURL is the base URL of the Track API, like
// https://track.customer.io/api/v1.
func (s *Server) TrackURL() string { return s.srv.URL + "/api/v1" }

// AppURL is the base URL of the App API, like https://api.customer.io/v1.
// It shares the /v1 prefix with CDPURL; requests are told apart by path.
func (s *Server) AppURL() string { return s.srv.URL + "/v1" }

// MovedURL is the base of a URL that answers 200 {} to any method and
// path below it and does nothing: where a [Fault] with a 3xx Status and a
// Location points, so a client that follows redirects is seen to "succeed"
// without delivering anything. Its requests are recorded with API
// [APIMoved] and Outcome [OutcomeMoved].
func (s *Server) MovedURL() string { return s.srv.URL + movedPrefix }

const movedPrefix = "/moved"

// Requests returns every request received so far, in the order they were
// answered.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// Delivered returns every CDP call accepted so far, in the order they were
// accepted. Calls in dropped or rejected requests are not in it.
func (s *Server) Delivered() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Calls are kept once, in their requests; collecting them here keeps a
	// second copy of a million call records out of memory.
	calls := make([]Call, 0, s.stats.CallsAccepted)
	for i := range s.log {
		if r := &s.log[i]; r.API == APICDP && r.Outcome == OutcomeAccepted {
			for _, c := range r.Calls {
				if c.Problem == "" {
					calls = append(calls, c)
				}
			}
		}
	}
	return calls
}

// DroppedInvalid returns every CDP call answered 200 and dropped because it
// failed validation in permissive mode, in order, each with its Problem:
// the calls a client that does not ask for strict mode loses without
// knowing.
func (s *Server) DroppedInvalid() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var calls []Call
	for i := range s.log {
		r := &s.log[i]
		if r.API != APICDP || (r.Outcome != OutcomeAccepted && r.Outcome != OutcomeDroppedInvalid) {
			continue
		}
		for _, c := range r.Calls {
			if c.Problem != "" || r.Outcome == OutcomeDroppedInvalid {
				calls = append(calls, c)
			}
		}
	}
	return calls
}

// Suppressions returns every accepted suppress and unsuppress, in order.
func (s *Server) Suppressions() []Suppression {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Suppression(nil), s.supps...)
}

// Triggers returns every accepted broadcast trigger, in order.
func (s *Server) Triggers() []Trigger {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Trigger(nil), s.triggers...)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ByStatus = maps.Clone(s.stats.ByStatus)
	st.ByOutcome = maps.Clone(s.stats.ByOutcome)
	return st
}

// ErrClosed is returned by WaitDelivered once the test has ended.
var ErrClosed = errors.New("ciotest: server closed")

// WaitDelivered blocks until at least n calls have been delivered, ctx is
// done (it returns an error wrapping ctx.Err()) or the server is closed
// ([ErrClosed]).
func (s *Server) WaitDelivered(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		have, changed := s.stats.CallsAccepted, s.changed
		s.mu.Unlock()
		if have >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d delivered calls, have %d: %w", n, have, ctx.Err())
		case <-s.done:
			return ErrClosed
		}
	}
}

// response is the answer to a request, before it is written.
type response struct {
	status  int
	outcome Outcome
	reason  string      // for the record and the error body
	header  http.Header // set on the answer in addition to Content-Type
	body    []byte      // nil: a JSON error body from reason
	// commit, when set, runs under the server's lock just before the
	// request is recorded: it applies the request's effects and may still
	// change the answer, so a check-and-set (the broadcast rate limit) is
	// atomic with the record.
	commit func(*response)
}

func accepted(body string) response {
	return response{status: http.StatusOK, outcome: OutcomeAccepted, body: []byte(body)}
}

func reject(status int, format string, args ...any) response {
	return response{status: status, outcome: OutcomeRejected, reason: fmt.Sprintf(format, args...)}
}

func dropped(format string, args ...any) response {
	// Customer.io answers an over-limit request as if it had succeeded.
	return response{status: http.StatusOK, outcome: OutcomeDroppedOverLimit, reason: fmt.Sprintf(format, args...), body: []byte("{}")}
}

func methodNotAllowed() response {
	r := reject(http.StatusMethodNotAllowed, "method not allowed: use POST")
	r.header = http.Header{"Allow": {http.MethodPost}}
	return r
}

func unauthorized(challenge string) response {
	r := reject(http.StatusUnauthorized, "unauthorized")
	r.outcome = OutcomeUnauthorized
	r.header = http.Header{"Www-Authenticate": {challenge}}
	return r
}

// errorBody is the stand-in's JSON error body, shaped like the Track and
// App APIs' {"meta":{"error":…}}. Clients should treat it as opaque text.
func errorBody(reason string) []byte {
	b, _ := json.Marshal(map[string]map[string]string{"meta": {"error": reason}})
	return b
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	req := Request{
		Time:     s.opts.Now(),
		Method:   r.Method,
		Path:     r.URL.EscapedPath(),
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
	}
	req.RemoteAddr = r.RemoteAddr
	req.API = apiOf(req.Path)
	req.AuthOK = s.authorized(req.API, r)
	body, err := readBody(r)
	req.Body, req.BodyBytes = body, len(body)
	if err != nil {
		s.finish(w, &req, reject(http.StatusBadRequest, "reading body: %v", err))
		return
	}
	var after *Fault // answered in place of the real answer, once applied
	if s.opts.Fault != nil {
		probe := req
		if f := s.opts.Fault(&probe); f != nil && f.AfterApplying {
			after = f
		} else if f != nil {
			if !f.Slow {
				s.fault(w, r, &req, f)
				return
			}
			// Slow: wait, then answer as Customer.io would.
			t := time.NewTimer(f.Delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-r.Context().Done():
				s.mu.Lock()
				s.recordLocked(&req, 0, OutcomeFault, "client gave up while the answer was delayed")
				s.mu.Unlock()
				return
			case <-s.done:
				return
			}
		}
	}
	var resp response
	switch req.API {
	case APICDP:
		resp = s.cdp(&req)
	case APITrack:
		resp = s.track(&req)
	case APIApp:
		var ok bool
		if resp, ok = s.appRead(&req); !ok {
			resp = s.app(&req)
		}
	case APIMoved:
		resp = accepted("{}")
		resp.outcome = OutcomeMoved
	default:
		resp = reject(http.StatusNotFound, "no such endpoint: %s", req.Path)
	}
	if after != nil {
		s.mu.Lock()
		if resp.commit != nil {
			resp.commit(&resp)
		}
		status := faultStatus(after)
		s.recordLocked(&req, status, resp.outcome, fmt.Sprintf("answer %d (%s) replaced by a fault after applying", resp.status, resp.reason))
		s.mu.Unlock()
		s.writeFault(w, r, after, status)
		return
	}
	s.finish(w, &req, resp)
}

// readBody reads r's body into one allocation when its length is declared:
// bodies are kept for the life of the test, and a half-empty buffer from
// doubling would cost up to twice their size.
func readBody(r *http.Request) ([]byte, error) {
	size := int64(bytes.MinRead)
	if n := r.ContentLength; n > 0 && n < 1<<30 {
		size += n
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	_, err := buf.ReadFrom(r.Body)
	return buf.Bytes(), err
}

// apiOf routes by path; the CDP and App APIs share the /v1 prefix.
func apiOf(path string) API {
	switch {
	case path == movedPrefix || strings.HasPrefix(path, movedPrefix+"/"):
		return APIMoved
	case strings.HasPrefix(path, appPrefix), isAppReadPath(path):
		return APIApp
	case strings.HasPrefix(path, trackPrefix), strings.HasPrefix(path, unsubscribePrefix):
		return APITrack
	case path == batchPath || cdpSingleTypes[path] != "":
		return APICDP
	}
	return APIUnknown
}

func (s *Server) authorized(api API, r *http.Request) bool {
	switch api {
	case APICDP:
		return basicAuth(r, s.opts.CDPKey, "")
	case APITrack:
		return s.opts.SiteID != "" && basicAuth(r, s.opts.SiteID, s.opts.TrackKey)
	case APIApp:
		return s.opts.AppKey != "" && bearerAuth(r, s.opts.AppKey)
	}
	return false
}

func basicAuth(r *http.Request, user, pass string) bool {
	if len(r.Header.Values("Authorization")) != 1 {
		return false
	}
	u, p, ok := r.BasicAuth()
	return ok && equal(u, user) && equal(p, pass)
}

func bearerAuth(r *http.Request, token string) bool {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return false
	}
	scheme, got, ok := strings.Cut(h[0], " ")
	// The scheme is case-insensitive (RFC 9110); the token is not.
	return ok && strings.EqualFold(scheme, "Bearer") && equal(got, token)
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// finish records req with its answer, applies its effects, then writes the
// answer. Recording before answering means a client that has its answer
// finds its request in Requests.
func (s *Server) finish(w http.ResponseWriter, req *Request, resp response) {
	s.mu.Lock()
	if resp.commit != nil {
		resp.commit(&resp)
	}
	s.recordLocked(req, resp.status, resp.outcome, resp.reason)
	s.mu.Unlock()

	h := w.Header()
	for k, v := range resp.header {
		h[k] = v
	}
	h.Set("Content-Type", "application/json")
	body := resp.body
	if body == nil {
		body = errorBody(resp.reason)
	}
	w.WriteHeader(resp.status)
	_, _ = w.Write(body) // a client that has gone cannot be told
}

func (s *Server) recordLocked(req *Request, status int, outcome Outcome, reason string) {
	req.Status, req.Outcome, req.Reason = status, outcome, reason
	s.log = append(s.log, *req)

	st := &s.stats
	st.Requests++
	st.ByStatus[status]++
	st.ByOutcome[outcome]++
	st.TotalBodyBytes += int64(req.BodyBytes)
	st.MaxBodyBytes = max(st.MaxBodyBytes, req.BodyBytes)
	switch {
	case outcome == OutcomeDroppedOverLimit:
		st.RequestsDroppedOverLimit++
		st.CallsDroppedOverLimit += len(req.Calls)
	case outcome == OutcomeRateLimited:
		st.RateLimited++
	case outcome == OutcomeDroppedInvalid:
		st.RequestsDroppedInvalid++
		st.CallsDroppedInvalid += len(req.Calls)
	case outcome == OutcomeAccepted && req.API == APICDP:
		if req.Path == batchPath {
			st.BatchesAccepted++
		}
		for _, c := range req.Calls {
			if c.Problem != "" {
				st.CallsDroppedInvalid++
				continue
			}
			st.CallsAccepted++
			if c.MessageID == "" {
				st.CallsWithoutMessageID++
			}
			st.MaxCallBytes = max(st.MaxCallBytes, c.Size)
		}
		close(s.changed)
		s.changed = make(chan struct{})
	}
}
