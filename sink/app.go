package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// maxAnswerBody bounds how much of a 2xx answer is read: a trigger's
// answer is {"id":n} and a few fields at most.
const maxAnswerBody = 64 << 10

// App sends API-triggered broadcasts to Customer.io's App API.
type App struct {
	c        client
	endpoint string // {URL}/campaigns/
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
	if opts.APIKey == nil {
		return nil, errors.New("sink: App needs a URL, an API key and an HTTP client")
	}
	c, err := newClient(APIApp, "App", opts.URL, opts.UserAgent, opts.Client, bearer(opts.APIKey))
	if err != nil {
		return nil, err
	}
	return &App{c: c, endpoint: c.base + "/campaigns/"}, nil
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
	req, err := a.c.newRequest(ctx, http.MethodPost, u, bytes.NewReader(body), "App trigger")
	if err != nil {
		return 0, err
	}
	answer, err := a.c.doRead(req)
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
