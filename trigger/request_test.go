package trigger_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/event"
	"github.com/cio-relay/cio-relay/trigger"
)

// list returns a JSON array of n elements made by elem.
func list(n int, elem func(i int) string) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = elem(i)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		id         int64
		audience   trigger.Audience
		recipients int
		want       string // Body()
	}{
		{"ids", `{"broadcast_id": 7, "ids": ["a", 2], "data": {"x": "<&>"}, "id_ignore_missing": true}`,
			7, trigger.AudienceIDs, 2, `{"ids":["a",2],"data":{"x":"<&>"},"id_ignore_missing":true}`},
		{"broadcast id last, member order kept", `{"data":{"b":1,"a":2},"emails":["A@x.io"],"broadcast_id":9}`,
			9, trigger.AudienceEmails, 1, `{"data":{"b":1,"a":2},"emails":["A@x.io"]}`},
		{"per_user_data", `{"broadcast_id":1,"per_user_data":[{"id":"u1","data":{"n":1}},{"email":"e@x.io"}]}`,
			1, trigger.AudiencePerUserData, 2, `{"per_user_data":[{"id":"u1","data":{"n":1}},{"email":"e@x.io"}]}`},
		{"data_file_url", `{"broadcast_id":1,"data_file_url":"https://files.example/a.ndjson"}`,
			1, trigger.AudienceDataFileURL, 0, `{"data_file_url":"https://files.example/a.ndjson"}`},
		{"recipients", `{"broadcast_id":1,"recipients":{"segment":{"id":3}}}`,
			1, trigger.AudienceRecipients, 0, `{"recipients":{"segment":{"id":3}}}`},
		{"unknown member passes through", `{"broadcast_id":1,"ids":["a"],"x_trace":"t1"}`,
			1, trigger.AudienceIDs, 1, `{"ids":["a"],"x_trace":"t1"}`},
		{"escaped key keeps its meaning", `{"broadcast_id":1,"\u0069ds":["a"],"k\u003c":1}`,
			1, trigger.AudienceIDs, 1, `{"ids":["a"],"k<":1}`},
		{"largest id", `{"broadcast_id":9223372036854775807,"ids":["a"]}`,
			1<<63 - 1, trigger.AudienceIDs, 1, `{"ids":["a"]}`},
		{"at the recipient cap", `{"broadcast_id":1,"ids":` + list(trigger.MaxRecipients, func(i int) string { return fmt.Sprint(i) }) + `}`,
			1, trigger.AudienceIDs, trigger.MaxRecipients, ""},
		{"at the data cap", `{"broadcast_id":1,"ids":["a"],"data":{"s":"` + strings.Repeat("x", trigger.MaxDataBytes-8) + `"}}`,
			1, trigger.AudienceIDs, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := trigger.Parse([]byte(tt.body))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if r.BroadcastID != tt.id || r.Audience != tt.audience || r.Recipients() != tt.recipients {
				t.Errorf("got broadcast %d audience %v recipients %d, want %d %v %d",
					r.BroadcastID, r.Audience, r.Recipients(), tt.id, tt.audience, tt.recipients)
			}
			if tt.want != "" && string(r.Body()) != tt.want {
				t.Errorf("Body() = %s\nwant     %s", r.Body(), tt.want)
			}
			if strings.Contains(string(r.Body()), "broadcast_id") {
				t.Errorf("Body() still carries broadcast_id: %.80s", r.Body())
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		reason event.Reason
	}{
		{"not json", `{"broadcast_id":1,`, trigger.ReasonInvalidJSON},
		{"not an object", `[1]`, trigger.ReasonInvalidJSON},
		{"empty", ``, trigger.ReasonInvalidJSON},
		{"trailing data", `{"broadcast_id":1,"ids":["a"]} {}`, trigger.ReasonInvalidJSON},
		{"syntax error outranks a repeated member", `{"ids":["a"],"ids":["b"],`, trigger.ReasonInvalidJSON},
		{"invalid utf-8", "{\"broadcast_id\":1,\"ids\":[\"\xff\"]}", trigger.ReasonInvalidUTF8},
		{"too large", `{"broadcast_id":1,"ids":["` + strings.Repeat("a", trigger.MaxBodyBytes) + `"]}`, trigger.ReasonTooLarge},
		{"data too large", `{"broadcast_id":1,"ids":["a"],"data":{"s":"` + strings.Repeat("x", trigger.MaxDataBytes) + `"}}`, trigger.ReasonTooLarge},

		{"no broadcast id", `{"ids":["a"]}`, trigger.ReasonInvalidBroadcastID},
		{"zero broadcast id", `{"broadcast_id":0,"ids":["a"]}`, trigger.ReasonInvalidBroadcastID},
		{"negative broadcast id", `{"broadcast_id":-3,"ids":["a"]}`, trigger.ReasonInvalidBroadcastID},
		{"fractional broadcast id", `{"broadcast_id":1.5,"ids":["a"]}`, trigger.ReasonInvalidBroadcastID},
		{"exponent broadcast id", `{"broadcast_id":1e3,"ids":["a"]}`, trigger.ReasonInvalidBroadcastID},
		{"string broadcast id", `{"broadcast_id":"7","ids":["a"]}`, trigger.ReasonInvalidBroadcastID},
		{"broadcast id overflows", `{"broadcast_id":9223372036854775808,"ids":["a"]}`, trigger.ReasonInvalidBroadcastID},
		{"null broadcast id", `{"broadcast_id":null,"ids":["a"]}`, trigger.ReasonInvalidBroadcastID},

		{"no audience", `{"broadcast_id":1,"data":{}}`, trigger.ReasonAudience},
		{"two audiences", `{"broadcast_id":1,"ids":["a"],"emails":["e@x.io"]}`, trigger.ReasonAudience},
		{"null audience counts as given", `{"broadcast_id":1,"ids":["a"],"recipients":null}`, trigger.ReasonAudience},

		{"data_file_url relative", `{"broadcast_id":1,"data_file_url":"/a.ndjson"}`, trigger.ReasonInvalidDataFileURL},
		{"data_file_url ftp", `{"broadcast_id":1,"data_file_url":"ftp://h/a"}`, trigger.ReasonInvalidDataFileURL},
		{"data_file_url no host", `{"broadcast_id":1,"data_file_url":"https:///a"}`, trigger.ReasonInvalidDataFileURL},
		{"data_file_url not a string", `{"broadcast_id":1,"data_file_url":5}`, trigger.ReasonInvalidDataFileURL},
		{"data_file_url unparsable", `{"broadcast_id":1,"data_file_url":"http://h:x/"}`, trigger.ReasonInvalidDataFileURL},

		{"too many ids", `{"broadcast_id":1,"ids":` + list(trigger.MaxRecipients+1, func(i int) string { return fmt.Sprint(i) }) + `}`, trigger.ReasonTooManyRecipients},
		{"too many emails", `{"broadcast_id":1,"emails":` + list(trigger.MaxRecipients+1, func(i int) string { return fmt.Sprintf(`"%d@x.io"`, i) }) + `}`, trigger.ReasonTooManyRecipients},
		{"too many per_user_data", `{"broadcast_id":1,"per_user_data":` + list(trigger.MaxPerUserData+1, func(i int) string { return fmt.Sprintf(`{"id":%d}`, i) }) + `}`, trigger.ReasonTooManyRecipients},

		{"repeated member", `{"broadcast_id":1,"ids":["a"],"data":{},"data":{}}`, trigger.ReasonInvalidField},
		{"ids not an array", `{"broadcast_id":1,"ids":"a"}`, trigger.ReasonInvalidField},
		{"ids empty", `{"broadcast_id":1,"ids":[]}`, trigger.ReasonInvalidField},
		{"id empty string", `{"broadcast_id":1,"ids":["a",""]}`, trigger.ReasonInvalidField},
		{"id an object", `{"broadcast_id":1,"ids":[{"id":1}]}`, trigger.ReasonInvalidField},
		{"email a number", `{"broadcast_id":1,"emails":[5]}`, trigger.ReasonInvalidField},
		{"per_user_data element not an object", `{"broadcast_id":1,"per_user_data":["a"]}`, trigger.ReasonInvalidField},
		{"per_user_data without id or email", `{"broadcast_id":1,"per_user_data":[{"data":{}}]}`, trigger.ReasonInvalidField},
		{"per_user_data with id and email", `{"broadcast_id":1,"per_user_data":[{"id":"u","email":"e@x.io"}]}`, trigger.ReasonInvalidField},
		{"per_user_data repeated id", `{"broadcast_id":1,"per_user_data":[{"id":"u","id":"v"}]}`, trigger.ReasonInvalidField},
		{"per_user_data data not an object", `{"broadcast_id":1,"per_user_data":[{"id":"u","data":[]}]}`, trigger.ReasonInvalidField},
		{"per_user_data empty email", `{"broadcast_id":1,"per_user_data":[{"email":""}]}`, trigger.ReasonInvalidField},
		{"recipients not an object", `{"broadcast_id":1,"recipients":[]}`, trigger.ReasonInvalidField},
		{"data not an object", `{"broadcast_id":1,"ids":["a"],"data":"x"}`, trigger.ReasonInvalidField},
		{"data null", `{"broadcast_id":1,"ids":["a"],"data":null}`, trigger.ReasonInvalidField},
		{"flag a string", `{"broadcast_id":1,"ids":["a"],"id_ignore_missing":"true"}`, trigger.ReasonInvalidField},
		{"flag null", `{"broadcast_id":1,"emails":["e@x.io"],"email_add_duplicates":null}`, trigger.ReasonInvalidField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := trigger.Parse([]byte(tt.body))
			var inv *event.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("Parse = %v, %v; want an *event.InvalidError", r, err)
			}
			if inv.Reason != tt.reason {
				t.Errorf("reason %q (%v), want %q", inv.Reason, err, tt.reason)
			}
			if len(inv.Detail) > 300 {
				t.Errorf("detail is %d bytes; it should quote values briefly", len(inv.Detail))
			}
		})
	}
}

func TestAudienceString(t *testing.T) {
	for a, want := range map[trigger.Audience]string{
		trigger.AudienceNone: "", trigger.AudienceIDs: "ids", trigger.AudienceEmails: "emails",
		trigger.AudiencePerUserData: "per_user_data", trigger.AudienceDataFileURL: "data_file_url",
		trigger.AudienceRecipients: "recipients", trigger.Audience(99): "Audience(99)",
	} {
		if got := a.String(); got != want {
			t.Errorf("Audience(%d).String() = %q, want %q", a, got, want)
		}
	}
}

// FuzzParse: any body either parses into a request whose Body is a JSON
// object without broadcast_id and with at most one audience, or fails with
// an *event.InvalidError; nothing panics. Pacing the request works too.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"broadcast_id":7,"ids":["a","b"],"id_ignore_missing":true,"data":{"x":1}}`,
		`{"broadcast_id":1,"emails":["A@x.io"],"email_ignore_missing":true}`,
		`{"broadcast_id":2,"per_user_data":[{"id":"a","data":{}}]}`,
		`{"broadcast_id":3,"data_file_url":"https://x.io/f.ndjson"}`,
		`{"broadcast_id":4,"recipients":{"segment":{"id":3}}}`,
		`{"broadcast_id":"5","ids":[1]}`, `{"broadcast_id":0}`, `{}`, `[]`, `nul`, "{\"broadcast_id\":1,\"ids\":[\"\xff\"]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := trigger.Parse(body)
		if err != nil {
			var ie *event.InvalidError
			if !errors.As(err, &ie) || ie.Reason == "" {
				t.Fatalf("Parse error %v is not an *event.InvalidError with a reason", err)
			}
			return
		}
		if req.BroadcastID <= 0 {
			t.Fatalf("accepted broadcast_id %d", req.BroadcastID)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(req.Body(), &m); err != nil {
			t.Fatalf("Body is not a JSON object: %v\n%s", err, req.Body())
		}
		if _, ok := m["broadcast_id"]; ok {
			t.Fatalf("Body carries broadcast_id: %s", req.Body())
		}
		audiences := 0
		for _, k := range []string{"ids", "emails", "per_user_data", "data_file_url", "recipients"} {
			if _, ok := m[k]; ok {
				audiences++
			}
		}
		if audiences != 1 {
			t.Fatalf("Body has %d audiences: %s", audiences, req.Body())
		}
		p, err := trigger.NewPacer[int](trigger.PacerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Add(req, 1); err != nil {
			t.Fatalf("Add: %v", err)
		}
		if got := p.Ready(time.Now()); len(got) != 1 || got[0].BroadcastID != req.BroadcastID {
			t.Fatalf("Ready released %d batches for one trigger", len(got))
		}
	})
}
