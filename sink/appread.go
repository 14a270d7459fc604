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
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// App API reads, for the operator CLI (cio-relay cio …). Paths, parameters
// and fields follow Customer.io's App API reference: its OpenAPI document
// (docs.customer.io/files/journeys-app.json, operations listSegments,
// getSegment, getSegmentMembership, listMessages, listBroadcastTriggers,
// broadcastStatus, broadcastErrors, listWebhooks, getCollections,
// getCioAllowlist, listNewsletters, listSnippets, listTransactional) and
// the project's /work/shared/specs/customerio-api.md. Where the reference
// says nothing the README's table says "unverified".

// AppReadRate is the App API's documented limit for every endpoint but
// sends and triggers: "rate limited to 10 requests per 1s" (the 429 answer
// in the OpenAPI document). The reader never asks faster.
const AppReadRate = 10

// MaxMessagesPage is the largest page GET /v1/messages serves (its limit
// parameter: default 50, maximum 1000).
const MaxMessagesPage = 1000

// Page sizes asked for where the reference gives no maximum: small enough
// to be accepted, large enough that a long list takes few requests.
const (
	membershipPage    = 1000 // getSegmentMembership: default 1000, maximum 30000
	newslettersPage   = 100  // listNewsletters: no maximum documented
	triggerErrorsPage = 100  // broadcastErrors: no maximum documented
)

// maxReadBody bounds one read's answer: a page of 1000 messages is a
// megabyte or two; an answer larger than this is not one Customer.io sends.
const maxReadBody = 32 << 20

// readAttempts bounds how often one read is sent when Customer.io answers
// 429 with Retry-After, 5xx or not at all.
const readAttempts = 5

// maxRetryWait caps a Retry-After the reader honours; a longer one is
// returned as the error, for the operator to decide.
const maxRetryWait = time.Minute

// AppReader reads from Customer.io's App API. It paces its own requests
// at AppReadRate, waits out a 429's Retry-After and retries, and follows
// pagination cursors. It is safe for concurrent use, and all its users
// share one pace.
type AppReader struct {
	c        client // its now is the reader's clock, so tests control Retry-After
	limiter  *rate.Limiter
	pageSize int // 0: each read's largest
	now      func() time.Time
	sleep    func(context.Context, time.Duration) error
}

// AppReaderOptions configures an AppReader.
type AppReaderOptions struct {
	URL       string        // base URL, e.g. https://api.customer.io/v1
	APIKey    func() string // the App API key, sent as a Bearer token; called per request
	UserAgent string
	Client    *http.Client
	// Now and Sleep are the reader's clock, for pacing and Retry-After;
	// default time.Now and a timer. Tests pass a fake pair.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// PageSize caps the items asked for per request of a paged read;
	// 0 asks each read's largest page.
	PageSize int
}

// NewAppReader returns a reader for the App API at opts.URL.
func NewAppReader(opts AppReaderOptions) (*AppReader, error) {
	if opts.APIKey == nil {
		return nil, errors.New("sink: AppReader needs a URL, an API key and an HTTP client")
	}
	if (opts.Now == nil) != (opts.Sleep == nil) {
		return nil, errors.New("sink: AppReader needs both Now and Sleep, or neither")
	}
	if opts.PageSize < 0 {
		return nil, fmt.Errorf("sink: AppReader page size %d is negative", opts.PageSize)
	}
	if opts.Now == nil {
		opts.Now, opts.Sleep = time.Now, sleepContext
	}
	c, err := newClient(APIApp, "AppReader", opts.URL, opts.UserAgent, opts.Client, bearer(opts.APIKey))
	if err != nil {
		return nil, err
	}
	c.now = opts.Now
	return &AppReader{
		c: c,
		// A burst of 1 spaces requests 100 ms apart, so no sliding
		// second ever holds more than 10 of them, however the server
		// counts.
		limiter:  rate.NewLimiter(rate.Limit(AppReadRate), 1),
		pageSize: opts.PageSize,
		now:      opts.Now,
		sleep:    opts.Sleep,
	}, nil
}

func sleepContext(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// FlexString is an identifier or other value Customer.io may send as a
// string, a number or null (the reference types several ids one way and
// shows them the other in its examples). Null reads as "".
type FlexString string

// UnmarshalJSON accepts a string, a number, a boolean or null.
func (f *FlexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*f = ""
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = FlexString(s)
	case len(b) > 0 && (b[0] == '-' || (b[0] >= '0' && b[0] <= '9') || b[0] == 't' || b[0] == 'f'):
		*f = FlexString(b)
	default:
		return fmt.Errorf("want a string, number or null, got %.20s", b)
	}
	return nil
}

// Items is what a list read returns: the typed items, and each item's
// JSON exactly as Customer.io sent it (Raw[i] is Items[i]), so a --json
// output shows fields the typed struct does not name.
type Items[T any] struct {
	Items []T
	Raw   []json.RawMessage
}

// Item is what a read of one object returns, typed and as sent.
type Item[T any] struct {
	Value T
	Raw   json.RawMessage
}

// Integration is one entry of GET /v1/integrations (unverified: no such
// operation was found in the App API reference).
type Integration struct {
	ID   FlexString `json:"id"`
	Name string     `json:"name"`
	Type string     `json:"type"`
}

// Message is one delivery from GET /v1/messages (listMessages).
type Message struct {
	ID             string           `json:"id"`
	Type           string           `json:"type"`
	Created        int64            `json:"created"`
	CampaignID     FlexString       `json:"campaign_id"`
	BroadcastID    FlexString       `json:"broadcast_id"`
	NewsletterID   FlexString       `json:"newsletter_id"`
	ActionID       FlexString       `json:"action_id"`
	FailureMessage string           `json:"failure_message"`
	Metrics        map[string]int64 `json:"metrics"`
}

// Segment is a segment from GET /v1/segments (listSegments) and GET
// /v1/segments/{id} (getSegment).
type Segment struct {
	ID          FlexString `json:"id"`
	Name        string     `json:"name"`
	Description string     `json:"description"`
	State       string     `json:"state"`
	Progress    *int       `json:"progress"`
	Type        string     `json:"type"`
	Tags        []string   `json:"tags"`
	CreatedAt   int64      `json:"created_at"`
	UpdatedAt   int64      `json:"updated_at"`
}

// SegmentMember is one entry of getSegmentMembership's identifiers.
type SegmentMember struct {
	ID    FlexString `json:"id"`
	CioID FlexString `json:"cio_id"`
	Email FlexString `json:"email"`
}

// Trigger is an API-triggered broadcast's trigger: listed by GET
// /v1/broadcasts/{id}/triggers, read by GET
// /v1/campaigns/{id}/triggers/{trigger_id}.
type Trigger struct {
	ID          FlexString `json:"id"`
	BroadcastID FlexString `json:"broadcast_id"`
	CreatedAt   int64      `json:"created_at"`
	ProcessedAt int64      `json:"processed_at"`
}

// TriggerError is one entry of a trigger's errors. The reference
// (broadcastErrors) gives each as a string, "line <x>: <error text>",
// which is read into Detail; an object with detail and status, the App
// API's shape for its own errors, is read too.
type TriggerError struct {
	Detail string     `json:"detail"`
	Status FlexString `json:"status"`
}

// UnmarshalJSON reads a string or an object with detail and status.
func (e *TriggerError) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*e = TriggerError{Detail: s}
		return nil
	}
	type plain TriggerError
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("want an error's text or an object with detail: %w", err)
	}
	*e = TriggerError(p)
	return nil
}

// ReportingWebhook is one entry of GET /v1/reporting_webhooks (listWebhooks).
type ReportingWebhook struct {
	ID             FlexString `json:"id"`
	Name           string     `json:"name"`
	Endpoint       string     `json:"endpoint"`
	Type           string     `json:"type"`
	Disabled       bool       `json:"disabled"`
	FullResolution bool       `json:"full_resolution"`
	WithContent    bool       `json:"with_content"`
	Events         []string   `json:"events"`
}

// Collection is one entry of GET /v1/collections (getCollections).
type Collection struct {
	ID        FlexString `json:"id"`
	Name      string     `json:"name"`
	Rows      int64      `json:"rows"`
	Bytes     int64      `json:"bytes"`
	Schema    []string   `json:"schema"`
	CreatedAt int64      `json:"created_at"`
	UpdatedAt int64      `json:"updated_at"`
}

// IPAddress is one of Customer.io's sending IP addresses, from GET
// /v1/info/ip_addresses (getCioAllowlist: each a string; an object with
// "ip" or "address" is read too).
type IPAddress struct {
	Address string
}

// UnmarshalJSON reads a string or an object naming the address.
func (a *IPAddress) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		a.Address = s
		return nil
	}
	var o struct {
		IP      string `json:"ip"`
		Address string `json:"address"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf("want an address or an object with ip: %w", err)
	}
	a.Address = o.IP
	if a.Address == "" {
		a.Address = o.Address
	}
	return nil
}

// Newsletter is one entry of GET /v1/newsletters (listNewsletters).
type Newsletter struct {
	ID      FlexString `json:"id"`
	Name    string     `json:"name"`
	Type    string     `json:"type"`
	Created int64      `json:"created"`
	Updated int64      `json:"updated"`
	SentAt  int64      `json:"sent_at"`
	Tags    []string   `json:"tags"`
}

// Snippet is one entry of GET /v1/snippets (listSnippets).
type Snippet struct {
	Name      string `json:"name"`
	Value     string `json:"value"`
	UpdatedAt int64  `json:"updated_at"`
}

// TransactionalMessage is one entry of GET /v1/transactional.
type TransactionalMessage struct {
	ID                 FlexString `json:"id"`
	Name               string     `json:"name"`
	Description        string     `json:"description"`
	SendToUnsubscribed bool       `json:"send_to_unsubscribed"`
	LinkTracking       bool       `json:"link_tracking"`
	OpenTracking       bool       `json:"open_tracking"`
	HideMessageBody    bool       `json:"hide_message_body"`
	QueueDrafts        bool       `json:"queue_drafts"`
	CreatedAt          int64      `json:"created_at"`
	UpdatedAt          int64      `json:"updated_at"`
}

// Message types and metrics GET /v1/messages filters by (listMessages'
// enums).
var (
	MessageTypes   = []string{"email", "webhook", "twilio", "whatsapp", "slack", "push", "in_app", "live_notification"}
	MessageMetrics = []string{"attempted", "sent", "delivered", "opened", "clicked", "converted", "bounced", "spammed", "unsubscribed", "dropped", "failed", "undeliverable"}
)

// MessageFilter selects messages. Zero fields do not filter.
type MessageFilter struct {
	Type         string
	Metric       string
	CampaignID   int64
	NewsletterID int64
	ActionID     int64
	Since, Until time.Time // created at or after, before; sent as unix seconds
	Drafts       bool      // drafts instead of sent messages
}

// Check returns every problem with f at once, as Customer.io would refuse
// the request: unknown type or metric, a negative id, a window that ends
// before it starts or is longer than six months. now closes a window
// given only its start.
func (f MessageFilter) Check(now time.Time) error {
	var errs []error
	if f.Type != "" && !slices.Contains(MessageTypes, f.Type) {
		errs = append(errs, fmt.Errorf("type %q is not one of %s", f.Type, strings.Join(MessageTypes, ", ")))
	}
	if f.Metric != "" && !slices.Contains(MessageMetrics, f.Metric) {
		errs = append(errs, fmt.Errorf("metric %q is not one of %s", f.Metric, strings.Join(MessageMetrics, ", ")))
	}
	for _, id := range []struct {
		name string
		v    int64
	}{{"campaign", f.CampaignID}, {"newsletter", f.NewsletterID}, {"action", f.ActionID}} {
		if id.v < 0 {
			errs = append(errs, fmt.Errorf("%s id %d is negative", id.name, id.v))
		}
	}
	if err := CheckMessagesWindow(f.Since, f.Until, now); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckMessagesWindow refuses a messages window Customer.io cannot answer
// whole: one that ends before it starts, or spans more than six calendar
// months (listMessages: "we only send back 6 months of data", silently);
// until unset is now.
func CheckMessagesWindow(since, until, now time.Time) error {
	if since.IsZero() {
		return nil
	}
	end := until
	if end.IsZero() {
		end = now
	}
	if !end.After(since) {
		return fmt.Errorf("the window ends (%s) before it starts (%s)", end.UTC().Format(time.RFC3339), since.UTC().Format(time.RFC3339))
	}
	if since.AddDate(0, 6, 0).Before(end) {
		return fmt.Errorf("the window %s to %s is longer than the 6 months Customer.io answers for; narrow --since/--until",
			since.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339))
	}
	return nil
}

func (f MessageFilter) query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	id := func(k string, v int64) {
		if v > 0 {
			q.Set(k, strconv.FormatInt(v, 10))
		}
	}
	set("type", f.Type)
	set("metric", f.Metric)
	id("campaign_id", f.CampaignID)
	id("newsletter_id", f.NewsletterID)
	id("action_id", f.ActionID)
	if !f.Since.IsZero() {
		q.Set("start_ts", strconv.FormatInt(f.Since.Unix(), 10))
	}
	if !f.Until.IsZero() {
		q.Set("end_ts", strconv.FormatInt(f.Until.Unix(), 10))
	}
	if f.Drafts {
		q.Set("drafts", "true")
	}
	return q
}

// Integrations lists GET /v1/integrations → {"integrations":[…]}.
func (r *AppReader) Integrations(ctx context.Context) (Items[Integration], error) {
	return readAll[Integration](ctx, r, "/integrations", "integrations")
}

// Messages lists GET /v1/messages → {"messages":[…],"next":…}, following
// next as start until limit messages (0: all) or the last page.
func (r *AppReader) Messages(ctx context.Context, f MessageFilter, limit int) (Items[Message], error) {
	if err := f.Check(r.now()); err != nil {
		return Items[Message]{}, fmt.Errorf("messages: %w", err)
	}
	return readPages[Message](ctx, r, "/messages", f.query(), "messages", limit, MaxMessagesPage)
}

// Segments lists GET /v1/segments → {"segments":[…]}.
func (r *AppReader) Segments(ctx context.Context) (Items[Segment], error) {
	return readAll[Segment](ctx, r, "/segments", "segments")
}

// Segment reads GET /v1/segments/{id} → {"segment":{…}}.
func (r *AppReader) Segment(ctx context.Context, id int64) (Item[Segment], error) {
	if err := positive("segment", id); err != nil {
		return Item[Segment]{}, err
	}
	return readOne[Segment](ctx, r, "/segments/"+strconv.FormatInt(id, 10), "segment")
}

// SegmentMembers lists GET /v1/segments/{id}/membership →
// {"identifiers":[…],"ids":[…],"next":…}, following next as start.
func (r *AppReader) SegmentMembers(ctx context.Context, id int64, limit int) (Items[SegmentMember], error) {
	if err := positive("segment", id); err != nil {
		return Items[SegmentMember]{}, err
	}
	return readPages[SegmentMember](ctx, r, "/segments/"+strconv.FormatInt(id, 10)+"/membership", nil, "identifiers", limit, membershipPage)
}

// Triggers lists a broadcast's triggers: GET /v1/broadcasts/{id}/triggers
// → {"triggers":[…]}.
func (r *AppReader) Triggers(ctx context.Context, broadcastID int64) (Items[Trigger], error) {
	if err := positive("broadcast", broadcastID); err != nil {
		return Items[Trigger]{}, err
	}
	return readAll[Trigger](ctx, r, "/broadcasts/"+strconv.FormatInt(broadcastID, 10)+"/triggers", "triggers")
}

// Trigger reads one trigger: GET /v1/campaigns/{id}/triggers/{trigger_id}
// → the trigger itself (broadcastStatus; an answer wrapped in "trigger"
// is read too).
func (r *AppReader) Trigger(ctx context.Context, broadcastID, triggerID int64) (Item[Trigger], error) {
	if err := errors.Join(positive("broadcast", broadcastID), positive("trigger", triggerID)); err != nil {
		return Item[Trigger]{}, err
	}
	return readOne[Trigger](ctx, r, triggerPath(broadcastID, triggerID), "trigger")
}

// TriggerErrors lists a trigger's errors: GET
// /v1/campaigns/{id}/triggers/{trigger_id}/errors → {"errors":[string…],
// "next":offset}, following next as start.
func (r *AppReader) TriggerErrors(ctx context.Context, broadcastID, triggerID int64, limit int) (Items[TriggerError], error) {
	if err := errors.Join(positive("broadcast", broadcastID), positive("trigger", triggerID)); err != nil {
		return Items[TriggerError]{}, err
	}
	return readPages[TriggerError](ctx, r, triggerPath(broadcastID, triggerID)+"/errors", nil, "errors", limit, triggerErrorsPage)
}

func triggerPath(broadcastID, triggerID int64) string {
	return "/campaigns/" + strconv.FormatInt(broadcastID, 10) + "/triggers/" + strconv.FormatInt(triggerID, 10)
}

// ReportingWebhooks lists GET /v1/reporting_webhooks → {"reporting_webhooks":[…]}.
func (r *AppReader) ReportingWebhooks(ctx context.Context) (Items[ReportingWebhook], error) {
	return readAll[ReportingWebhook](ctx, r, "/reporting_webhooks", "reporting_webhooks")
}

// Collections lists GET /v1/collections → {"collections":[…]}.
func (r *AppReader) Collections(ctx context.Context) (Items[Collection], error) {
	return readAll[Collection](ctx, r, "/collections", "collections")
}

// IPAddresses lists GET /v1/info/ip_addresses → {"ip_addresses":[…]}.
func (r *AppReader) IPAddresses(ctx context.Context) (Items[IPAddress], error) {
	return readAll[IPAddress](ctx, r, "/info/ip_addresses", "ip_addresses")
}

// Newsletters lists GET /v1/newsletters?sort= → {"newsletters":[…],"next":…},
// following next as start. sort is "asc", "desc" or "" (Customer.io's
// default).
func (r *AppReader) Newsletters(ctx context.Context, sort string, limit int) (Items[Newsletter], error) {
	q := url.Values{}
	switch sort {
	case "":
	case "asc", "desc":
		q.Set("sort", sort)
	default:
		return Items[Newsletter]{}, fmt.Errorf("newsletters: sort %q is not asc or desc", sort)
	}
	return readPages[Newsletter](ctx, r, "/newsletters", q, "newsletters", limit, newslettersPage)
}

// Snippets lists GET /v1/snippets → {"snippets":[…]}.
func (r *AppReader) Snippets(ctx context.Context) (Items[Snippet], error) {
	return readAll[Snippet](ctx, r, "/snippets", "snippets")
}

// TransactionalMessages lists GET /v1/transactional → {"messages":[…]}.
func (r *AppReader) TransactionalMessages(ctx context.Context) (Items[TransactionalMessage], error) {
	return readAll[TransactionalMessage](ctx, r, "/transactional", "messages")
}

func positive(what string, id int64) error {
	if id <= 0 {
		return fmt.Errorf("%s id %d is not positive", what, id)
	}
	return nil
}

// readAll reads an unpaginated list: member key of the answer.
func readAll[T any](ctx context.Context, r *AppReader, path, key string) (Items[T], error) {
	body, err := r.get(ctx, path, nil)
	if err != nil {
		return Items[T]{}, err
	}
	raws, _, err := envelope(body, key)
	if err != nil {
		return Items[T]{}, fmt.Errorf("reading %s: %w", path, err)
	}
	var out Items[T]
	if err := out.add(raws); err != nil {
		return Items[T]{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return out, nil
}

// readPages reads a list paged with start/next: each request asks for at
// most pageMax (fewer when limit is nearly reached), and passes the
// previous answer's next as start, until next is empty or 0, a page is
// empty, or limit items are in hand (0: no limit).
func readPages[T any](ctx context.Context, r *AppReader, path string, q url.Values, key string, limit, pageMax int) (Items[T], error) {
	if limit < 0 {
		return Items[T]{}, fmt.Errorf("limit %d is negative", limit)
	}
	if q == nil {
		q = url.Values{}
	}
	if r.pageSize > 0 {
		pageMax = min(pageMax, r.pageSize)
	}
	var out Items[T]
	seen := map[string]bool{}
	for {
		page := pageMax
		if limit > 0 {
			page = min(page, limit-len(out.Items))
		}
		q.Set("limit", strconv.Itoa(page))
		body, err := r.get(ctx, path, q)
		if err != nil {
			return out, err
		}
		raws, next, err := envelope(body, key)
		if err != nil {
			return out, fmt.Errorf("reading %s: %w", path, err)
		}
		if limit > 0 && len(out.Items)+len(raws) > limit {
			raws = raws[:limit-len(out.Items)]
		}
		if err := out.add(raws); err != nil {
			return out, fmt.Errorf("reading %s: %w", path, err)
		}
		// "0" ends a list paged by offset (a trigger's errors): offset 0
		// is the first page, never the next one.
		if next == "" || next == "0" || len(raws) == 0 || (limit > 0 && len(out.Items) >= limit) {
			return out, nil
		}
		// A cursor seen before would loop forever: Customer.io's
		// pagination never repeats one.
		if seen[next] {
			return out, fmt.Errorf("reading %s: the answer's next cursor repeats an earlier one; stopping after %d items", path, len(out.Items))
		}
		seen[next] = true
		q.Set("start", next)
	}
}

func (it *Items[T]) add(raws []json.RawMessage) error {
	for i, raw := range raws {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("item %d: %w", len(it.Items)+i, err)
		}
		it.Items = append(it.Items, v)
		it.Raw = append(it.Raw, raw)
	}
	return nil
}

// readOne reads one object, the answer's member key, or the whole answer
// when it has no such member.
func readOne[T any](ctx context.Context, r *AppReader, path, key string) (Item[T], error) {
	body, err := r.get(ctx, path, nil)
	if err != nil {
		return Item[T]{}, err
	}
	var env map[string]json.RawMessage
	if err := json.Unmarshal(body, &env); err != nil {
		return Item[T]{}, fmt.Errorf("reading %s: the answer is not a JSON object: %w", path, err)
	}
	raw, ok := env[key]
	if !ok {
		raw = body
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return Item[T]{}, fmt.Errorf("reading %s: %w", path, err)
	}
	return Item[T]{Value: v, Raw: raw}, nil
}

// envelope reads {key:[…], "next":…}; a missing or null list is empty, a
// missing or null next is "". getSegmentMembership's answer may carry only
// "ids" (strings): those are returned as {"id":…} objects.
func envelope(body []byte, key string) ([]json.RawMessage, string, error) {
	var env map[string]json.RawMessage
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, "", fmt.Errorf("the answer is not a JSON object: %w", err)
	}
	var raws []json.RawMessage
	if v, ok := env[key]; ok {
		if err := json.Unmarshal(v, &raws); err != nil {
			return nil, "", fmt.Errorf("%q is not an array: %w", key, err)
		}
	}
	if ids, ok := env["ids"]; ok && key == "identifiers" && len(raws) == 0 {
		var s []FlexString
		if err := json.Unmarshal(ids, &s); err != nil {
			return nil, "", fmt.Errorf(`"ids" is not an array of ids: %w`, err)
		}
		for _, id := range s {
			b, _ := json.Marshal(map[string]FlexString{"id": id})
			raws = append(raws, b)
		}
	}
	var next FlexString
	if v, ok := env["next"]; ok {
		if err := json.Unmarshal(v, &next); err != nil {
			return nil, "", fmt.Errorf(`"next": %w`, err)
		}
	}
	return raws, string(next), nil
}

// get sends one GET, paced, retried on a 429 that says when (Retry-After),
// on 5xx and when no answer came, up to readAttempts times. A 429 without
// Retry-After is Customer.io's daily quota ("If you hit a daily quota,
// this header is not set"): waiting seconds would not help, so it is
// returned at once. Errors are a *StatusError or a *TransportError.
func (r *AppReader) get(ctx context.Context, path string, q url.Values) ([]byte, error) {
	u := r.c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		now := r.now()
		if err := r.sleep(ctx, r.limiter.ReserveN(now, 1).DelayFrom(now)); err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		body, err := r.getOnce(ctx, u)
		if err == nil {
			return body, nil
		}
		var se *StatusError
		isStatus := errors.As(err, &se)
		var wait time.Duration
		switch {
		case attempt >= readAttempts, ctx.Err() != nil:
			return nil, fmt.Errorf("reading %s: %w", path, err)
		case isStatus && se.Status == http.StatusTooManyRequests:
			if se.RetryAfter <= 0 || se.RetryAfter > maxRetryWait {
				return nil, fmt.Errorf("reading %s (rate limited without a Retry-After we can wait for: the daily quota?): %w", path, err)
			}
			wait = se.RetryAfter
		case isStatus && se.Status >= 500, !isStatus && IsRetryable(err):
			wait = backoff
			if isStatus {
				wait = max(wait, se.RetryAfter)
			}
			backoff *= 2
		default:
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		if err := r.sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
	}
}

// getOnce sends one GET and returns a 2xx answer's body; any other outcome
// is classified as every request is (client.roundTrip). It reads the
// answer itself, not with client.doRead, because an answer here may be
// megabytes.
func (r *AppReader) getOnce(ctx context.Context, u string) ([]byte, error) {
	req, err := r.c.newRequest(ctx, http.MethodGet, u, nil, "App API")
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.c.roundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReadBody+1))
	if err != nil {
		return nil, &TransportError{API: APIApp, Err: fmt.Errorf("reading the answer: %w", err)}
	}
	if len(b) > maxReadBody {
		return nil, fmt.Errorf("customer.io app API answered more than %d bytes", maxReadBody)
	}
	return b, nil
}
