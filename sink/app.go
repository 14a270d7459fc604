package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxAnswerBody bounds how much of a 2xx answer is read: a trigger's
// answer is {"id":n} and a few fields at most.
const maxAnswerBody = 64 << 10

// App sends API-triggered broadcasts to Customer.io's App API.
type App struct {
	endpoint  string // {URL}/campaigns/
	apiKey    func() string
	userAgent string
	client    *http.Client
}

// AppOptions configures an App client.
type AppOptions struct {
	URL       string        // base URL, e.g. https://api.customer.io/v1
	APIKey    func() string // the App API key, sent as a Bearer token; called per request, so a rotated key is picked up
	UserAgent string
	Client    *http.Client
}

// NewApp returns a client for {URL}/campaigns/{broadcast_id}/triggers.
func NewApp(opts AppOptions) (*App, error) {
	if opts.URL == "" || opts.APIKey == nil || opts.Client == nil {
		return nil, errors.New("sink: App needs a URL, an API key and an HTTP client")
	}
	return &App{
		endpoint:  strings.TrimRight(opts.URL, "/") + "/campaigns/",
		apiKey:    opts.APIKey,
		userAgent: opts.UserAgent,
		client:    withoutRedirects(opts.Client),
	}, nil
}

// Trigger posts one trigger body (JSON without broadcast_id, which is in
// the path) and returns the trigger id Customer.io answered, with which
// the trigger's progress and errors can be looked up. Errors are a
// *StatusError (a 429 carries RetryAfter) or a *TransportError.
//
// A 2xx answer whose id cannot be read returns 0 and no error: the
// trigger was accepted, and reporting a failure would invite a retry that
// messages everyone again.
func (a *App) Trigger(ctx context.Context, broadcastID int64, body []byte) (int64, error) {
	if broadcastID <= 0 {
		return 0, fmt.Errorf("sink: broadcast id %d is not positive", broadcastID)
	}
	u := a.endpoint + strconv.FormatInt(broadcastID, 10) + "/triggers"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("building App trigger request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+a.apiKey())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", a.userAgent)
	answer, err := doRead(a.client, req, "app")
	if err != nil {
		return 0, fmt.Errorf("triggering broadcast %d: %w", broadcastID, err)
	}
	return triggerID(answer), nil
}

// MaybeTriggered reports whether a failed trigger request may nonetheless
// have been acted on, so sending it again could message its audience twice:
// MaybeDelivered's transport failures after the request was written, and
// the gateway errors 502 and 504. A gateway answers those when the service
// behind it failed or timed out while handling the request, which may be
// after the trigger was created. Other statuses come from Customer.io
// itself and are read as "not created": 429 and 503 refuse the request
// before any work, 4xx reject it on validation. A 500 is the one judgement
// call: it is retried, as a server that failed usually failed before
// committing anything.
func MaybeTriggered(err error) bool {
	if MaybeDelivered(err) {
		return true
	}
	var se *StatusError
	return errors.As(err, &se) && (se.Status == http.StatusBadGateway || se.Status == http.StatusGatewayTimeout)
}

// triggerID reads {"id":n} from an accepted trigger's answer, tolerating
// other members and an id sent as a string; 0 when there is none.
func triggerID(answer []byte) int64 {
	var v struct {
		ID json.Number `json:"id"`
	}
	if json.Unmarshal(answer, &v) != nil {
		return 0
	}
	id, err := v.ID.Int64()
	if err != nil || id < 0 {
		return 0
	}
	return id
}

// doRead is do for a request whose 2xx answer the caller needs: it returns
// that answer's body (at most maxAnswerBody bytes) and classifies every
// other outcome exactly as do does. do drains a 2xx body unread, which is
// why this exists beside it.
func doRead(client *http.Client, req *http.Request, api string, private ...string) ([]byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, fmt.Errorf("customer.io %s request: %w", api, ctxErr)
		}
		// The URL can carry data (a suppressed person's email in the path):
		// keep the operation and the cause, not the URL.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = fmt.Errorf("%s request: %w", ue.Op, ue.Err)
		}
		return nil, &TransportError{API: api, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return nil, statusError(resp, api, private)
	}
	// A read error leaves part of the body, or none: Customer.io has
	// answered 2xx, so the request stands accepted and only what the body
	// said is lost.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // so the connection is reused
	return b, nil
}

// statusError builds the *StatusError for a non-2xx answer as do does:
// the body trimmed to maxErrorBody, Retry-After parsed, a redirect's
// Location made safe to log (see redirectTarget).
func statusError(resp *http.Response, api string, private []string) *StatusError {
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
		RetryAfter: ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
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
