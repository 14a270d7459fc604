package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cio-relay/cio-relay/event"
)

// Reasons a delivery action (an unsubscribe or a metric attributed to a
// delivery) is refused before it is sent: names here for event's, the one
// set of reasons. Syntax faults use event's reasons (invalid_json,
// invalid_utf8), wrong field types invalid_field.
const (
	ReasonInvalidDeliveryID = event.ReasonInvalidDeliveryID
	ReasonInvalidMetric     = event.ReasonInvalidMetric
	ReasonInvalidTimestamp  = event.ReasonInvalidTimestamp
)

// MaxDeliveryIDBytes bounds a delivery id. Customer.io documents it only as
// "string", the CIO-Delivery-ID header of the message (Track API reference,
// "Report metrics" and "Report push metrics"); it is short and opaque in
// practice. The bound is the one attribute values have, far above any real
// id, so it only refuses what cannot be one.
const MaxDeliveryIDBytes = 1000

// MetricsByChannel are the metric values Customer.io's Track API reference
// gives each variant of POST /api/v1/metrics (its OpenAPI's request body is
// one of Email, In-app, Push, Slack, SMS and Webhook;
// https://docs.customer.io/integrations/api/track/#operation/metrics).
// Segment's Customer.io destination ("Report Delivery Event",
// segmentio/action-destinations) offers the eight of email.
var MetricsByChannel = map[string][]string{
	"email":   {"bounced", "clicked", "converted", "deferred", "delivered", "dropped", "opened", "spammed"},
	"in-app":  {"clicked", "converted", "opened"},
	"push":    {"converted", "delivered", "opened"},
	"slack":   {"clicked", "converted", "delivered", "opened"},
	"sms":     {"bounced", "clicked", "delivered", "opened"},
	"webhook": {"bounced", "clicked", "converted", "deferred", "delivered", "dropped", "opened", "spammed"},
}

// Metrics are the metric values ParseMetric accepts: every channel's of
// MetricsByChannel, which are all among email's eight. A body names no
// channel, so a value is checked against the union, not against its
// channel's list; anything else is dead-lettered as invalid_metric rather
// than sent on a guess, and can be replayed once it is added here.
var Metrics = []string{"bounced", "clicked", "converted", "deferred", "delivered", "dropped", "opened", "spammed"}

// PushEvents are the events of the deprecated POST /api/v1/push/events,
// which the toolkit still publishes; each is sent as the metric of the same
// name.
var PushEvents = []string{"opened", "converted", "delivered"}

// maxUnixSeconds is the largest timestamp read as seconds: 10^10 s is the
// year 2286. Milliseconds since 1970 have been above it since 1970-04-26, so
// nothing plausible in milliseconds passes as seconds.
const maxUnixSeconds = 1e10

// Unsubscribe is one unsubscribe attributed to a delivery.
type Unsubscribe struct {
	DeliveryID  string
	Unsubscribe bool // false re-subscribes
}

// ParseUnsubscribe reads {"delivery_id":"…","unsubscribe":true|false};
// unsubscribe defaults to true. Other members are ignored. A body that can
// never succeed is an *event.InvalidError.
func ParseUnsubscribe(body []byte) (Unsubscribe, error) {
	m, err := members(body)
	if err != nil {
		return Unsubscribe{}, err
	}
	id, err := m.deliveryID()
	if err != nil {
		return Unsubscribe{}, err
	}
	u := Unsubscribe{DeliveryID: id, Unsubscribe: true}
	if raw, ok, err := m.one("unsubscribe"); err != nil {
		return Unsubscribe{}, err
	} else if ok {
		switch string(raw) {
		case "true":
		case "false":
			u.Unsubscribe = false
		default:
			return Unsubscribe{}, invalidField("unsubscribe must be true or false")
		}
	}
	return u, nil
}

// Metric is one metric attributed to a delivery, in the shape of POST
// /api/v1/metrics.
type Metric struct {
	DeliveryID string
	Metric     string
	Timestamp  int64  // unix seconds; 0: not given
	Recipient  string // a person's email, phone number or device token: never log it
	// RecipientIsNumber: Recipient was given as a JSON integer (its digits),
	// as the reference types an SMS recipient, and is sent as one.
	RecipientIsNumber bool
	Reason            string
	Href              string
	Metadata          json.RawMessage // an object, passed through (in-app action name and value)
	Legacy            bool            // came in the /push/events shape
}

// metricFields are the members of a metrics body; legacyFields those of
// the deprecated /push/events body.
var (
	metricFields = []string{"delivery_id", "metric", "timestamp", "recipient", "reason", "href", "metadata"}
	legacyFields = []string{"delivery_id", "event", "device_id", "timestamp"}
)

// ParseMetric reads a metric in the shape of POST /api/v1/metrics
// (delivery_id and metric required; timestamp, recipient — a string, or a
// whole number as the reference types an SMS one — reason, href, metadata
// optional) or of the deprecated POST /api/v1/push/events
// (delivery_id, event opened|converted|delivered, device_id, timestamp),
// told apart by "metric" or "event". A legacy body becomes metric = event,
// recipient = device_id. Unlike a suppression, a member ParseMetric does
// not know is refused (invalid_field): a metric's optional members carry
// data, and dropping one silently would lose it. A body that can never
// succeed is an *event.InvalidError.
func ParseMetric(body []byte) (Metric, error) {
	m, err := members(body)
	if err != nil {
		return Metric{}, err
	}
	_, hasMetric := m["metric"]
	_, hasEvent := m["event"]
	var met Metric
	allowed := metricFields
	switch {
	case hasMetric && hasEvent:
		return Metric{}, invalidMetric(`both "metric" and the legacy push "event" are given; send one`)
	case hasEvent:
		met.Legacy = true
		allowed = legacyFields
	case !hasMetric:
		return Metric{}, invalidMetric("metric is required")
	}
	for name := range m {
		if !slices.Contains(allowed, name) {
			return Metric{}, invalidField(fmt.Sprintf("unknown member %q", name))
		}
	}
	if met.DeliveryID, err = m.deliveryID(); err != nil {
		return Metric{}, err
	}
	name, known, what := "metric", Metrics, "metric"
	if met.Legacy {
		name, known, what = "event", PushEvents, "push event"
	}
	v, _, err := m.str(name, ReasonInvalidMetric)
	if err != nil {
		return Metric{}, err
	}
	if !slices.Contains(known, v) {
		return Metric{}, invalidMetric(fmt.Sprintf("%s %q is not one of %s", what, v, strings.Join(known, ", ")))
	}
	met.Metric = v
	if met.Legacy {
		if met.Recipient, _, err = m.str("device_id", event.ReasonInvalidField); err != nil {
			return Metric{}, err
		}
	} else {
		if met.Recipient, met.RecipientIsNumber, err = m.recipient(); err != nil {
			return Metric{}, err
		}
		for _, f := range []struct {
			name string
			dst  *string
		}{{"reason", &met.Reason}, {"href", &met.Href}} {
			if *f.dst, _, err = m.str(f.name, event.ReasonInvalidField); err != nil {
				return Metric{}, err
			}
		}
		if raw, ok, err := m.one("metadata"); err != nil {
			return Metric{}, err
		} else if ok {
			if raw[0] != '{' {
				return Metric{}, invalidField("metadata must be an object")
			}
			met.Metadata = raw
		}
	}
	if met.Timestamp, err = m.timestamp(); err != nil {
		return Metric{}, err
	}
	return met, nil
}

// Body returns the request body for POST /api/v1/metrics. A metric without
// a timestamp is given at, the time it happened as far as the relay knows
// (when it was published): Customer.io would otherwise record the time it
// received it, which after a queue backlog or a replay is wrong.
func (m Metric) Body(at time.Time) ([]byte, error) {
	ts := m.Timestamp
	if ts == 0 {
		ts = at.Unix()
	}
	var recipient json.RawMessage
	switch {
	case m.RecipientIsNumber:
		recipient = json.RawMessage(m.Recipient)
	case m.Recipient != "":
		recipient, _ = json.Marshal(m.Recipient) // a string always encodes
	}
	b := struct {
		DeliveryID string          `json:"delivery_id"`
		Metric     string          `json:"metric"`
		Timestamp  int64           `json:"timestamp"`
		Recipient  json.RawMessage `json:"recipient,omitempty"`
		Reason     string          `json:"reason,omitempty"`
		Href       string          `json:"href,omitempty"`
		Metadata   json.RawMessage `json:"metadata,omitempty"`
	}{m.DeliveryID, m.Metric, ts, recipient, m.Reason, m.Href, m.Metadata}
	out, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encoding metric: %w", err)
	}
	return out, nil
}

// Unsubscribe sets (or, with unsubscribe false, clears) the unsubscribed
// attribute of the person a delivery went to, attributing it to the
// delivery: POST {host root}/unsubscribe/{delivery_id}, body
// {"unsubscribe":bool}. It needs no Authorization; the Track credentials
// are sent when configured, which is harmless. Errors are as for Suppress;
// a 400 means a malformed delivery id.
func (t *Track) Unsubscribe(ctx context.Context, u Unsubscribe) error {
	if err := checkDeliveryID(u.DeliveryID); err != nil {
		return err
	}
	body := []byte(`{"unsubscribe":` + strconv.FormatBool(u.Unsubscribe) + `}`)
	return t.postJSON(ctx, t.root+"/unsubscribe/"+escapeIdentifier(u.DeliveryID), body, "unsubscribe")
}

// ReportMetric posts body, from Metric.Body, to {URL}/metrics. It needs no
// Authorization; errors are as for Suppress.
func (t *Track) ReportMetric(ctx context.Context, body []byte) error {
	return t.postJSON(ctx, t.c.base+"/metrics", body, "metric")
}

func (t *Track) postJSON(ctx context.Context, u string, body []byte, action string) error {
	req, err := t.c.newRequest(ctx, http.MethodPost, u, bytes.NewReader(body), "Track "+action)
	if err != nil {
		return err
	}
	if err := t.c.do(req); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	return nil
}

// fields are the members of one JSON object, each with every value it was
// given.
type fields map[string][]json.RawMessage

// members reads body as one JSON object of valid UTF-8.
func members(body []byte) (fields, error) {
	if !utf8.Valid(body) {
		return nil, &event.InvalidError{Reason: event.ReasonInvalidUTF8, Detail: "body is not valid UTF-8"}
	}
	syntax := func(err error) error {
		return &event.InvalidError{Reason: event.ReasonInvalidJSON, Detail: err.Error()}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil {
		return nil, syntax(err)
	} else if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, &event.InvalidError{Reason: event.ReasonInvalidJSON, Detail: "body must be a JSON object"}
	}
	m := fields{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntax(err)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, syntax(err)
		}
		name, _ := tok.(string)
		m[name] = append(m[name], v)
	}
	if _, err := dec.Token(); err != nil {
		return nil, syntax(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &event.InvalidError{Reason: event.ReasonInvalidJSON, Detail: "data after the object"}
	}
	return m, nil
}

// one returns name's value, whether it is present (and not null), and an
// error when it is repeated: which copy Customer.io would read depends on
// its parser.
func (m fields) one(name string) (json.RawMessage, bool, error) {
	vs := m[name]
	switch {
	case len(vs) > 1:
		reason := event.ReasonInvalidField
		if name == "delivery_id" {
			reason = ReasonInvalidDeliveryID
		}
		return nil, false, &event.InvalidError{Reason: reason, Detail: name + " appears more than once"}
	case len(vs) == 0 || string(vs[0]) == "null":
		return nil, false, nil
	}
	return vs[0], true, nil
}

// str returns name's value as a string ("" when absent), or an error with
// reason when it is not one.
func (m fields) str(name string, reason event.Reason) (string, bool, error) {
	raw, ok, err := m.one(name)
	if err != nil || !ok {
		return "", false, err
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false, &event.InvalidError{Reason: reason, Detail: name + " must be a string"}
	}
	return s, true, nil
}

// recipient returns a metric's recipient: a string, or the digits of a
// non-negative JSON integer, the type Customer.io's reference gives an SMS
// recipient (a phone number), with isNumber set. Its value is never put in
// an error: it is an email address, phone number or device token.
func (m fields) recipient() (v string, isNumber bool, err error) {
	raw, ok, err := m.one("recipient")
	if err != nil || !ok {
		return "", false, err
	}
	if raw[0] != '"' {
		if !isDigits(raw) {
			return "", false, invalidField("recipient must be a string, or a whole number for an SMS recipient")
		}
		return string(raw), true, nil
	}
	v, _, err = m.str("recipient", event.ReasonInvalidField)
	return v, false, err
}

// isDigits reports whether raw is one or more decimal digits, a JSON
// integer without sign, fraction or exponent.
func isDigits(raw []byte) bool {
	for _, c := range raw {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(raw) > 0
}

func (m fields) deliveryID() (string, error) {
	id, ok, err := m.str("delivery_id", ReasonInvalidDeliveryID)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", invalidDeliveryID("delivery_id is required")
	}
	if err := checkDeliveryID(id); err != nil {
		return "", err
	}
	return id, nil
}

// timestamp reads an optional unix timestamp in whole seconds.
func (m fields) timestamp() (int64, error) {
	raw, ok, err := m.one("timestamp")
	if err != nil || !ok {
		if err != nil {
			err = &event.InvalidError{Reason: ReasonInvalidTimestamp, Detail: "timestamp appears more than once"}
		}
		return 0, err
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || raw[0] == '"' {
		return 0, invalidTimestamp(fmt.Sprintf("timestamp must be a number of seconds since 1970, got %s", truncateRaw(raw)))
	}
	switch {
	case f != math.Trunc(f):
		return 0, invalidTimestamp(fmt.Sprintf("timestamp %s is not a whole number of seconds", raw))
	case f >= maxUnixSeconds*100 && f < maxUnixSeconds*1e5:
		return 0, invalidTimestamp(fmt.Sprintf("timestamp %s looks like milliseconds; Customer.io wants seconds (%d)", raw, int64(f/1000)))
	case f <= 0 || f >= maxUnixSeconds:
		return 0, invalidTimestamp(fmt.Sprintf("timestamp %s is not a plausible time in seconds since 1970", raw))
	}
	return int64(f), nil
}

func truncateRaw(raw json.RawMessage) string {
	if len(raw) > 40 {
		return string(raw[:40]) + "…"
	}
	return string(raw)
}

// checkDeliveryID refuses delivery ids that cannot be one path segment.
func checkDeliveryID(id string) error {
	return checkSegment("delivery_id", id, MaxDeliveryIDBytes, ReasonInvalidDeliveryID)
}

func invalidDeliveryID(detail string) error {
	return &event.InvalidError{Reason: ReasonInvalidDeliveryID, Detail: detail}
}

func invalidMetric(detail string) error {
	return &event.InvalidError{Reason: ReasonInvalidMetric, Detail: detail}
}

func invalidTimestamp(detail string) error {
	return &event.InvalidError{Reason: ReasonInvalidTimestamp, Detail: detail}
}

func invalidField(detail string) error {
	return &event.InvalidError{Reason: event.ReasonInvalidField, Detail: detail}
}
