package ciotest

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// App API reads. The stand-in serves the reads the operator CLI makes
// (cio-relay cio …), with the documented unfriendly parts:
//
//   - Every read is limited to [AppReadLimit] requests in any
//     [AppReadWindow] (Customer.io: "rate limited to 10 requests per 1s"),
//     measured with Options.Now over every admitted read, whatever its
//     path. One over is answered 429 with Retry-After (whole seconds,
//     rounded up, at least 1) and the documented body
//     {"errors":[{"detail":"rate limited to 10 requests per 1s …","status":"429"}]};
//     it does not count against the window. Such answers are recorded
//     with [OutcomeRateLimited] and counted in [Stats.RateLimited].
//   - Paged reads (messages, newsletters, segment membership, trigger
//     errors) answer at most limit items and a next cursor the client
//     must pass back as start. Messages, newsletters and membership hand
//     out an opaque string, "" on the last page; a trigger's errors an
//     integer offset (the reference types next as one), 0 on the last
//     page (what the real last page carries is undocumented: 0 is the
//     case a client can get wrong, reading the first page again). A
//     start the stand-in did not hand out is refused (400), as is a limit
//     out of range (messages: 1–1000; membership: 1–30000).
//   - A trigger's errors are strings, "line <x>: <error text>", as the
//     reference (broadcastErrors) gives them, not objects; one trigger
//     (broadcastStatus) is answered as the object itself, without an
//     envelope.
//   - GET /v1/messages refuses a window (start_ts to end_ts, end_ts
//     defaulting to now) longer than six months (stricter than
//     Customer.io, which silently answers six months of it), an unknown
//     type or metric, and ids or times that are not integers (400). By default
//     it answers sent messages only; drafts=true answers drafts (a
//     message whose metrics have "drafted" and no "sent").
//   - Reads answer only GET (405), after the App API key (401).
//
// The data comes from [Server.SetAppData], except a broadcast's triggers,
// which are the triggers the stand-in accepted ([Server.Triggers]): each
// is listed with its id, broadcast_id, created_at (unix seconds) and
// processed_at (the same second: processing is not modelled), so a test
// that triggers a broadcast finds its trigger by reading it back.
// Errors of a read are {"errors":[{"detail":…,"status":…}]}, the App API's
// documented shape.

// AppReadLimit and AppReadWindow are the App API's rate limit for reads:
// 10 requests per second.
const (
	AppReadLimit  = 10
	AppReadWindow = time.Second
)

// AppData is what the App API read endpoints serve. Each item is one JSON
// object as Customer.io would send it; the stand-in reads only the fields
// it filters, sorts or looks up by, and answers the objects byte for byte.
type AppData struct {
	Integrations []json.RawMessage // GET /v1/integrations (unverified endpoint)
	// Messages are filtered by type, metric (metrics.{metric} set),
	// campaign_id, newsletter_id, action_id and created (start_ts,
	// end_ts).
	Messages []json.RawMessage
	Segments []json.RawMessage // each with its "id"
	// Membership holds each segment's identifiers objects ({"id",
	// "cio_id", "email"}), by segment id; the segment must be in Segments.
	Membership        map[int64][]json.RawMessage
	ReportingWebhooks []json.RawMessage
	Collections       []json.RawMessage
	IPAddresses       []json.RawMessage // answered as "ip_addresses" (getCioAllowlist: strings)
	Newsletters       []json.RawMessage // sort=asc|desc orders them by "created"
	Snippets          []json.RawMessage
	Transactional     []json.RawMessage // answered as "messages"
	// TriggerErrors holds an accepted trigger's errors, by trigger id:
	// JSON strings, as Customer.io sends them.
	TriggerErrors map[int64][]json.RawMessage
}

// appReads is the read endpoints' state, guarded by Server.mu.
type appReads struct {
	data   AppData
	window []time.Time // admission times of the reads in the last AppReadWindow, oldest first
}

// SetAppData replaces what the App API read endpoints serve.
func (s *Server) SetAppData(d AppData) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads.data = d
}

// readRoute is a parsed read path: its name and its ids.
type readRoute struct {
	name string // "messages", "segment", "membership", "triggers", "trigger", "trigger_errors", or a list's member
	id   int64  // segment or broadcast id
	tid  int64  // trigger id
}

// lists are the reads that answer one unpaged list: path → member.
var lists = map[string]string{
	"integrations":       "integrations",
	"segments":           "segments",
	"reporting_webhooks": "reporting_webhooks",
	"collections":        "collections",
	"info/ip_addresses":  "ip_addresses",
	"snippets":           "snippets",
	"transactional":      "messages",
}

// parseReadRoute recognises a read path; ok is false for any other path
// (the trigger POST among them). Ids that are not positive integers are
// recognised with id 0, for a 404.
func parseReadRoute(path string) (readRoute, bool) {
	rest, ok := strings.CutPrefix(path, "/v1/")
	if !ok {
		return readRoute{}, false
	}
	if rest == "messages" || rest == "newsletters" {
		return readRoute{name: rest}, true
	}
	if _, ok := lists[rest]; ok {
		return readRoute{name: rest}, true
	}
	p := strings.Split(rest, "/")
	id := func(i int) int64 { n, _ := broadcastID(p[i]); return n }
	switch {
	case len(p) == 2 && p[0] == "segments":
		return readRoute{name: "segment", id: id(1)}, true
	case len(p) == 3 && p[0] == "segments" && p[2] == "membership":
		return readRoute{name: "membership", id: id(1)}, true
	case len(p) == 3 && p[0] == "broadcasts" && p[2] == "triggers":
		return readRoute{name: "triggers", id: id(1)}, true
	case len(p) == 4 && p[0] == "campaigns" && p[2] == "triggers":
		return readRoute{name: "trigger", id: id(1), tid: id(3)}, true
	case len(p) == 5 && p[0] == "campaigns" && p[2] == "triggers" && p[4] == "errors":
		return readRoute{name: "trigger_errors", id: id(1), tid: id(3)}, true
	}
	return readRoute{}, false
}

// isAppReadPath reports whether path is one of the App API reads, for
// routing.
func isAppReadPath(path string) bool {
	_, ok := parseReadRoute(path)
	return ok
}

// appRead answers a read; ok is false when req is not one.
func (s *Server) appRead(req *Request) (resp response, ok bool) {
	route, ok := parseReadRoute(req.Path)
	if !ok {
		return response{}, false
	}
	if req.Method != http.MethodGet {
		r := readError(http.StatusMethodNotAllowed, "method not allowed: use GET")
		r.header = http.Header{"Allow": {http.MethodGet}}
		return r, true
	}
	if !req.AuthOK {
		return unauthorized(`Bearer realm="app"`), true
	}
	q, err := url.ParseQuery(req.RawQuery)
	if err != nil {
		return readError(http.StatusBadRequest, "query: %v", err), true
	}
	// Admission and the answer happen under the server's lock, with the
	// record: the window is exact under concurrent reads, and the data
	// and the accepted triggers cannot change halfway.
	resp = accepted("")
	resp.commit = func(r *response) {
		now := s.opts.Now()
		if wait, limited := s.reads.admit(now); limited {
			*r = readError(http.StatusTooManyRequests, "rate limited to %d requests per %v (reference ciotest)", AppReadLimit, AppReadWindow)
			r.outcome = OutcomeRateLimited
			secs := max(int64((wait+time.Second-1)/time.Second), 1)
			r.header = http.Header{"Retry-After": {strconv.FormatInt(secs, 10)}}
			return
		}
		*r = s.answerRead(route, q, now)
	}
	return resp, true
}

// admit counts a read at now unless AppReadLimit reads were admitted in
// the AppReadWindow before it; then it returns how long until one leaves
// the window.
func (a *appReads) admit(now time.Time) (time.Duration, bool) {
	keep := a.window[:0]
	for _, t := range a.window {
		if now.Sub(t) < AppReadWindow {
			keep = append(keep, t)
		}
	}
	a.window = keep
	if len(a.window) >= AppReadLimit {
		return AppReadWindow - now.Sub(a.window[0]), true
	}
	a.window = append(a.window, now)
	return 0, false
}

// answerRead builds the answer to an admitted read. Called under s.mu.
func (s *Server) answerRead(rt readRoute, q url.Values, now time.Time) response {
	d := &s.reads.data
	switch rt.name {
	case "messages":
		return answerMessages(d.Messages, q, now)
	case "newsletters":
		items := slices.Clone(d.Newsletters)
		switch sort := q.Get("sort"); sort {
		case "":
		case "asc", "desc":
			slices.SortStableFunc(items, func(a, b json.RawMessage) int {
				c := cmp.Compare(numberField(a, "created"), numberField(b, "created"))
				if sort == "desc" {
					return -c
				}
				return c
			})
		default:
			return readError(http.StatusBadRequest, "sort must be asc or desc, got %q", sort)
		}
		return answerPage("newsletters", items, q, 50, 1000, nil)
	case "segment":
		seg, ok := findByID(d.Segments, rt.id)
		if !ok {
			return readError(http.StatusNotFound, "segment %d does not exist", rt.id)
		}
		return accepted(`{"segment":` + string(seg) + `}`)
	case "membership":
		if _, ok := findByID(d.Segments, rt.id); !ok {
			return readError(http.StatusNotFound, "segment %d does not exist", rt.id)
		}
		return answerPage("identifiers", d.Membership[rt.id], q, 1000, 30000, membershipIDs)
	case "triggers":
		var out []json.RawMessage
		for _, t := range s.triggers {
			if t.BroadcastID == rt.id {
				out = append(out, triggerJSON(t))
			}
		}
		return accepted(listJSON("triggers", out))
	case "trigger", "trigger_errors":
		i := slices.IndexFunc(s.triggers, func(t Trigger) bool { return t.BroadcastID == rt.id && t.TriggerID == rt.tid })
		if i < 0 {
			return readError(http.StatusNotFound, "broadcast %d has no trigger %d", rt.id, rt.tid)
		}
		if rt.name == "trigger" {
			return accepted(string(triggerJSON(s.triggers[i])))
		}
		return answerOffsetPage("errors", d.TriggerErrors[rt.tid], q, 100, 1000)
	}
	member := lists[rt.name]
	var items []json.RawMessage
	switch rt.name {
	case "integrations":
		items = d.Integrations
	case "segments":
		items = d.Segments
	case "reporting_webhooks":
		items = d.ReportingWebhooks
	case "collections":
		items = d.Collections
	case "info/ip_addresses":
		items = d.IPAddresses
	case "snippets":
		items = d.Snippets
	case "transactional":
		items = d.Transactional
	}
	return accepted(listJSON(member, items))
}

func triggerJSON(t Trigger) json.RawMessage {
	ts := t.Time.Unix()
	return fmt.Appendf(nil, `{"id":%d,"broadcast_id":%d,"created_at":%d,"processed_at":%d}`, t.TriggerID, t.BroadcastID, ts, ts)
}

// messageWindowOK reports whether start_ts and end_ts are at most six
// months apart.
func messageWindowOK(start, end time.Time) bool { return !start.AddDate(0, 6, 0).Before(end) }

var (
	messageTypes   = []string{"email", "webhook", "twilio", "whatsapp", "slack", "push", "in_app", "live_notification"}
	messageMetrics = []string{"attempted", "sent", "delivered", "opened", "clicked", "converted", "bounced", "spammed", "unsubscribed", "dropped", "failed", "undeliverable"}
)

// answerMessages filters and pages GET /v1/messages.
func answerMessages(all []json.RawMessage, q url.Values, now time.Time) response {
	typ, metric := q.Get("type"), q.Get("metric")
	if typ != "" && !slices.Contains(messageTypes, typ) {
		return readError(http.StatusBadRequest, "type %q is not a message type", typ)
	}
	if metric != "" && !slices.Contains(messageMetrics, metric) {
		return readError(http.StatusBadRequest, "metric %q is not a metric", metric)
	}
	ints := map[string]int64{}
	for _, k := range []string{"campaign_id", "newsletter_id", "action_id", "start_ts", "end_ts"} {
		if v := q.Get(k); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return readError(http.StatusBadRequest, "%s must be an integer, got %q", k, v)
			}
			ints[k] = n
		}
	}
	drafts := false
	if v := q.Get("drafts"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return readError(http.StatusBadRequest, "drafts must be true or false, got %q", v)
		}
		drafts = b
	}
	start, hasStart := ints["start_ts"]
	end, hasEnd := ints["end_ts"]
	if !hasEnd {
		end = now.Unix()
	}
	if hasStart && !messageWindowOK(time.Unix(start, 0), time.Unix(end, 0)) {
		return readError(http.StatusBadRequest, "the time window may be at most 6 months")
	}
	var out []json.RawMessage
	for _, m := range all {
		var f struct {
			Type    string           `json:"type"`
			Created int64            `json:"created"`
			Metrics map[string]int64 `json:"metrics"`
		}
		_ = json.Unmarshal(m, &f) // a test's malformed message matches nothing typed
		_, drafted := f.Metrics["drafted"]
		_, sent := f.Metrics["sent"]
		switch {
		case drafts != (drafted && !sent):
		case typ != "" && f.Type != typ:
		case metric != "" && f.Metrics[metric] == 0:
		case hasStart && f.Created < start:
		case hasEnd && f.Created >= end:
		case !idMatches(m, "campaign_id", ints), !idMatches(m, "newsletter_id", ints), !idMatches(m, "action_id", ints):
		default:
			out = append(out, m)
		}
	}
	return answerPage("messages", out, q, 50, 1000, nil)
}

// idMatches reports whether item's field k equals the filter ints[k], or
// there is no such filter.
func idMatches(item json.RawMessage, k string, ints map[string]int64) bool {
	want, ok := ints[k]
	return !ok || numberField(item, k) == want
}

// numberField reads item's member k as an integer (a number or a string
// of digits); 0 when absent or anything else.
func numberField(item json.RawMessage, k string) int64 {
	var m map[string]json.RawMessage
	if json.Unmarshal(item, &m) != nil {
		return 0
	}
	v := bytes.Trim(m[k], `"`)
	n, _ := strconv.ParseInt(string(v), 10, 64)
	return n
}

func findByID(items []json.RawMessage, id int64) (json.RawMessage, bool) {
	for _, it := range items {
		if id > 0 && numberField(it, "id") == id {
			return it, true
		}
	}
	return nil, false
}

// answerPage answers one page of items under member, starting at the
// cursor in start, at most limit (default def, 1 to max) items, with next
// "" on the last page. extra, when set, adds members computed from the
// page (membership's "ids").
func answerPage(member string, items []json.RawMessage, q url.Values, def, maxLimit int, extra func([]json.RawMessage) string) response {
	limit, bad := pageLimit(q, def, maxLimit)
	if bad != nil {
		return *bad
	}
	offset := 0
	if v := q.Get("start"); v != "" {
		n, ok := decodeCursor(v)
		if !ok || n > len(items) {
			return readError(http.StatusBadRequest, "start %q is not a cursor this API handed out", v)
		}
		offset = n
	}
	end := min(offset+limit, len(items))
	page := items[offset:end]
	next := ""
	if end < len(items) {
		next = encodeCursor(end)
	}
	body := strings.TrimSuffix(listJSON(member, page), "}")
	if extra != nil {
		body += "," + extra(page)
	}
	nb, _ := json.Marshal(next)
	return accepted(body + `,"next":` + string(nb) + "}")
}

// pageLimit reads a page's limit from q: def when absent, else 1 to
// maxLimit, or the 400 Customer.io answers.
func pageLimit(q url.Values, def, maxLimit int) (int, *response) {
	v := q.Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxLimit {
		r := readError(http.StatusBadRequest, "limit must be from 1 to %d, got %q", maxLimit, v)
		return 0, &r
	}
	return n, nil
}

// answerOffsetPage is answerPage with an integer offset as the cursor:
// next is the offset of the following page, 0 on the last one.
func answerOffsetPage(member string, items []json.RawMessage, q url.Values, def, maxLimit int) response {
	limit, bad := pageLimit(q, def, maxLimit)
	if bad != nil {
		return *bad
	}
	offset := 0
	if v := q.Get("start"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > len(items) {
			return readError(http.StatusBadRequest, "start %q is not an offset this API handed out", v)
		}
		offset = n
	}
	end := min(offset+limit, len(items))
	next := 0
	if end < len(items) {
		next = end
	}
	return accepted(strings.TrimSuffix(listJSON(member, items[offset:end]), "}") + `,"next":` + strconv.Itoa(next) + "}")
}

// membershipIDs is membership's "ids": the identifiers' ids.
func membershipIDs(page []json.RawMessage) string {
	ids := []string{}
	for _, it := range page {
		var v struct {
			ID json.RawMessage `json:"id"`
		}
		if json.Unmarshal(it, &v) == nil && len(v.ID) > 0 && string(v.ID) != "null" {
			ids = append(ids, string(v.ID))
		}
	}
	return `"ids":[` + strings.Join(ids, ",") + "]"
}

// Cursors are opaque to clients: base64 of the offset, so a client that
// computes them instead of passing next back fails.
func encodeCursor(offset int) string {
	return base64.RawURLEncoding.EncodeToString([]byte("ciotest:" + strconv.Itoa(offset)))
}

func decodeCursor(s string) (int, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimPrefix(string(b), "ciotest:"))
	return n, err == nil && n >= 0 && strings.HasPrefix(string(b), "ciotest:")
}

func listJSON(member string, items []json.RawMessage) string {
	var b strings.Builder
	b.WriteString(`{"` + member + `":[`)
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(it)
	}
	b.WriteString("]}")
	return b.String()
}

// readError is an App API read's error answer, in the documented
// {"errors":[{"detail","status"}]} shape.
func readError(status int, format string, args ...any) response {
	r := reject(status, format, args...)
	b, _ := json.Marshal(map[string][]map[string]string{"errors": {{"detail": r.reason, "status": strconv.Itoa(status)}}})
	r.body = b
	return r
}
