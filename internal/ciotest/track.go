package ciotest

import (
	"bytes"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	trackPrefix       = "/api/v1/"
	customersPrefix   = trackPrefix + "customers/"
	metricsPath       = trackPrefix + "metrics"
	unsubscribePrefix = "/unsubscribe/"
)

// Metrics are the metric values the stand-in's POST /api/v1/metrics
// accepts: those the Track API reference lists for email and webhooks
// (bounced, clicked, converted, deferred, delivered, dropped, opened,
// spammed); its push, in-app, Slack and SMS variants list subsets of them.
// Anything else is answered 400.
var Metrics = []string{"bounced", "clicked", "converted", "deferred", "delivered", "dropped", "opened", "spammed"}

// Unsubscribe is one accepted POST /unsubscribe/{delivery_id}.
type Unsubscribe struct {
	DeliveryID  string
	Unsubscribe bool
	Time        time.Time
}

// MetricReport is one accepted POST /api/v1/metrics.
type MetricReport struct {
	DeliveryID string
	Metric     string
	Timestamp  int64 // unix seconds; 0 when the body had none
	Recipient  string
	Reason     string
	Href       string
	Body       []byte // exactly as received
	Time       time.Time
}

// track serves the Track API: POST /api/v1/customers/{identifier}/suppress
// and /unsuppress (Basic auth), POST /api/v1/metrics and, at the host
// root, POST /unsubscribe/{delivery_id} (both without auth).
func (s *Server) track(req *Request) response {
	switch {
	case req.Path == metricsPath:
		return s.metric(req)
	case strings.HasPrefix(req.Path, unsubscribePrefix):
		return s.unsubscribe(req)
	}
	// The escaped path keeps an identifier's "/" as %2F, so the identifier
	// is exactly the one segment before the action.
	rest, _ := strings.CutPrefix(req.Path, customersPrefix)
	seg, action, found := cutLast(rest, '/')
	if !strings.HasPrefix(req.Path, customersPrefix) || !found || seg == "" ||
		strings.Contains(seg, "/") || (action != "suppress" && action != "unsuppress") {
		return reject(http.StatusNotFound, "no such endpoint: %s", req.Path)
	}
	if req.Method != http.MethodPost {
		return methodNotAllowed()
	}
	if !req.AuthOK {
		return unauthorized(`Basic realm="track"`)
	}
	id, err := url.PathUnescape(seg)
	if err != nil {
		return reject(http.StatusBadRequest, "identifier %q: %v", seg, err)
	}
	if !utf8.ValidString(id) {
		return reject(http.StatusBadRequest, "identifier %q is not valid UTF-8", seg)
	}
	resp := accepted("{}")
	resp.commit = func(*response) {
		s.supps = append(s.supps, Suppression{Action: action, Identifier: id, Time: req.Time})
	}
	return resp
}

// unsubscribe serves POST /unsubscribe/{delivery_id} with body
// {"unsubscribe":bool}. No Authorization is required, and credentials sent
// anyway are ignored, as Customer.io ignores them.
func (s *Server) unsubscribe(req *Request) response {
	seg := strings.TrimPrefix(req.Path, unsubscribePrefix)
	if seg == "" || strings.Contains(seg, "/") {
		return reject(http.StatusNotFound, "no such endpoint: %s", req.Path)
	}
	if req.Method != http.MethodPost {
		return methodNotAllowed()
	}
	id, err := url.PathUnescape(seg)
	if err != nil || !isDeliveryID(id) {
		return reject(http.StatusBadRequest, "malformed delivery id %q", seg)
	}
	if err := checkJSONRequest(req); err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}
	var (
		flag  []byte
		count int
	)
	if err := eachMember(req.Body, func(key []byte, v span) {
		if string(key) == "unsubscribe" {
			flag, count = req.Body[v.start:v.end], count+1
		}
	}); err != nil {
		return reject(http.StatusBadRequest, "body: %v", err)
	}
	if count != 1 || jsonKind(flag) != "boolean" {
		return reject(http.StatusBadRequest, `body must have "unsubscribe" once, true or false`)
	}
	unsub := flag[0] == 't'
	resp := accepted("{}")
	resp.commit = func(*response) {
		s.unsubs = append(s.unsubs, Unsubscribe{DeliveryID: id, Unsubscribe: unsub, Time: req.Time})
	}
	return resp
}

// metric serves POST /api/v1/metrics. No Authorization is required.
func (s *Server) metric(req *Request) response {
	if req.Method != http.MethodPost {
		return methodNotAllowed()
	}
	if err := checkJSONRequest(req); err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}
	vals := map[string][]byte{}
	dup := ""
	if err := eachMember(req.Body, func(key []byte, v span) {
		k := string(key)
		if _, seen := vals[k]; seen {
			dup = k
		}
		vals[k] = req.Body[v.start:v.end]
	}); err != nil {
		return reject(http.StatusBadRequest, "body: %v", err)
	}
	if dup != "" {
		return reject(http.StatusBadRequest, "%q appears more than once", dup)
	}
	m := MetricReport{Body: req.Body, Time: req.Time}
	for k, raw := range vals {
		switch k {
		case "recipient":
			// A string, or an integer: the type the reference gives an SMS
			// recipient (the phone number).
			if str, ok := stringValue(raw); ok {
				m.Recipient = str
			} else if jsonKind(raw) == "number" && len(bytes.Trim(raw, "0123456789")) == 0 {
				m.Recipient = string(raw)
			} else {
				return reject(http.StatusBadRequest, "recipient must be a string or an integer, not %s", jsonKind(raw))
			}
		case "delivery_id", "metric", "reason", "href":
			str, ok := stringValue(raw)
			if !ok {
				return reject(http.StatusBadRequest, "%s must be a string, not %s", k, jsonKind(raw))
			}
			switch k {
			case "delivery_id":
				m.DeliveryID = str
			case "metric":
				m.Metric = str
			case "reason":
				m.Reason = str
			case "href":
				m.Href = str
			}
		case "timestamp":
			ts, err := strconv.ParseInt(string(raw), 10, 64)
			switch {
			case err != nil:
				return reject(http.StatusBadRequest, "timestamp must be an integer unix timestamp, not %s", raw)
			case ts <= 0 || ts >= 1e10:
				// 10^10 s is the year 2286: a larger value is
				// milliseconds (or nonsense), not seconds.
				return reject(http.StatusBadRequest, "timestamp %d is not in unix seconds", ts)
			}
			m.Timestamp = ts
		case "metadata":
			if jsonKind(raw) != "object" {
				return reject(http.StatusBadRequest, "metadata must be an object, not %s", jsonKind(raw))
			}
		default:
			return reject(http.StatusBadRequest, "unknown member %q", k)
		}
	}
	switch {
	case m.DeliveryID == "":
		return reject(http.StatusBadRequest, "delivery_id is required")
	case !isDeliveryID(m.DeliveryID):
		return reject(http.StatusBadRequest, "malformed delivery id %q", m.DeliveryID)
	case m.Metric == "":
		return reject(http.StatusBadRequest, "metric is required")
	case !slices.Contains(Metrics, m.Metric):
		return reject(http.StatusBadRequest, "unknown metric %q", m.Metric)
	}
	resp := accepted("{}")
	resp.commit = func(*response) { s.metrics = append(s.metrics, m) }
	return resp
}

// isDeliveryID reports whether id has the shape of a Customer.io delivery
// id (the CIO-Delivery-ID header of a message): base64 text, standard or
// URL alphabet, at most 200 bytes. Customer.io documents only "string" and
// answers 400 for a malformed one; the stand-in's idea of malformed is
// anything else, stricter than any real id needs.
func isDeliveryID(id string) bool {
	if id == "" || len(id) > 200 {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '+', c == '/', c == '=', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// Unsubscribes returns every accepted unsubscribe, in order.
func (s *Server) Unsubscribes() []Unsubscribe {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Unsubscribe(nil), s.unsubs...)
}

// Metrics returns every accepted metric report, in order.
func (s *Server) Metrics() []MetricReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]MetricReport(nil), s.metrics...)
}

// cutLast slices s around the last sep.
func cutLast(s string, sep byte) (before, after string, found bool) {
	i := strings.LastIndexByte(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}
