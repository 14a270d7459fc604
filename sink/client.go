package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// API is one of Customer.io's HTTP APIs. It names the API in errors, metric
// labels and log fields, and tells Classify whose answer it is reading: the
// same status can mean different things from different APIs.
type API string

// Customer.io's APIs.
const (
	APICDP   API = "cdp"   // Data Pipelines: batches of Segment-style calls
	APIApp   API = "app"   // App API: broadcast triggers, and reads for the CLIs
	APITrack API = "track" // Track API: suppressions, unsubscribes, delivery metrics
)

// String returns the API's metric label: cdp, app or track.
func (a API) String() string { return string(a) }

// DefaultTimeout is the timeout of one request to Customer.io, reading the
// answer included, unless configured otherwise (RELAY_HTTP_TIMEOUT).
const DefaultTimeout = 30 * time.Second

// client is what every Customer.io client in this package shares, so that
// they cannot drift apart: the API it speaks, its base URL, credentials and
// User-Agent, an HTTP client that never follows a redirect, and the one way
// a request is sent and its outcome turned into nil, *StatusError or
// *TransportError.
type client struct {
	api       API
	base      string              // base URL, without a trailing '/'
	auth      func(*http.Request) // sets the credentials; nil sends none
	userAgent string
	http      *http.Client     // redirects refused (see NewHTTPClient)
	now       func() time.Time // reads Retry-After dates
}

// newClient returns the client for api at base; name is the Go type that
// wraps it, for the error when base or hc is missing.
func newClient(api API, name, base, userAgent string, hc *http.Client, auth func(*http.Request)) (client, error) {
	if base == "" || hc == nil {
		return client{}, fmt.Errorf("sink: %s needs a URL and an HTTP client", name)
	}
	return client{
		api:       api,
		base:      strings.TrimRight(base, "/"),
		auth:      auth,
		userAgent: userAgent,
		http:      withoutRedirects(hc),
		now:       time.Now,
	}, nil
}

// bearer authenticates with key as a Bearer token (the App API).
func bearer(key func() string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+key()) }
}

// basic authenticates with Basic auth, user and password read per request
// so that a rotated key is picked up.
func basic(user, password func() string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(user(), password()) }
}

// newRequest builds a request to u with the client's credentials and
// User-Agent; a request with a body sends it as JSON. what names the
// request in the error.
func (c *client) newRequest(ctx context.Context, method, u string, body io.Reader, what string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("building %s request: %w", what, err)
	}
	if c.auth != nil {
		c.auth(req)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", c.userAgent)
	return req, nil
}

// roundTrip sends req and returns a 2xx answer for the caller to read and
// close. Any other outcome is a *StatusError, its body read and the
// connection freed; a *TransportError when no answer came; or the
// context's error, wrapped, when the caller gave up. private are values
// req's path carries that must not appear in an error (a suppression's
// identifier), should a redirect's Location repeat them.
func (c *client) roundTrip(req *http.Request, private ...string) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, fmt.Errorf("customer.io %s request: %w", c.api, ctxErr)
		}
		// The URL can carry data (a suppressed person's email in the
		// path): keep the operation and the cause, not the URL.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = fmt.Errorf("%s request: %w", ue.Op, ue.Err)
		}
		return nil, &TransportError{API: c.api, Err: err}
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, statusError(resp, c.api, private, c.now())
	}
	return resp, nil
}

// doRead sends req and returns a 2xx answer's body, at most maxAnswerBody
// bytes; other outcomes are as for roundTrip. A read error leaves part of
// the body, or none: Customer.io has answered 2xx, so the request stands
// accepted and only what the body said is lost.
func (c *client) doRead(req *http.Request, private ...string) ([]byte, error) {
	resp, err := c.roundTrip(req, private...)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // so the connection is reused
	return b, nil
}

// do is doRead for a request whose answer does not matter beyond its
// status.
func (c *client) do(req *http.Request, private ...string) error {
	_, err := c.doRead(req, private...)
	return err
}

// statusError builds the *StatusError for a non-2xx answer: the body
// trimmed to maxErrorBody, Retry-After parsed, a redirect's
// Location made safe to log (see redirectTarget).
func statusError(resp *http.Response, api API, private []string, now time.Time) *StatusError {
	// Read whole (within reason) so that an error list longer than what
	// is kept can still be parsed.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(strings.ToValidUTF8(errorText(b), "?"))
	if len(msg) > maxErrorBody {
		msg = msg[:maxErrorBody] + "…"
	}
	return &StatusError{
		API:        api,
		Status:     resp.StatusCode,
		RetryAfter: ParseRetryAfter(resp.Header.Get("Retry-After"), now),
		Body:       msg,
		Location:   redirectTarget(resp, private),
	}
}

// errorText returns what an operator should read of an error body: the
// messages of the CDP API's documented {"meta":{"errors":["…",…]}} (its
// answer to a call that fails strict validation), joined by "; ", or the
// body as it is when it has another shape.
func errorText(b []byte) string {
	var e struct {
		Meta struct {
			Errors []string `json:"errors"`
		} `json:"meta"`
	}
	if json.Unmarshal(b, &e) != nil || len(e.Meta.Errors) == 0 {
		return string(b)
	}
	return strings.Join(e.Meta.Errors, "; ")
}

// redirectTarget returns where a 3xx answer points, for an operator to
// read in a log: scheme, host and path only. Credentials, the query (API
// keys and tokens travel there) and the fragment are dropped, and each of
// private found in the path (a suppression's identifier, usually an email
// address) is replaced by "[identifier]". "" when resp is no redirect or
// its Location is missing or unreadable.
func redirectTarget(resp *http.Response, private []string) string {
	if resp.StatusCode < 300 || resp.StatusCode >= 400 {
		return ""
	}
	loc, err := resp.Location()
	if err != nil {
		return ""
	}
	path := loc.Path // decoded, so any escaping of an identifier matches
	for _, p := range private {
		if p != "" {
			path = strings.ReplaceAll(path, p, "[identifier]")
		}
	}
	safe := url.URL{Scheme: loc.Scheme, Host: loc.Host, Path: path}
	return safe.String()
}
