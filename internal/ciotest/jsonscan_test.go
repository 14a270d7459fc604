package ciotest

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzScan checks the hand-written scanners against encoding/json: on any
// valid UTF-8 JSON, eachMember and elements find exactly the members and elements
// the standard decoder finds, byte for byte.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, ` { "a" : 1 , "b":[true,false,null], "c":{"d":"}]\"\\"} } `,
		`{"batch":[{"type":"track","userId":-1.5e3,"event":"e"} ,{"x":"\u00e9"}]}`,
		`{"user\u0049d":"u","":""}`, `["a",1,{"b":[[]]},null]`, `"s"`, `12`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !utf8.Valid(data) || checkJSON(data) != nil {
			return // callers check both first
		}
		var wantObj map[string]json.RawMessage
		if json.Unmarshal(data, &wantObj) == nil && wantObj != nil {
			got := map[string]json.RawMessage{}
			err := eachMember(data, func(key []byte, v span) {
				got[string(key)] = data[v.start:v.end] // the last copy wins, as in encoding/json
			})
			if err != nil {
				t.Fatalf("eachMember(%q): %v", data, err)
			}
			if len(got) != len(wantObj) {
				t.Fatalf("eachMember(%q): %d members, want %d", data, len(got), len(wantObj))
			}
			for k, w := range wantObj {
				if !bytes.Equal(got[k], w) {
					t.Fatalf("eachMember(%q): %q is %q, want %q", data, k, got[k], w)
				}
			}
		} else if err := eachMember(data, func([]byte, span) {}); err != errNotObject {
			t.Fatalf("eachMember(%q) on a non-object: %v", data, err)
		}

		var wantArr []json.RawMessage
		if json.Unmarshal(data, &wantArr) == nil && wantArr != nil {
			got, err := elements(data)
			if err != nil || len(got) != len(wantArr) {
				t.Fatalf("elements(%q): %d, %v; want %d", data, len(got), err, len(wantArr))
			}
			for i, w := range wantArr {
				if g := data[got[i].start:got[i].end]; !bytes.Equal(g, w) {
					t.Fatalf("elements(%q)[%d] is %q, want %q", data, i, g, w)
				}
			}
		} else if _, err := elements(data); err != errNotArray {
			t.Fatalf("elements(%q) on a non-array: %v", data, err)
		}
	})
}
