package event

import (
	"strings"
	"testing"
	"time"
)

func TestIsDateTime(t *testing.T) {
	tests := []struct {
		s    string
		want bool
	}{
		{"2026-11-29T01:02:03Z", true},
		{"2026-11-29T01:02:03.456Z", true},
		{"2026-11-29T01:02:03.4Z", true},
		{"2026-11-29T01:02:03.123456789123Z", true},
		{"2026-11-29T01:02:03+01:00", true},
		{"2026-11-29T01:02:03.5-07:30", true},
		{"2026-11-29T01:02:03-00:00", true},
		{"2026-11-29T23:59:59+23:59", true},
		{"2024-02-29T00:00:00Z", true},
		{"2000-02-29T00:00:00Z", true},
		{"0000-01-01T00:00:00Z", true},
		{"9999-12-31T23:59:59Z", true},
		{"2026-04-30T00:00:00Z", true},

		{"", false},
		{"2026-11-29", false},                // a date only
		{"2026-11-29T01:02:03", false},       // no time zone
		{"2026-11-29T01:02:03.456", false},   // no time zone
		{"2026-11-29 01:02:03Z", false},      // space for T
		{"2026-11-29t01:02:03Z", false},      // lower-case t
		{"2026-11-29T01:02:03z", false},      // lower-case z
		{"2026-11-29T01:02:03,456Z", false},  // ISO 8601's comma
		{"2026-11-29T01:02:03.Z", false},     // empty fraction
		{"2026-11-29T01:02:03+0100", false},  // offset without colon
		{"2026-11-29T01:02:03+01", false},    // offset without minutes
		{"2026-11-29T01:02:03+24:00", false}, // offset hour
		{"2026-11-29T01:02:03+01:60", false}, // offset minute
		{"2026-11-29T01:02:03ZZ", false},     // trailing
		{"2026-11-29T01:02:03Z ", false},     // trailing space
		{" 2026-11-29T01:02:03Z", false},     // leading space
		{"2026-13-01T00:00:00Z", false},      // month 13
		{"2026-00-01T00:00:00Z", false},      // month 0
		{"2026-01-00T00:00:00Z", false},      // day 0
		{"2026-02-29T00:00:00Z", false},      // not a leap year
		{"1900-02-29T00:00:00Z", false},      // a century, not a leap year
		{"2026-04-31T00:00:00Z", false},      // April has 30 days
		{"2026-01-32T00:00:00Z", false},      // day 32
		{"2026-01-01T24:00:00Z", false},      // hour 24
		{"2026-01-01T00:60:00Z", false},      // minute 60
		{"2026-12-31T23:59:60Z", false},      // leap second
		{"2026-1-01T00:00:00Z", false},       // one-digit month
		{"+2026-01-01T00:00:00Z", false},     // signed year
		{"12026-01-01T00:00:00Z", false},     // five-digit year
		{"2026/01/01T00:00:00Z", false},      // slashes
		{"1764624546", false},                // unix seconds as text
		{"2026-11-29T01:02:03.45a6Z", false}, // junk in the fraction
		{"2026-11-29T01:02:0３Z", false},      // a non-ASCII digit
		{"Sun, 29 Nov 2026 01:02:03 GMT", false},
	}
	for _, tt := range tests {
		if got := isDateTime(tt.s); got != tt.want {
			t.Errorf("isDateTime(%q) = %v, want %v", tt.s, got, tt.want)
		}
		if got := isDateTime([]byte(tt.s)); got != tt.want {
			t.Errorf("isDateTime([]byte(%q)) = %v, want %v", tt.s, got, tt.want)
		}
	}
}

// checkDateTime compares isDateTime with Go's RFC 3339 parser, which
// accepts the same language plus a ',' fraction, offsets up to ±99:99 and
// a one-digit hour.
func checkDateTime(t *testing.T, s string) {
	got := isDateTime(s)
	_, err := time.Parse(time.RFC3339, s)
	switch {
	case got && err != nil:
		t.Fatalf("isDateTime(%q) = true; time.Parse: %v", s, err)
	case !got && err == nil && !strings.Contains(s, ",") && !wideOffset(s) && s[13] == ':':
		t.Fatalf("isDateTime(%q) = false; time.Parse accepts it", s)
	}
}

// wideOffset reports whether s ends in an offset beyond ±23:59.
func wideOffset(s string) bool {
	if len(s) < 6 || (s[len(s)-6] != '+' && s[len(s)-6] != '-') {
		return false
	}
	o := s[len(s)-5:]
	return o[0] > '2' || (o[0] == '2' && o[1] > '3') || o[3] > '5'
}

func FuzzIsDateTime(f *testing.F) {
	for _, s := range []string{"2026-11-29T01:02:03Z", "2026-11-29T01:02:03.456+01:00", "2024-02-29T23:59:59-23:59",
		"2026-02-29T00:00:00Z", "2026-11-29T01:02:03,5Z", "2026-11-29T01:02:03+24:00"} {
		f.Add(s)
	}
	f.Fuzz(checkDateTime)
}

func TestAppendTimestamp(t *testing.T) {
	tests := []time.Time{
		time.Date(2026, 11, 29, 1, 2, 3, 456_789_012, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 999_999_999, time.UTC), // truncated, not rounded into 2027
		time.Date(2026, 6, 1, 2, 0, 0, 1_000_000, time.FixedZone("CEST", 2*3600)),
		time.Date(2024, 2, 29, 12, 0, 0, 10_000_000, time.FixedZone("", -9*3600-30*60)),
		time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Unix(0, 1764624546123456789),
	}
	for _, ts := range tests {
		want := ts.UTC().AppendFormat([]byte("x"), timestampLayout)
		got := appendTimestamp([]byte("x"), ts)
		if string(got) != string(want) {
			t.Errorf("appendTimestamp(%v) = %s, want %s", ts, got, want)
		}
		if len(got)-1 != timestampLen || !isDateTime(got[1:]) {
			t.Errorf("appendTimestamp(%v) = %s: not a %d-byte RFC 3339 date-time", ts, got, timestampLen)
		}
	}
	for _, ts := range []time.Time{{}, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if canStamp(ts) {
			t.Errorf("canStamp(%v) = true", ts)
		}
	}
}

func FuzzAppendTimestamp(f *testing.F) {
	f.Add(int64(1764624546123456789))
	f.Add(int64(0))
	f.Fuzz(func(t *testing.T, ns int64) {
		ts := time.Unix(0, ns)
		if !canStamp(ts) {
			return
		}
		want := ts.UTC().AppendFormat(nil, timestampLayout)
		if got := appendTimestamp(nil, ts); string(got) != string(want) {
			t.Fatalf("appendTimestamp(%d) = %s, want %s", ns, got, want)
		}
	})
}

func BenchmarkAppendTimestamp(b *testing.B) {
	ts := time.Unix(0, 1764624546123456789)
	dst := make([]byte, 0, 64)
	b.Run("hand-rolled", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			dst = appendTimestamp(dst[:0], ts)
		}
	})
	b.Run("AppendFormat", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			dst = ts.UTC().AppendFormat(dst[:0], timestampLayout)
		}
	})
}
