package event

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

var compactSeeds = []string{
	`{}`, `[]`, ` { "a" : [ 1 , -2.5e+3 , true , false , null , "x\"\\\/\b\f\n\r\t\u00e9" ] } `,
	`{"a":{}}`, `{"a":[]}`, `[[],[{}]]`, `"s"`, `0`, `-0`, `01`, `1.`, `1e`, `.5`, `-`, `tru`, `nul`, `{"a"}`,
	`{"a":1,}`, `[1,]`, `{,}`, `{"a":1 "b":2}`, "\"\x01\"", `"\u12"`, `"\x"`, `{"a":1}}`, `{"a":1} x`, ``, ` `,
	`{"userId":"u-1","event":"Signed Up","properties":{"plan":"pro"}}`, `[1e5, 2E-3, 0.0]`, "{\"k\":\n\t\"v\"\r}",
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001), strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	`"\ud800"`, `{"a":"é"}`, `nulll`, `truefalse`,
}

func checkCompact(t *testing.T, in []byte) {
	got, err := appendCompact([]byte("prefix"), in)
	var want bytes.Buffer
	wantErr := json.Compact(&want, in)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("%q: err %v, encoding/json %v", in, err, wantErr)
	}
	if err != nil {
		if string(got) != "prefix" {
			t.Fatalf("%q: dst changed on error: %q", in, got)
		}
		return
	}
	if string(got) != "prefix"+want.String() {
		t.Fatalf("%q: got %q, want %q", in, got, want.String())
	}
	checkMembers(t, want.Bytes())
}

// checkMembers checks the member offsets appendCompactMembers records for
// c, a compacted JSON value, against encoding/json's reading of its
// top-level keys.
func checkMembers(t *testing.T, c []byte) {
	var members []int32
	out, err := appendCompactMembers(nil, c, &members)
	if err != nil || !bytes.Equal(out, c) {
		t.Fatalf("%q: appendCompactMembers = %q, %v", c, out, err)
	}
	var keys []string
	if c[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(c))
		dec.UseNumber()
		depth, expectKey := 0, false
		for {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			switch v := tok.(type) {
			case json.Delim:
				if v == '{' || v == '[' {
					depth++
					expectKey = depth == 1 && v == '{'
				} else {
					depth--
					expectKey = depth == 1
				}
				continue
			case string:
				if depth == 1 && expectKey {
					keys = append(keys, v)
					expectKey = false
					continue
				}
			}
			if depth == 1 {
				expectKey = true
			}
		}
	}
	if len(members) != len(keys) {
		t.Fatalf("%q: %d members recorded, encoding/json reads %d keys %q", c, len(members), len(keys), keys)
	}
	for i, off := range members {
		var k string
		if err := json.Unmarshal(c[off:endOfString(c, int(off))], &k); err != nil || k != keys[i] {
			t.Fatalf("%q: member %d at %d reads %q (%v), want key %q", c, i, off, k, err, keys[i])
		}
	}
}

func TestAppendCompactMatchesEncodingJSON(t *testing.T) {
	for _, s := range compactSeeds {
		checkCompact(t, []byte(s))
	}
}

func FuzzAppendCompact(f *testing.F) {
	for _, s := range compactSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) { checkCompact(t, in) })
}

var benchBody = []byte(`{"userId":"user-123456","event":"Order Completed","properties":{"orderId":"o-98765","total":129.95,"currency":"EUR","products":[{"sku":"A-1","name":"Tea <green> & honey","qty":2},{"sku":"B-2","name":"Mug","qty":1}],"note":"` + strings.Repeat("lorem ipsum dolor sit amet ", 40) + `"},"context":{"ip":"203.0.113.9","library":{"name":"analytics-go","version":"3.3.0"}},"timestamp":"2026-11-29T01:02:03Z"}`)

func BenchmarkCompactEncodingJSON(b *testing.B) {
	var buf bytes.Buffer
	b.SetBytes(int64(len(benchBody)))
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := json.Compact(&buf, benchBody); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompactOnePass(b *testing.B) {
	dst := make([]byte, 0, 4096)
	b.SetBytes(int64(len(benchBody)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = appendCompact(dst[:0], benchBody); err != nil {
			b.Fatal(err)
		}
	}
}
