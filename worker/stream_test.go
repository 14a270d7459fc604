package worker

import (
	"regexp"
	"testing"
	"time"
)

// TestStreamRecreatedWithinASecondGetsNewIDPrefix: a stream deleted and
// created again restarts its sequences at 1, so the derived messageIds of
// the new incarnation must differ from the old one's even when both were
// created within the same second; otherwise Customer.io drops the new calls
// as duplicates of calls it has already seen.
func TestStreamRecreatedWithinASecondGetsNewIDPrefix(t *testing.T) {
	first := time.Date(2026, 12, 1, 21, 0, 0, 100_000_000, time.UTC)
	tests := []struct {
		name  string
		again time.Time
	}{
		{"same second", first.Add(400 * time.Millisecond)},
		{"one millisecond later", first.Add(time.Millisecond)},
		{"one microsecond later", first.Add(time.Microsecond)},
		{"next second", first.Add(time.Second)},
	}
	shape := regexp.MustCompile(`^CIO-[0-9a-z]+-$`)
	old := idPrefix("CIO", first)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := idPrefix("CIO", tt.again)
			if p == old {
				t.Errorf("stream created at %v and again at %v: both derive ids %q…", first, tt.again, p)
			}
			if !shape.MatchString(p) {
				t.Errorf("prefix %q is not {stream}-{base 36}-", p)
			}
		})
	}
	if p := idPrefix("CIO", first); p != old {
		t.Errorf("one stream incarnation derives %q and %q: a redelivery would not be de-duplicated", old, p)
	}
}
