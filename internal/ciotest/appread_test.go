package ciotest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

func appGet(t *testing.T, s *ciotest.Server, pathAndQuery, key string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.AppURL()+pathAndQuery, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return do(t, req)
}

// TestAppReadRateLimit: the 11th read within a second is answered 429
// with Retry-After and the documented body; it does not count, and a
// second later reads go through again.
func TestAppReadRateLimit(t *testing.T) {
	c := &clock{now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	s := newServer(t, func(o *ciotest.Options) { o.Now = c.Now })
	for i := range ciotest.AppReadLimit {
		if a := appGet(t, s, "/segments", appKey); a.status != http.StatusOK {
			t.Fatalf("read %d: %d %s", i, a.status, a.body)
		}
		c.Advance(50 * time.Millisecond) // ten reads in 500 ms
	}
	a := appGet(t, s, "/snippets", appKey) // any read path counts
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "1" ||
		!strings.Contains(a.body, `"detail":"rate limited to 10 requests per 1s`) {
		t.Fatalf("11th read: %d Retry-After %q %s", a.status, a.header.Get("Retry-After"), a.body)
	}
	c.Advance(500 * time.Millisecond) // the first read leaves the window
	if a := appGet(t, s, "/segments", appKey); a.status != http.StatusOK {
		t.Fatalf("after the window: %d %s", a.status, a.body)
	}
	if st := s.Stats(); st.RateLimited != 1 {
		t.Errorf("RateLimited = %d, want 1", st.RateLimited)
	}
}

// TestAppReadRefusals: what Customer.io refuses, the stand-in refuses.
func TestAppReadRefusals(t *testing.T) {
	c := &clock{now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	s := newServer(t, func(o *ciotest.Options) { o.Now = c.Now })
	msgs := make([]json.RawMessage, 3)
	for i := range msgs {
		msgs[i] = json.RawMessage(fmt.Sprintf(`{"id":"m%d","type":"email","created":%d,"metrics":{"sent":1}}`, i, c.Now().Unix()))
	}
	s.SetAppData(ciotest.AppData{Messages: msgs, Segments: []json.RawMessage{json.RawMessage(`{"id":7}`)}})
	sevenMonths := c.Now().AddDate(0, -7, 0).Unix()
	tests := []struct {
		name, path, key string
		status          int
		body            string
	}{
		{"no key", "/segments", "", http.StatusUnauthorized, ""},
		{"wrong key", "/segments", "nope", http.StatusUnauthorized, ""},
		{"limit 0", "/messages?limit=0", appKey, http.StatusBadRequest, "limit must be from 1 to 1000"},
		{"limit 1001", "/messages?limit=1001", appKey, http.StatusBadRequest, "limit must be from 1 to 1000"},
		{"made-up cursor", "/messages?start=2", appKey, http.StatusBadRequest, "not a cursor"},
		{"window over 6 months", fmt.Sprintf("/messages?start_ts=%d", sevenMonths), appKey, http.StatusBadRequest, "at most 6 months"},
		{"unknown type", "/messages?type=fax", appKey, http.StatusBadRequest, "not a message type"},
		{"unknown segment", "/segments/8", appKey, http.StatusNotFound, "segment 8 does not exist"},
		{"unknown segment's members", "/segments/8/membership", appKey, http.StatusNotFound, "segment 8"},
		{"unknown trigger", "/campaigns/5/triggers/1", appKey, http.StatusNotFound, "no trigger 1"},
		{"bad sort", "/newsletters?sort=up", appKey, http.StatusBadRequest, "sort must be asc or desc"},
		{"page", "/messages?limit=2", appKey, http.StatusOK, `"next":"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Advance(time.Second) // out of the previous read's window
			a := appGet(t, s, tt.path, tt.key)
			if a.status != tt.status || !strings.Contains(a.body, tt.body) {
				t.Fatalf("%d %s, want %d with %q", a.status, a.body, tt.status, tt.body)
			}
			if tt.status == http.StatusBadRequest && !strings.Contains(a.body, `{"errors":[{"detail":`) {
				t.Errorf("error body %s is not the App API's errors shape", a.body)
			}
		})
	}
	req, _ := http.NewRequest(http.MethodPost, s.AppURL()+"/segments/7/membership", nil)
	req.Header.Set("Authorization", "Bearer "+appKey)
	if a := do(t, req); a.status != http.StatusMethodNotAllowed || a.header.Get("Allow") != http.MethodGet {
		t.Errorf("POST to a read: %d Allow %q", a.status, a.header.Get("Allow"))
	}
}

// TestAppReadTriggerShapes: one trigger is answered as the object itself
// (broadcastStatus), its errors as strings paged by an integer offset,
// 0 on the last page (broadcastErrors); an offset not handed out is
// refused.
func TestAppReadTriggerShapes(t *testing.T) {
	c := &clock{now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	s := newServer(t, func(o *ciotest.Options) { o.Now = c.Now })
	if a := do(t, triggerRequest(t, s, "5", `{"ids":["u1"]}`, "Bearer "+appKey)); a.status != http.StatusOK {
		t.Fatalf("trigger: %d %s", a.status, a.body)
	}
	s.SetAppData(ciotest.AppData{TriggerErrors: map[int64][]json.RawMessage{1: {
		json.RawMessage(`"line 1: customer u-1 does not exist"`), json.RawMessage(`"line 2: customer u-2 does not exist"`), json.RawMessage(`"line 3: customer u-3 does not exist"`),
	}}})
	at := c.Now().Unix()
	tests := []struct {
		name, path string
		status     int
		body       string
	}{
		{"one trigger", "/campaigns/5/triggers/1", http.StatusOK, fmt.Sprintf(`{"id":1,"broadcast_id":5,"created_at":%d,"processed_at":%d}`, at, at)},
		{"first page", "/campaigns/5/triggers/1/errors?limit=2", http.StatusOK, `{"errors":["line 1: customer u-1 does not exist","line 2: customer u-2 does not exist"],"next":2}`},
		{"last page", "/campaigns/5/triggers/1/errors?limit=2&start=2", http.StatusOK, `{"errors":["line 3: customer u-3 does not exist"],"next":0}`},
		{"offset not handed out", "/campaigns/5/triggers/1/errors?start=x", http.StatusBadRequest, `not an offset`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Advance(time.Second)
			a := appGet(t, s, tt.path, appKey)
			if a.status != tt.status || (tt.status == http.StatusOK && a.body != tt.body) || !strings.Contains(a.body, tt.body) {
				t.Fatalf("%d %s, want %d %s", a.status, a.body, tt.status, tt.body)
			}
		})
	}
}
