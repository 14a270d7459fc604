package trigger

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/cio-relay/cio-relay/event"
)

// Customer.io's limits on one trigger request, from the table "API
// triggered broadcast limits" on
// https://docs.customer.io/integrations/api/app/tag/send-messages/ . The
// same page says a request over them fails, so they are enforced here,
// before anything is sent.
const (
	// MaxRecipients: "Recipient List — 10000 recipients — Max number of ids
	// or emails included in the Trigger call".
	MaxRecipients = 10000
	// MaxPerUserData: "Custom Per User Data — 10000 entries — Max number of
	// entries in per_user_data".
	MaxPerUserData = 10000
	// MaxDataBytes: "Trigger Data — 50000 bytes — Max length of the data
	// section in the Trigger call", measured on the compacted data object.
	MaxDataBytes = 50000
	// MaxBodyBytes: "Trigger Payload — 25MB — Max length of the entire
	// Trigger call", read in decimal units, the stricter reading, as the
	// project reads Customer.io's CDP limits.
	MaxBodyBytes = 25_000_000
)

// Reasons a trigger body is invalid: names here for event's, the one set
// of reasons (see event.Reason), so the worker labels metrics and dead
// letters for every kind of message the same way.
const (
	ReasonInvalidJSON        = event.ReasonInvalidJSON        // not one JSON object
	ReasonInvalidUTF8        = event.ReasonInvalidUTF8        // not valid UTF-8
	ReasonInvalidField       = event.ReasonInvalidField       // a member of the wrong shape, or repeated
	ReasonTooLarge           = event.ReasonTooLarge           // body or data over Customer.io's byte limits
	ReasonInvalidBroadcastID = event.ReasonInvalidBroadcastID // missing, not a positive whole number
	ReasonAudience           = event.ReasonAudience           // no audience, or more than one
	ReasonInvalidDataFileURL = event.ReasonInvalidDataFileURL
	ReasonTooManyRecipients  = event.ReasonTooManyRecipients
)

// Audience is how a trigger chooses its recipients: the one audience
// member of its body.
type Audience uint8

// Audiences, named after the body member that selects them.
const (
	AudienceNone        Audience = iota // no audience member: the broadcast's own audience (Parse refuses it)
	AudienceIDs                         // "ids": customer ids
	AudienceEmails                      // "emails": email addresses
	AudiencePerUserData                 // "per_user_data": [{id|email, data}]
	AudienceDataFileURL                 // "data_file_url": a file of per-user data
	AudienceRecipients                  // "recipients": a filter
)

var audienceNames = [...]string{"", "ids", "emails", "per_user_data", "data_file_url", "recipients"}

// String returns the body member's name, or "" for AudienceNone.
func (a Audience) String() string {
	if int(a) < len(audienceNames) {
		return audienceNames[a]
	}
	return fmt.Sprintf("Audience(%d)", a)
}

func audienceOf(key string) Audience {
	if i := slices.Index(audienceNames[1:], key); i >= 0 {
		return Audience(i + 1)
	}
	return AudienceNone
}

// flags are the trigger's boolean options. Customer.io documents each as
// defaulting to false, so an absent flag and false are the same.
var flags = []string{"id_ignore_missing", "email_ignore_missing", "email_add_duplicates"}

// Request is one validated broadcast trigger.
type Request struct {
	BroadcastID int64
	Audience    Audience

	body    []byte   // what Customer.io is sent: every member but broadcast_id, compacted
	entries []entry  // the ids, emails or per_user_data elements, in order
	rest    []member // members other than broadcast_id and the audience, in order
	restKey string   // the SHA-256 of rest in a canonical form: equal keys, same message
	// coalescable: the trigger may share a request with others (see the
	// package documentation for the rule).
	coalescable bool
	cost        int  // MemoryCost
	listInBody  bool // entries' raw bytes point into body
}

// entry is one element of an ids, emails or per_user_data list.
type entry struct {
	raw []byte // compacted
	who string // the person it names: "id:…" or "email:…" (lowercased)
}

// member is one member of a JSON object, its value compacted.
type member struct {
	key string
	raw []byte
}

// Body returns the JSON to send to Customer.io for this trigger alone:
// every member of the parsed body except broadcast_id (which goes in the
// URL), in the order given, values byte for byte but for insignificant
// whitespace, names written without escapes they do not need ("\u0069ds"
// is sent as "ids"). The slice must not be modified.
func (r *Request) Body() []byte { return r.body }

// Recipients is the number of ids, emails or per_user_data entries the
// trigger lists; 0 for the other audiences.
func (r *Request) Recipients() int { return len(r.entries) }

func invalid(reason event.Reason, format string, args ...any) *event.InvalidError {
	return &event.InvalidError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Parse validates a trigger body and returns the request it describes. An
// invalid body is reported as an *event.InvalidError whose Reason is one of
// this package's Reason constants; such a trigger can never succeed and
// should not be retried.
//
// The body is one JSON object using Customer.io's parameter names plus
// broadcast_id: a positive integer (required); exactly one audience among
// ids (non-empty strings or numbers), emails (non-empty strings),
// per_user_data (objects with exactly one of id or email, and an optional
// data object), data_file_url (an absolute http or https URL) and
// recipients (an object); optional data (an object); optional
// id_ignore_missing, email_ignore_missing and email_add_duplicates
// (booleans). Other members are passed through. A body without an
// audience is refused, although Customer.io would send it to the
// broadcast's own audience: a publisher that forgot the member would
// otherwise message everyone the broadcast targets.
func Parse(body []byte) (*Request, error) {
	if len(body) > MaxBodyBytes {
		return nil, invalid(ReasonTooLarge, "body is %d bytes, Customer.io's limit is %d", len(body), MaxBodyBytes)
	}
	if !utf8.Valid(body) {
		return nil, invalid(ReasonInvalidUTF8, "body is not valid UTF-8")
	}
	members, err := scanObject(body, "body")
	if err != nil {
		return nil, err
	}

	r := &Request{}
	var audiences []string
	idAt := -1
	for i, m := range members {
		if m.key == "broadcast_id" {
			idAt = i
		} else if audienceOf(m.key) != AudienceNone {
			audiences = append(audiences, m.key)
		}
	}
	if idAt < 0 {
		return nil, invalid(ReasonInvalidBroadcastID, "broadcast_id is required")
	}
	if r.BroadcastID, err = parseBroadcastID(members[idAt].raw); err != nil {
		return nil, err
	}
	switch len(audiences) {
	case 0:
		return nil, invalid(ReasonAudience, "one of ids, emails, per_user_data, data_file_url or recipients is required")
	case 1:
	default:
		return nil, invalid(ReasonAudience, "only one audience may be given, got %s", strings.Join(audiences, " and "))
	}

	for _, m := range members {
		if m.key == "broadcast_id" {
			continue
		}
		if a := audienceOf(m.key); a != AudienceNone {
			r.Audience = a
			if r.entries, err = parseAudience(a, m.raw); err != nil {
				return nil, err
			}
			continue
		}
		if err := checkMember(m); err != nil {
			return nil, err
		}
		r.rest = append(r.rest, m)
	}
	members = slices.DeleteFunc(members, func(m member) bool { return m.key == "broadcast_id" })
	r.body = encodeObject(members)
	r.listInBody = r.aliasEntries(members)
	r.restKey = canonical(r.rest)
	r.coalescable = coalescable(r)
	r.cost = memoryCost(len(body), r)
	return r, nil
}

// aliasEntries points each list entry into r.body, which holds the same
// compacted bytes, so a trigger keeps one copy of its list rather than two.
// members are the body's members, in r.body's order. It reports whether
// it did.
func (r *Request) aliasEntries(members []member) bool {
	if len(r.entries) == 0 {
		return false
	}
	at := 1 // after '{'
	for i, m := range members {
		if i > 0 {
			at++ // ','
		}
		at += len(appendKey(nil, m.key))
		if audienceOf(m.key) == r.Audience {
			break
		}
		at += len(m.raw)
	}
	// list is "[e0,e1,…]…": each entry follows one byte, '[' or ','.
	list := r.body[at:]
	aliased := make([][]byte, len(r.entries))
	for i, e := range r.entries {
		if len(list) < 1+len(e.raw) || !bytes.Equal(list[1:1+len(e.raw)], e.raw) {
			return false // cannot happen: the body was written from these bytes
		}
		aliased[i] = list[1 : 1+len(e.raw) : 1+len(e.raw)]
		list = list[1+len(e.raw):]
	}
	for i := range r.entries {
		r.entries[i].raw = aliased[i]
	}
	return true
}

// parseBroadcastID accepts a JSON integer literal: no fraction, exponent
// or quotes, so an id is never silently rounded or guessed.
func parseBroadcastID(raw []byte) (int64, error) {
	var n int64
	if len(raw) == 0 || raw[0] < '1' || raw[0] > '9' || bytes.ContainsAny(raw, ".eE") ||
		json.Unmarshal(raw, &n) != nil || n <= 0 {
		return 0, invalid(ReasonInvalidBroadcastID, "broadcast_id must be a positive integer, got %s", truncate(raw))
	}
	return n, nil
}

// checkMember validates a member that is not the id or the audience.
func checkMember(m member) error {
	switch {
	case m.key == "data":
		if kind(m.raw) != '{' {
			return invalid(ReasonInvalidField, "data must be an object")
		}
		if len(m.raw) > MaxDataBytes {
			return invalid(ReasonTooLarge, "data is %d bytes, Customer.io's limit is %d", len(m.raw), MaxDataBytes)
		}
	case slices.Contains(flags, m.key):
		if s := string(m.raw); s != "true" && s != "false" {
			return invalid(ReasonInvalidField, "%s must be a boolean", m.key)
		}
	}
	return nil
}

// parseAudience validates the audience member's value and returns the
// list elements of ids, emails and per_user_data.
func parseAudience(a Audience, raw []byte) ([]entry, error) {
	switch a {
	case AudienceRecipients:
		if kind(raw) != '{' {
			return nil, invalid(ReasonInvalidField, "recipients must be an object")
		}
		return nil, nil
	case AudienceDataFileURL:
		var s string
		if kind(raw) != '"' || json.Unmarshal(raw, &s) != nil {
			return nil, invalid(ReasonInvalidDataFileURL, "data_file_url must be a string")
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, invalid(ReasonInvalidDataFileURL, "data_file_url %s is not an absolute http(s) URL", truncate(raw))
		}
		return nil, nil
	}

	var elems []json.RawMessage
	if kind(raw) != '[' || json.Unmarshal(raw, &elems) != nil {
		return nil, invalid(ReasonInvalidField, "%s must be an array", a)
	}
	if len(elems) == 0 {
		return nil, invalid(ReasonInvalidField, "%s must not be empty", a)
	}
	if limit := maxEntries(a); len(elems) > limit {
		return nil, invalid(ReasonTooManyRecipients, "%s has %d entries, Customer.io's limit is %d", a, len(elems), limit)
	}
	entries := make([]entry, len(elems))
	for i, e := range elems {
		var who string
		var ok bool
		switch a {
		case AudienceIDs:
			who, ok = idKey(e)
		case AudienceEmails:
			who, ok = emailKey(e)
		case AudiencePerUserData:
			var err error
			if who, err = perUserKey(e, i); err != nil {
				return nil, err
			}
			ok = true
		}
		if !ok {
			want := "a non-empty string"
			if a == AudienceIDs {
				want += " or a number"
			}
			return nil, invalid(ReasonInvalidField, "%s[%d] must be %s", a, i, want)
		}
		entries[i] = entry{raw: e, who: who}
	}
	return entries, nil
}

func maxEntries(a Audience) int {
	if a == AudiencePerUserData {
		return MaxPerUserData
	}
	return MaxRecipients
}

// idKey names the person a customer id identifies. A string id and a
// number written with the same digits name the same person, as the id is
// a string in Customer.io.
func idKey(raw []byte) (string, bool) {
	switch kind(raw) {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil || s == "" {
			return "", false
		}
		return "id:" + s, true
	case '0':
		return "id:" + string(raw), true
	}
	return "", false
}

// emailKey names the person an email address identifies. Customer.io
// treats email addresses case-insensitively and ids case-sensitively
// (https://docs.customer.io/journeys/identifying-people/, "Case
// sensitivity of identifiers").
func emailKey(raw []byte) (string, bool) {
	var s string
	if kind(raw) != '"' || json.Unmarshal(raw, &s) != nil || s == "" {
		return "", false
	}
	return "email:" + strings.ToLower(s), true
}

// perUserKey validates one per_user_data element and names its person.
func perUserKey(raw []byte, i int) (string, error) {
	where := fmt.Sprintf("per_user_data[%d]", i)
	if kind(raw) != '{' {
		return "", invalid(ReasonInvalidField, "%s must be an object", where)
	}
	members, err := scanObject(raw, where)
	if err != nil {
		return "", err
	}
	var who string
	n := 0
	for _, m := range members {
		var ok bool
		switch m.key {
		case "id":
			who, ok = idKey(m.raw)
		case "email":
			who, ok = emailKey(m.raw)
		case "data":
			if kind(m.raw) != '{' {
				return "", invalid(ReasonInvalidField, "%s.data must be an object", where)
			}
			continue
		default:
			continue
		}
		if !ok {
			return "", invalid(ReasonInvalidField, "%s.%s must be a non-empty string", where, m.key)
		}
		n++
	}
	if n != 1 {
		return "", invalid(ReasonInvalidField, "%s needs exactly one of id or email", where)
	}
	return who, nil
}

// scanObject reads raw as one JSON object and returns its members, values
// compacted. A repeated key is refused: which copy Customer.io would read
// depends on its parser.
func scanObject(raw []byte, what string) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	syntax := func(err error) error {
		return invalid(ReasonInvalidJSON, "%s: %v", what, err)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, syntax(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, invalid(ReasonInvalidJSON, "%s must be a JSON object", what)
	}
	var members []member
	var repeated error
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntax(err)
		}
		key, _ := tok.(string) // inside an object the decoder yields only string keys
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, syntax(err)
		}
		if seen[key] && repeated == nil {
			repeated = invalid(ReasonInvalidField, "%s: member %q appears more than once", what, key)
		}
		seen[key] = true
		var c bytes.Buffer
		c.Grow(len(v))
		_ = json.Compact(&c, v) // the decoder has validated v
		members = append(members, member{key: key, raw: c.Bytes()})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, syntax(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalid(ReasonInvalidJSON, "%s: data after the object", what)
	}
	// A syntax error anywhere outranks a repeated key: it is the more basic
	// fault, and reporting it first gives one answer however the body breaks.
	if repeated != nil {
		return nil, repeated
	}
	return members, nil
}

// encodeObject writes members as a compact JSON object.
func encodeObject(members []member) []byte {
	n := 2
	for _, m := range members {
		n += len(m.key) + len(m.raw) + 4
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	for i, m := range members {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendKey(b, m.key)
		b = append(b, m.raw...)
	}
	return append(b, '}')
}

// appendKey appends key as a JSON string and a colon, without the HTML
// escaping of json.Marshal, so a key keeps the bytes it was given in.
func appendKey(b []byte, key string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(key) // a string always encodes
	b = append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
	return append(b, ':')
}

// canonical is the coalescing key of a trigger's non-audience members:
// the SHA-256 of them sorted by name, a false flag left out as the same as
// an absent one. A digest rather than the text, so a trigger with 50 KB of
// data does not hold a second copy of it for comparison.
func canonical(rest []member) string {
	sorted := slices.Clone(rest)
	sorted = slices.DeleteFunc(sorted, func(m member) bool {
		return slices.Contains(flags, m.key) && string(m.raw) == "false"
	})
	slices.SortFunc(sorted, func(a, b member) int { return strings.Compare(a.key, b.key) })
	h := sha256.New()
	for _, m := range sorted {
		// Lengths first, so no two member lists hash the same text.
		fmt.Fprintf(h, "%d:%s%d:", len(m.key), m.key, len(m.raw))
		h.Write(m.raw)
	}
	return string(h.Sum(nil))
}

// coalescable reports whether r may share a request with other triggers:
// its audience is a list, every kind of identifier it uses has its
// *_ignore_missing flag set, and it does not name one person twice with
// different per-user data.
func coalescable(r *Request) bool {
	switch r.Audience {
	case AudienceIDs, AudienceEmails, AudiencePerUserData:
	default:
		return false
	}
	set := func(flag string) bool {
		return slices.ContainsFunc(r.rest, func(m member) bool { return m.key == flag && string(m.raw) == "true" })
	}
	ids, emails := set("id_ignore_missing"), set("email_ignore_missing")
	seen := make(map[string][]byte, len(r.entries))
	for _, e := range r.entries {
		if (strings.HasPrefix(e.who, "id:") && !ids) || (strings.HasPrefix(e.who, "email:") && !emails) {
			return false
		}
		if prev, ok := seen[e.who]; ok && r.Audience == AudiencePerUserData && !bytes.Equal(prev, e.raw) {
			return false
		}
		seen[e.who] = e.raw
	}
	return true
}

// kind classifies a compacted JSON value by its first byte: '{', '[', '"',
// '0' for a number, 't'/'f' for booleans, 'n' for null.
func kind(raw []byte) byte {
	if len(raw) == 0 {
		return 0
	}
	switch c := raw[0]; {
	case c == '-' || c >= '0' && c <= '9':
		return '0'
	case c == 'f':
		return 't'
	default:
		return c
	}
}

// truncate bounds a value quoted in an error: enough to recognise it.
func truncate(raw []byte) string {
	const max = 64
	if len(raw) <= max {
		return string(raw)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(raw[cut]) {
		cut--
	}
	return string(raw[:cut]) + "…"
}
