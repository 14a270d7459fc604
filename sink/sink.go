// Package sink speaks Customer.io's HTTP APIs. It knows nothing of NATS: it
// sends request bodies it is given and reports each outcome as a value the
// caller can classify (see StatusError and TransportError), never by string.
package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// maxErrorBody bounds how much of an error response is kept: enough for an
// operator to read Customer.io's message, not enough to bloat a log line or a
// dead-letter header.
const maxErrorBody = 512

// StatusError is an answer from Customer.io other than 2xx.
type StatusError struct {
	API        API
	Status     int
	RetryAfter time.Duration // from the Retry-After header; 0 when absent
	Body       string        // trimmed response body
	// Location is where a 3xx answer redirects to, resolved against the
	// request's URL and stripped of credentials, query, fragment and any
	// personal data the request's path carried; "" when none was given.
	Location string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("customer.io %s API answered %d %s", e.API, e.Status, http.StatusText(e.Status))
	if e.Redirect() {
		where := "somewhere (no Location given)"
		if e.Location != "" {
			where = e.Location
		}
		// The operator's fix is the URL setting, so say so: a redirect is
		// never followed (see NewHTTPClient).
		return msg + ": the URL redirects to " + where + "; redirects are not followed, so set the API URL to where it now lives"
	}
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// Redirect reports whether the answer was a 3xx.
func (e *StatusError) Redirect() bool { return e.Status >= 300 && e.Status < 400 }

// Retryable reports whether the same request may succeed later: rate limits,
// timeouts and server errors.
func (e *StatusError) Retryable() bool {
	return e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout || e.Status >= 500
}

// TransportError is a failure to get any answer: connection refused or
// reset, DNS, TLS, timeout. The request may or may not have been processed.
type TransportError struct {
	API API
	Err error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("customer.io %s API unreachable: %v", e.API, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// Retryable is always true: nothing was answered.
func (e *TransportError) Retryable() bool { return true }

// IsRetryable reports whether err is a failure that may succeed if the
// request is sent again.
func IsRetryable(err error) bool {
	var r interface{ Retryable() bool }
	return errors.As(err, &r) && r.Retryable()
}

// NewHTTPClient returns the one client the worker uses: connections kept
// warm for conns concurrent requests, each request bounded by timeout,
// redirects never followed.
//
// A followed redirect loses data: net/http turns a POST answered 301, 302
// or 303 into a bodyless GET, and whatever answers that GET with 200 gets
// the batch acked undelivered; a 307 or 308 re-sends the request with its
// credentials to a host nobody configured. Customer.io's APIs do not
// redirect, so a 3xx means the URL is wrong (or a proxy in front of it
// is): a configuration problem, paused on like a wrong key (see Classify).
func NewHTTPClient(conns int, timeout time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 2 * conns
	t.MaxIdleConnsPerHost = 2 * conns
	t.IdleConnTimeout = 90 * time.Second
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = timeout
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ForceAttemptHTTP2 = true
	return &http.Client{Transport: t, Timeout: timeout, CheckRedirect: refuseRedirect}
}

// refuseRedirect makes a client return a 3xx answer as it is.
func refuseRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// withoutRedirects returns a copy of c that never follows a redirect, so
// that no client the sink is given can (see NewHTTPClient). The copy
// shares c's Transport and its connections.
func withoutRedirects(c *http.Client) *http.Client {
	cc := *c
	cc.CheckRedirect = refuseRedirect
	return &cc
}

// CDP sends batch requests to Customer.io's Data Pipelines API.
//
// Every request carries X-Strict-Mode: 1 unless CDPOptions.Permissive is
// set. Without it the API is permissive: a call that fails Customer.io's
// own validation is logged in the workspace and the request answered 200,
// so the call is lost while its batch counts as delivered. In strict mode
// the same request is answered 400 with the errors, which the worker
// bisects until only the refused call is dead-lettered.
type CDP struct {
	c        client
	endpoint string // {URL}/batch
	strict   bool
}

// StrictModeHeader is the request header that asks the CDP API for strict
// validation when its value is "1".
const StrictModeHeader = "X-Strict-Mode"

// CDPOptions configures a CDP client.
type CDPOptions struct {
	URL       string        // base URL, e.g. https://cdp.customer.io/v1
	APIKey    func() string // called per request, so a rotated key is picked up
	UserAgent string
	Client    *http.Client
	// Permissive sends requests without X-Strict-Mode: 1, so Customer.io
	// answers 200 to, and drops, a call that fails its validation (see
	// CDP). Off by default; only for a workspace that needs it.
	Permissive bool
}

// NewCDP returns a client that posts to {URL}/batch.
func NewCDP(opts CDPOptions) (*CDP, error) {
	if opts.APIKey == nil {
		return nil, errors.New("sink: CDP needs a URL, an API key and an HTTP client")
	}
	// The key is the Basic auth user, with no password.
	c, err := newClient(APICDP, "CDP", opts.URL, opts.UserAgent, opts.Client, basic(opts.APIKey, func() string { return "" }))
	if err != nil {
		return nil, err
	}
	return &CDP{c: c, endpoint: c.base + "/batch", strict: !opts.Permissive}, nil
}

// SendBatch posts one batch body. It returns nil on 2xx, a *StatusError for
// any other answer and a *TransportError when no answer came.
//
// It returns only once the HTTP transport is done with body (net/http may
// still be writing a request body after it has the response, and closes it
// when done), so the caller may reuse body's memory as soon as it returns.
func (c *CDP) SendBatch(ctx context.Context, body []byte) error {
	rb := &requestBody{Reader: bytes.NewReader(body), closed: make(chan struct{})}
	req, err := c.c.newRequest(ctx, http.MethodPost, c.endpoint, rb, "CDP")
	if err != nil {
		return err
	}
	req.ContentLength = int64(len(body))
	if c.strict {
		req.Header.Set(StrictModeHeader, "1")
	}
	err = c.c.do(req)
	// The transport closes the body on every path, bounded by the client's
	// timeout; the cap only guards against a transport that would not.
	select {
	case <-rb.closed:
	case <-time.After(bodyCloseCap):
	}
	return err
}

// bodyCloseCap bounds the wait for the transport to close a request body.
const bodyCloseCap = 2 * time.Minute

// requestBody is a request body that tells when the transport has closed it.
type requestBody struct {
	*bytes.Reader
	once   sync.Once
	closed chan struct{}
}

func (b *requestBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// ParseRetryAfter reads a Retry-After value, either delay-seconds or an HTTP
// date, relative to now. It returns 0 when v is empty, malformed or past.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// DryRun stands in for Customer.io when no API key is configured: it writes
// each batch body it is given as one line (NDJSON) and reports success.
type DryRun struct {
	mu sync.Mutex
	w  io.Writer
}

// NewDryRun returns a DryRun writing to w.
func NewDryRun(w io.Writer) *DryRun { return &DryRun{w: w} }

// SendBatch writes body and a newline. Batch bodies hold compacted JSON, so
// they never contain a newline of their own.
func (d *DryRun) SendBatch(_ context.Context, body []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.w.Write(append(body[:len(body):len(body)], '\n')); err != nil {
		return fmt.Errorf("dry-run sink: %w", err)
	}
	return nil
}

// Class is what a caller should do about the outcome of a request.
type Class int

// Classes of outcome.
const (
	// Delivered: a 2xx.
	Delivered Class = iota
	// Retry: the same request may succeed later (429, 408, 5xx, no answer).
	Retry
	// Pause: a configuration problem (401, 403: the key; 404, 405 and
	// any 3xx redirect: the URL). Nothing is wrong with the data, so nothing may be dead-lettered;
	// the caller stops and probes until it is fixed.
	Pause
	// Reject: Customer.io refused the request itself (400, 413, 422 and any
	// other 4xx): one or more of its calls are bad.
	Reject
	// Cancelled: the caller's context ended before an answer.
	Cancelled
)

func (c Class) String() string {
	switch c {
	case Delivered:
		return "delivered"
	case Retry:
		return "retry"
	case Pause:
		return "pause"
	case Reject:
		return "reject"
	case Cancelled:
		return "cancelled"
	}
	return "unknown"
}

// Classify maps the error of a send to its Class.
func Classify(err error) Class {
	if err == nil {
		return Delivered
	}
	var se *StatusError
	if errors.As(err, &se) {
		switch {
		case se.Redirect():
			// Customer.io does not redirect: the URL (or a proxy in
			// front of it) is wrong, not the data.
			return Pause
		case se.Retryable():
			return Retry
		case se.Status == http.StatusNotFound && se.API == APIApp:
			// The App API answers 404 for a broadcast that does not
			// exist: the trigger's data is wrong, not the configuration.
			return Reject
		case se.Status == http.StatusUnauthorized, se.Status == http.StatusForbidden,
			se.Status == http.StatusNotFound, se.Status == http.StatusMethodNotAllowed:
			return Pause
		default:
			return Reject
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		var te *TransportError
		if !errors.As(err, &te) {
			return Cancelled
		}
	}
	return Retry
}

// MaybeDelivered reports whether err leaves open that the request reached
// Customer.io and was acted on: a transport failure other than failing to
// connect (a timeout or reset after the request was written). Sending such a
// request again may do its work twice.
func MaybeDelivered(err error) bool {
	var te *TransportError
	if !errors.As(err, &te) {
		return false
	}
	var op *net.OpError
	return !errors.As(te.Err, &op) || op.Op != "dial"
}

// StatusOf returns the HTTP status in err, or 0.
func StatusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}
