package ciotest

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

const appPrefix = "/v1/campaigns/"

// BroadcastInterval is Customer.io's limit on API-triggered broadcasts: one
// trigger per broadcast in any 10 seconds; more are answered 429.
const BroadcastInterval = 10 * time.Second

// audienceKeys are the trigger body's ways to choose recipients, of which
// at most one may be given.
var audienceKeys = []string{"recipients", "ids", "emails", "per_user_data", "data_file_url"}

// app serves POST /v1/campaigns/{broadcast_id}/triggers.
func (s *Server) app(req *Request) response {
	idSeg, tail, found := strings.Cut(strings.TrimPrefix(req.Path, appPrefix), "/")
	if !found || tail != "triggers" {
		return reject(http.StatusNotFound, "no such endpoint: %s", req.Path)
	}
	if req.Method != http.MethodPost {
		return methodNotAllowed()
	}
	if !req.AuthOK {
		return unauthorized(`Bearer realm="app"`)
	}
	id, ok := broadcastID(idSeg)
	if !ok {
		return reject(http.StatusNotFound, "no broadcast %q: ids are positive integers", idSeg)
	}
	if err := checkJSONRequest(req); err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}
	if err := validateTrigger(req.Body); err != nil {
		return reject(http.StatusBadRequest, "%v", err)
	}

	// Only an accepted trigger starts the broadcast's 10 seconds. The clock
	// is read, checked and the start set under one lock, so concurrent
	// triggers cannot both get through, nor see time run backwards.
	resp := accepted("")
	resp.commit = func(r *response) {
		now := s.opts.Now()
		if last, seen := s.lastTrigger[id]; seen {
			if wait := BroadcastInterval - now.Sub(last); wait > 0 {
				secs := int64((wait + time.Second - 1) / time.Second)
				*r = reject(http.StatusTooManyRequests,
					"broadcast %d may be triggered once every %v; retry in %v", id, BroadcastInterval, wait)
				r.outcome = OutcomeRateLimited
				r.header = http.Header{"Retry-After": {strconv.FormatInt(secs, 10)}}
				return
			}
		}
		s.lastTrigger[id] = now
		tid := int64(len(s.triggers) + 1)
		s.triggers = append(s.triggers, Trigger{BroadcastID: id, TriggerID: tid, Body: req.Body, Time: now})
		r.body = fmt.Appendf(nil, `{"id":%d}`, tid)
	}
	return resp
}

// broadcastID parses a path segment as a broadcast id: a positive decimal
// integer written without sign or leading zeros.
func broadcastID(seg string) (int64, bool) {
	if seg == "" || seg[0] == '0' || strings.Trim(seg, "0123456789") != "" {
		return 0, false
	}
	id, err := strconv.ParseInt(seg, 10, 64)
	return id, err == nil
}

// validateTrigger checks a trigger body, valid JSON, against the documented
// shape of each field. Fields it does not know are allowed.
func validateTrigger(body []byte) error {
	seen := make(map[string]bool)
	var audiences []string
	var problem error
	err := eachMember(body, func(key []byte, v span) {
		k := string(key)
		switch {
		case problem != nil:
		case seen[k]:
			problem = fmt.Errorf("%s appears more than once", k)
		default:
			seen[k] = true
			if slices.Contains(audienceKeys, k) {
				audiences = append(audiences, k)
			}
			if err := checkTriggerField(k, body[v.start:v.end]); err != nil {
				problem = fmt.Errorf("%s: %w", k, err)
			}
		}
	})
	switch {
	case err != nil:
		return fmt.Errorf("body is %w", err)
	case problem != nil:
		return problem
	case len(audiences) > 1:
		return fmt.Errorf("at most one of %s may be given, got %s",
			strings.Join(audienceKeys, ", "), strings.Join(audiences, " and "))
	}
	return nil
}

// checkTriggerField checks one member of a trigger body. A null audience
// counts as given: a client that means "none" must leave the field out.
func checkTriggerField(key string, raw []byte) error {
	kind := jsonKind(raw)
	want := func(k string) error {
		if kind != k {
			return fmt.Errorf("must be %s %s, not %s", article(k), k, kind)
		}
		return nil
	}
	switch key {
	case "data", "recipients":
		return want("object")
	case "id_ignore_missing", "email_ignore_missing", "email_add_duplicates":
		return want("boolean")
	case "data_file_url":
		s, ok := stringValue(raw)
		if !ok {
			return want("string")
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%q is not an http(s) URL", s)
		}
		return nil
	case "ids", "emails", "per_user_data":
		if err := want("array"); err != nil {
			return err
		}
		return checkAudienceList(key, raw)
	}
	return nil
}

func checkAudienceList(key string, raw []byte) error {
	elems, _ := elements(raw) // an array: checked by the caller
	if len(elems) == 0 {
		return errors.New("must not be empty")
	}
	for i, e := range elems {
		v := raw[e.start:e.end]
		switch key {
		case "ids":
			if !isID(v) {
				return fmt.Errorf("[%d] must be a non-empty string or a number", i)
			}
		case "emails":
			if !isNonEmptyString(v) {
				return fmt.Errorf("[%d] must be a non-empty string", i)
			}
		case "per_user_data":
			n := 0
			err := eachMember(v, func(key []byte, _ span) {
				if k := string(key); k == "id" || k == "email" {
					n++
				}
			})
			if err != nil {
				return fmt.Errorf("[%d] must be an object", i)
			}
			if n != 1 {
				return fmt.Errorf("[%d] needs exactly one of id or email", i)
			}
		}
	}
	return nil
}

func article(kind string) string {
	if kind == "object" || kind == "array" {
		return "an"
	}
	return "a"
}
