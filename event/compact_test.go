package event

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

var compactSeeds = []string{
	`{}`, `[]`, ` { "a" : [ 1 , -2.5e+3 , true , false , null , "x\"\\\/\b\f\n\r\t\u00e9" ] } `,
	`{"a":{}}`, `{"a":[]}`, `[[],[{}]]`, `"s"`, `0`, `-0`, `01`, `1.`, `1e`, `.5`, `-`, `tru`, `nul`, `{"a"}`,
	`{"a":1,}`, `[1,]`, `{,}`, `{"a":1 "b":2}`, "\"\x01\"", `"\u12"`, `"\x"`, `{"a":1}}`, `{"a":1} x`, ``, ` `,
	`{"userId":"u-1","event":"Signed Up","properties":{"plan":"pro"}}`, `[1e5, 2E-3, 0.0]`, "{\"k\":\n\t\"v\"\r}",
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001), strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	`"\ud800"`, `{"a":"é"}`, `nulll`, `truefalse`,
	`{"userId":"u","userId":"v"}`, `{"user\u0049d":1,"traits" : { "a" : [1, 2] } ,"event":"e"}`, "{\"a\":\"\xff\"}",
	"\"\xe2\x82\"", `{"a":"0123456789abcdef\"é0123456789abcdef"}`, "{\"a\":\"0123456789\x1f\"}",
}

func checkCompact(t *testing.T, in []byte) {
	got, err := appendCompact([]byte("prefix"), in)
	var want bytes.Buffer
	wantErr := json.Compact(&want, in)
	if !utf8.Valid(in) {
		// encoding/json lets invalid UTF-8 through; compact refuses it.
		wantErr = errUTF8
	}
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("%q: err %v, want %v", in, err, wantErr)
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
	checkSpans(t, in, want.Bytes())
}

// checkSpans checks the field values compact records for in against
// encoding/json's reading of its top-level members, and that compact
// returns in itself, copying nothing, when in was compact already.
func checkSpans(t *testing.T, in, want []byte) {
	var sp spans
	c, buf, err := compact(nil, in, &sp)
	if err != nil || !bytes.Equal(c, want) {
		t.Fatalf("%q: compact = %q, %v; want %q", in, c, err, want)
	}
	if trimmed := bytes.TrimSpace(in); bytes.Equal(trimmed, want) && (len(buf) != 0 || &c[0] != &trimmed[0]) {
		t.Fatalf("%q: compact copied a body that was compact already", in)
	}
	if want[0] != '{' {
		return
	}
	members := map[string]int{}
	dec := json.NewDecoder(bytes.NewReader(want))
	depth, expectKey, key := 0, false, ""
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
				key = v
				members[key]++
				expectKey = false
				continue
			}
		}
		if depth == 1 {
			expectKey = true
		}
	}
	var values map[string]json.RawMessage // the last value of a key wins
	if err := json.Unmarshal(want, &values); err != nil {
		t.Fatal(err)
	}
	wantDup := noField
	for f := range numFields {
		name := fieldNames[f]
		seen := sp.set&(1<<f) != 0
		if seen != (members[name] > 0) {
			t.Fatalf("%q: %s seen %v, encoding/json reads it %d times", in, name, seen, members[name])
		}
		if members[name] > 1 {
			wantDup = f // checked below: one of them
			continue
		}
		if seen {
			if v := c[sp.at[f][0]:sp.at[f][1]]; !bytes.Equal(v, values[name]) {
				t.Fatalf("%q: %s = %q, encoding/json reads %q", in, name, v, values[name])
			}
		}
	}
	if (sp.dup == noField) != (wantDup == noField) || (sp.dup != noField && members[fieldNames[sp.dup]] < 2) {
		t.Fatalf("%q: duplicate field %v, want one of those seen twice", in, sp.dup)
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

// TestStopMask checks the eight-byte test against the byte table: for
// words of random bytes and words with one chosen byte among plain ones,
// the lowest flag must fall on the first byte strStop marks.
func TestStopMask(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	check := func(w [8]byte) {
		want := 8
		for k, c := range w {
			if strStop[c] {
				want = k
				break
			}
		}
		got := 8
		if m := stopMask(binary.LittleEndian.Uint64(w[:])); m != 0 {
			got = bits.TrailingZeros64(m) >> 3
		}
		if got != want {
			t.Fatalf("% x: first stop byte at %d, stopMask says %d", w, want, got)
		}
	}
	for c := range 256 {
		for k := range 8 {
			w := [8]byte{'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'}
			w[k] = byte(c)
			check(w)
			for range 50 {
				for j := k + 1; j < 8; j++ {
					w[j] = byte(r.Uint32())
				}
				check(w)
			}
		}
	}
	for range 200000 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		check(w)
	}
}
