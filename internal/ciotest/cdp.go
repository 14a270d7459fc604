package ciotest

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// Customer.io's CDP limits, read in bytes the strict way its own Go library
// does (maxBatchBytes = 500000, maxMessageBytes = 32000): a stand-in that
// read KB as 1024 would let a packer that overshoots by up to 2.4% pass.
const (
	MaxBatchBytes = 500_000 // a POST /v1/batch body
	MaxCallBytes  = 32_000  // one call inside a batch, or a single-call request body
)

const batchPath = "/v1/batch"

// cdpSingleTypes maps each single-call endpoint to the call type it implies.
var cdpSingleTypes = map[string]string{
	"/v1/identify": "identify",
	"/v1/track":    "track",
	"/v1/page":     "page",
	"/v1/screen":   "screen",
	"/v1/group":    "group",
	"/v1/alias":    "alias",
}

// callTypes holds each call type's name once.
var callTypes = map[string]string{
	"identify": "identify", "track": "track", "page": "page",
	"screen": "screen", "group": "group", "alias": "alias",
}

// StrictModeHeader is the request header that turns on Customer.io's
// strict validation for a CDP request, when its value is exactly "1".
const StrictModeHeader = "X-Strict-Mode"

// strictMode reports whether req asked for strict validation. "When not
// set or set to any other value, the API operates in permissive mode."
func strictMode(h http.Header) bool { return h.Get(StrictModeHeader) == "1" }

func (s *Server) cdp(req *Request) response {
	if req.Method != http.MethodPost {
		return methodNotAllowed()
	}
	if !req.AuthOK {
		return unauthorized(`Basic realm="cdp"`)
	}
	if err := checkJSONHeaders(req.Header); err != nil {
		// Stricter than Customer.io in either mode (see the package doc).
		return cdpReject(err.Error())
	}
	single := cdpSingleTypes[req.Path]
	limit := MaxBatchBytes
	if single != "" {
		limit = MaxCallBytes
	}
	if req.BodyBytes > limit {
		// Parsed only to record which calls were lost.
		req.Calls, _, _ = parseCDP(req.Body, single)
		return dropped("body is %d bytes, over the %d-byte limit", req.BodyBytes, limit)
	}
	// What fails validation: strict mode answers 400 and accepts nothing
	// from the request; permissive mode answers 200 and drops it.
	invalid := cdpReject
	if !strictMode(req.Header) {
		invalid = droppedInvalid
	}
	if !utf8.Valid(req.Body) {
		return invalid("body is not valid UTF-8")
	}
	calls, problems, err := parseCDP(req.Body, single)
	if err != nil {
		return invalid(err.Error())
	}
	req.Calls = calls
	if single == "" {
		// Sizes are checked before content: Customer.io drops an over-limit
		// request without reading it.
		for i, c := range calls {
			if c.Size > MaxCallBytes {
				return dropped("%s is %d bytes, over the %d-byte limit", c.name(i), c.Size, MaxCallBytes)
			}
		}
	}
	var msgs []string
	for i := range calls {
		p := problems[i]
		if p == nil && s.opts.Rule != nil {
			p = s.opts.Rule(calls[i])
		}
		if p == nil {
			continue
		}
		calls[i].Problem = p.Error()
		if single != "" {
			msgs = append(msgs, p.Error())
		} else {
			msgs = append(msgs, fmt.Sprintf("%s: %v", calls[i].name(i), p))
		}
	}
	switch {
	case len(msgs) == 0:
		return accepted("{}")
	case strictMode(req.Header):
		return cdpReject(msgs...)
	case len(msgs) == len(calls):
		return droppedInvalid(msgs...)
	}
	// Permissive: the valid calls are delivered, the others silently
	// dropped (see Call.Problem and Stats.CallsDroppedInvalid).
	resp := accepted("{}")
	resp.reason = strings.Join(msgs, "; ")
	return resp
}

// cdpReject is strict mode's answer to a request that fails validation:
// 400 with the OpenAPI's error shape, {"meta":{"errors":[…]}}, one entry
// per problem.
func cdpReject(msgs ...string) response {
	r := reject(http.StatusBadRequest, "%s", strings.Join(msgs, "; "))
	r.body, _ = json.Marshal(map[string]map[string][]string{"meta": {"errors": msgs}})
	return r
}

// droppedInvalid is permissive mode's answer to a request none of whose
// calls passes validation: 200, as if it had succeeded, and nothing
// delivered.
func droppedInvalid(msgs ...string) response {
	return response{status: http.StatusOK, outcome: OutcomeDroppedInvalid, reason: strings.Join(msgs, "; "), body: []byte("{}")}
}

// parseCDP reads a CDP body: a batch when single is "", else one call of the
// type single. It returns the calls, one validation problem per call (nil
// when valid), and err when the body as a whole is unusable.
func parseCDP(body []byte, single string) ([]Call, []error, error) {
	if err := checkJSON(body); err != nil {
		return nil, nil, err
	}
	start := skipSpace(body, 0)
	if body[start] != '{' {
		return nil, nil, errors.New("body is not a JSON object")
	}
	if single != "" {
		c, p := readCall(body[start:endOfValue(body, start)], single)
		return []Call{c}, []error{p}, nil
	}

	var batch *span
	twice := false
	var envelope error
	_ = eachMember(body, func(key []byte, v span) { // an object, so no error
		switch string(key) {
		case "batch":
			twice = batch != nil
			batch = &v
		case "context", "integrations", "sentAt": // the batch's own; messageId and others are not read
			if err := checkFieldType(string(key), body[v.start:v.end]); err != nil && envelope == nil {
				envelope = err
			}
		}
	})
	switch {
	case envelope != nil:
		return nil, nil, envelope
	case twice:
		return nil, nil, errors.New(`"batch" appears more than once`)
	case batch == nil:
		return nil, nil, errors.New(`no "batch" array`)
	}
	elems, err := elements(body[batch.start:batch.end])
	if err != nil {
		return nil, nil, fmt.Errorf(`"batch" is %w`, err)
	}
	if len(elems) == 0 {
		return nil, nil, errors.New(`"batch" is empty`)
	}
	calls := make([]Call, len(elems))
	problems := make([]error, len(elems))
	for i, e := range elems {
		calls[i], problems[i] = readCall(body[batch.start+e.start:batch.start+e.end], "")
	}
	return calls, problems, nil
}

// name identifies the call at index i of a batch in an error.
func (c *Call) name(i int) string {
	if c.MessageID == "" {
		return fmt.Sprintf("batch[%d]", i)
	}
	return fmt.Sprintf("batch[%d] (messageId %q)", i, c.MessageID)
}

// callFields holds the raw values of the members Customer.io reads; nil
// means absent.
type callFields struct {
	typ, messageID, userID, anonymousID, event, name, groupID, previousID []byte
}

// readCall builds the record of the call raw, valid JSON, and validates
// it. implied is the type a single-call endpoint implies, "" in a batch.
func readCall(raw []byte, implied string) (Call, error) {
	c := Call{Raw: raw, Size: len(raw), Type: implied}
	var f callFields
	var dup string
	var typed error // the first typed field (see checkFieldType) of the wrong type
	err := eachMember(raw, func(key []byte, v span) {
		var dst *[]byte
		switch k := string(key); k {
		case "traits", "properties", "context", "integrations", "timestamp", "sentAt", "originalTimestamp":
			if err := checkFieldType(k, raw[v.start:v.end]); err != nil && typed == nil {
				typed = err
			}
			return
		case "type":
			dst = &f.typ
		case "messageId":
			dst = &f.messageID
		case "userId":
			dst = &f.userID
		case "anonymousId":
			dst = &f.anonymousID
		case "event":
			dst = &f.event
		case "name":
			dst = &f.name
		case "groupId":
			dst = &f.groupID
		case "previousId":
			dst = &f.previousID
		default:
			return
		}
		if *dst != nil && dup == "" {
			dup = string(key)
		}
		*dst = raw[v.start:v.end]
	})
	if err != nil {
		return c, fmt.Errorf("call is %w", err)
	}
	c.MessageID, _ = stringValue(f.messageID)
	c.UserID = idValue(f.userID)
	if t, ok := stringValue(f.typ); ok {
		c.Type = t
		if known, ok := callTypes[t]; ok {
			c.Type = known // shared, rather than one copy per call
		}
	}

	if dup != "" {
		// Which copy wins depends on the parser, so no answer is right.
		return c, fmt.Errorf("%s appears more than once", dup)
	}
	if err := f.validate(implied); err != nil {
		return c, err
	}
	return c, typed
}

// checkFieldType applies the types Customer.io's API reference gives the
// optional fields of a call (and of a batch's envelope): traits,
// properties, context and integrations are objects; timestamp, sentAt and
// originalTimestamp are ISO 8601 date-time strings, read here as RFC 3339
// (the OpenAPI's format: date-time), the stricter reading. A field that
// appears twice is checked each time.
func checkFieldType(key string, raw []byte) error {
	switch key {
	case "traits", "properties", "context", "integrations":
		if k := jsonKind(raw); k != "object" {
			return fmt.Errorf("%s must be an object, not %s", key, k)
		}
	default:
		v, ok := stringValue(raw)
		if !ok {
			return fmt.Errorf("%s must be an ISO 8601 date-time string, not %s", key, jsonKind(raw))
		}
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			return fmt.Errorf("%s %q is not an ISO 8601 date-time", key, v)
		}
	}
	return nil
}

// validate applies Customer.io's documented rules for each call type.
func (f *callFields) validate(implied string) error {
	typ := implied
	switch {
	case f.typ == nil && implied == "":
		return errors.New("missing type")
	case f.typ != nil:
		t, ok := stringValue(f.typ)
		if !ok {
			return fmt.Errorf("type must be a string, not %s", jsonKind(f.typ))
		}
		if implied != "" && t != implied {
			return fmt.Errorf("type %q sent to the %s endpoint", t, implied)
		}
		typ = t
	}
	if f.messageID != nil && jsonKind(f.messageID) != "string" {
		return fmt.Errorf("messageId must be a string, not %s", jsonKind(f.messageID))
	}
	user := isID(f.userID) || isID(f.anonymousID)
	switch typ {
	case "identify", "page":
		if !user {
			return fmt.Errorf("%s needs userId or anonymousId", typ)
		}
	case "track":
		if !user {
			return errors.New("track needs userId or anonymousId")
		}
		if !isNonEmptyString(f.event) {
			return errors.New("track needs event, a non-empty string")
		}
	case "screen":
		if !user {
			return errors.New("screen needs userId or anonymousId")
		}
		if !isNonEmptyString(f.name) {
			return errors.New("screen needs name, a non-empty string")
		}
	case "group":
		if !isID(f.groupID) {
			return errors.New("group needs groupId")
		}
		if !user {
			return errors.New("group needs userId or anonymousId")
		}
	case "alias":
		if !isID(f.userID) {
			return errors.New("alias needs userId")
		}
		if !isID(f.previousID) {
			return errors.New("alias needs previousId")
		}
	default:
		return fmt.Errorf("unknown type %q", typ)
	}
	return nil
}

// checkJSONHeaders insists on a JSON body sent as is. Customer.io documents
// JSON bodies; a client that labels them otherwise or compresses them is
// relying on leniency the stand-in does not assume.
func checkJSONHeaders(h http.Header) error {
	ct := h.Values("Content-Type")
	if len(ct) != 1 {
		return errors.New("Content-Type must be application/json")
	}
	mt, params, err := mime.ParseMediaType(ct[0])
	if err != nil || mt != "application/json" {
		return fmt.Errorf("Content-Type must be application/json, not %q", ct[0])
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return fmt.Errorf("charset must be utf-8, not %q", cs)
	}
	if ce := h.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return fmt.Errorf("Content-Encoding %q is not supported", ce)
	}
	return nil
}

// checkJSONRequest checks what the App and Track endpoints ask of every
// body before reading it: sent as JSON (see checkJSONHeaders), valid
// UTF-8, valid JSON. The error is the 400's message.
func checkJSONRequest(req *Request) error {
	if err := checkJSONHeaders(req.Header); err != nil {
		return err
	}
	if !utf8.Valid(req.Body) {
		return errors.New("body is not valid UTF-8")
	}
	return checkJSON(req.Body)
}
