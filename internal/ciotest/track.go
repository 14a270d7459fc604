package ciotest

import (
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

const (
	trackPrefix     = "/api/v1/"
	customersPrefix = trackPrefix + "customers/"
)

// track serves POST /api/v1/customers/{identifier}/suppress and
// /unsuppress.
func (s *Server) track(req *Request) response {
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

// cutLast slices s around the last sep.
func cutLast(s string, sep byte) (before, after string, found bool) {
	i := strings.LastIndexByte(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}
