package sink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cio-relay/cio-relay/event"
)

// MaxIdentifierBytes bounds a suppression identifier. Customer.io
// documents no limit on the path parameter itself; an identifier is the
// value of a person's id or email attribute, and "value for attribute …
// cannot be longer than 1000 bytes"
// (https://docs.customer.io/journeys/invalid-api-requests/). The 150-byte
// figure on the same page is for attribute names, not values.
const MaxIdentifierBytes = 1000

// ReasonInvalidIdentifier labels a suppression whose identifier cannot be
// sent (one of event's reasons, the one set). Syntax faults of the body
// use event's reasons (invalid_json, invalid_utf8).
const ReasonInvalidIdentifier = event.ReasonInvalidIdentifier

// Track sends suppressions, unsubscribes and delivery metrics to
// Customer.io's Track API.
type Track struct {
	c        client // without credentials when there is no site id
	endpoint string // {URL}/customers/
	root     string // scheme and host of URL: unsubscribes live there
	siteID   string // "": no credentials, only the calls that need none
}

// TrackOptions configures a Track client.
type TrackOptions struct {
	URL       string        // base URL, e.g. https://track.customer.io/api/v1
	SiteID    string        // the Basic auth user; with APIKey, or neither for unsubscribes and metrics only
	APIKey    func() string // the Track API key, Basic auth password; called per request, so a rotated key is picked up
	UserAgent string
	Client    *http.Client
}

// NewTrack returns a client for {URL}/customers/{identifier}/suppress and
// /unsuppress, {URL}/metrics and, at the root of URL's host,
// /unsubscribe/{delivery_id}. Without a site id and API key it can send
// only the calls that need no credentials (Unsubscribe, ReportMetric).
func NewTrack(opts TrackOptions) (*Track, error) {
	if opts.URL == "" || opts.Client == nil || (opts.SiteID == "") != (opts.APIKey == nil) {
		return nil, errors.New("sink: Track needs a URL, an HTTP client, and a site id and API key together or neither")
	}
	u, err := url.Parse(opts.URL)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("sink: Track URL %q is not an absolute URL", opts.URL)
	}
	var auth func(*http.Request) // none: only the calls that need none
	if opts.SiteID != "" {
		auth = basic(func() string { return opts.SiteID }, opts.APIKey)
	}
	c, err := newClient(APITrack, "Track", opts.URL, opts.UserAgent, opts.Client, auth)
	if err != nil {
		return nil, err
	}
	return &Track{c: c, endpoint: c.base + "/customers/", root: u.Scheme + "://" + u.Host, siteID: opts.SiteID}, nil
}

// Suppress deletes the person identifier names and stops the identifier
// from being added again. It cannot be undone for the person's data. It
// returns nil on 2xx, a *StatusError or *TransportError from the request,
// and an *event.InvalidError, without sending anything, for an identifier
// that ParseSuppression would refuse.
func (t *Track) Suppress(ctx context.Context, identifier string) error {
	return t.post(ctx, identifier, "suppress")
}

// Unsuppress lets identifier be added again; it restores no data. Errors
// are as for Suppress.
func (t *Track) Unsuppress(ctx context.Context, identifier string) error {
	return t.post(ctx, identifier, "unsuppress")
}

func (t *Track) post(ctx context.Context, identifier, action string) error {
	if err := checkIdentifier(identifier); err != nil {
		return err
	}
	if t.siteID == "" {
		return fmt.Errorf("%s: %w", action, errNoCredentials)
	}
	u := t.endpoint + escapeIdentifier(identifier) + "/" + action
	req, err := t.c.newRequest(ctx, http.MethodPost, u, nil, "Track "+action)
	if err != nil {
		return err
	}
	if err := t.c.do(req, identifier); err != nil {
		// The hash, not the identifier: it is usually an email address.
		return fmt.Errorf("%s of identifier %s: %w", action, HashIdentifier(identifier), err)
	}
	return nil
}

// errNoCredentials is returned by Suppress and Unsuppress on a Track
// client made without credentials.
var errNoCredentials = errors.New("sink: Track client has no site id and API key")

// escapeIdentifier makes identifier one path segment. url.PathEscape
// leaves "+" as it is, which is correct, but a server that decodes paths
// the way it decodes forms reads it as a space, and suppressing "a b@x.io"
// instead of "a+b@x.io" would silently fail a deletion request; "%2B" means
// "+" to every decoder.
func escapeIdentifier(identifier string) string {
	return strings.ReplaceAll(url.PathEscape(identifier), "+", "%2B")
}

// ParseSuppression reads the body of a suppress or unsuppress message,
// {"identifier":"…"}, and returns the identifier: a customer id, an email
// address or a cio_-prefixed Customer.io id. Other members are ignored. A
// body that can never succeed is an *event.InvalidError: invalid_utf8,
// invalid_json, or ReasonInvalidIdentifier when identifier is missing,
// repeated, not a string, blank, longer than MaxIdentifierBytes, contains
// a control character, or is "." or "..".
func ParseSuppression(body []byte) (string, error) {
	m, err := members(body)
	if err != nil {
		return "", err
	}
	var id string
	switch vs := m["identifier"]; {
	case len(vs) == 0:
		return "", invalidIdentifier("identifier is required")
	case len(vs) > 1:
		// Which copy Customer.io would act on depends on the parser; for
		// an irreversible deletion, neither.
		return "", invalidIdentifier("identifier appears more than once")
	case len(vs[0]) == 0 || vs[0][0] != '"' || json.Unmarshal(vs[0], &id) != nil:
		return "", invalidIdentifier("identifier must be a string")
	}
	if err := checkIdentifier(id); err != nil {
		return "", err
	}
	return id, nil
}

// checkIdentifier refuses identifiers that cannot name one person in one
// path segment.
func checkIdentifier(id string) error {
	return checkSegment("identifier", id, MaxIdentifierBytes, ReasonInvalidIdentifier)
}

// checkSegment refuses a value (a suppression's identifier, a delivery id)
// that cannot be one path segment of a request: blank, longer than
// maxBytes, not UTF-8, with a control character, or a dot segment. The
// error names the value as name, with reason.
func checkSegment(name, v string, maxBytes int, reason event.Reason) error {
	bad := func(detail string) error { return &event.InvalidError{Reason: reason, Detail: detail} }
	switch {
	case strings.TrimSpace(v) == "":
		return bad(name + " must not be blank")
	case len(v) > maxBytes:
		return bad(fmt.Sprintf("%s is %d bytes, longer than %d", name, len(v), maxBytes))
	case !utf8.ValidString(v):
		return bad(name + " is not valid UTF-8")
	case strings.ContainsFunc(v, unicode.IsControl):
		return bad(name + " contains a control character")
	case v == "." || v == "..":
		// Dot segments are removed by URL normalisation (RFC 3986 §5.2.4),
		// escaped or not, so the request would reach another endpoint.
		return bad(fmt.Sprintf("%s %q is a dot segment", name, v))
	}
	return nil
}

func invalidIdentifier(detail string) error {
	return &event.InvalidError{Reason: ReasonInvalidIdentifier, Detail: detail}
}

// HashIdentifier returns a short, stable stand-in for an identifier in
// logs and dead-letter details: the first 16 hex digits of its SHA-256.
// It lets an operator match a log line to a known person without the log
// holding an email address. It is pseudonymous, not anonymous: anyone
// holding a candidate identifier can hash it and compare.
func HashIdentifier(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:8])
}
