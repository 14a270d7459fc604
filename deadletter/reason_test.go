package deadletter_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cio-relay/cio-relay/deadletter"
)

// TestEveryReasonHasARunbookRow: README's table of dead-letter reasons has
// one row per reason, in the order of deadletter.Reasons, each saying what
// it means and what to do, so an operator who meets a reason in
// `dlq stats` finds it, and a new reason cannot ship undocumented.
func TestEveryReasonHasARunbookRow(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading = "| Reason | What it means | What to do |"
	_, table, ok := strings.Cut(string(readme), heading)
	if !ok {
		t.Fatalf("README has no table headed %q", heading)
	}
	row := regexp.MustCompile("^\\| `([a-z0-9_]+)` \\|([^|]*)\\|([^|]*)\\|$")
	var documented []deadletter.Reason
	for _, line := range strings.Split(table, "\n")[2:] { // after the heading's end and the |---| line
		if !strings.HasPrefix(line, "|") {
			break
		}
		m := row.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("row %q is not | `reason` | meaning | what to do |", line)
			continue
		}
		if strings.TrimSpace(m[2]) == "" || strings.TrimSpace(m[3]) == "" {
			t.Errorf("reason %s: meaning %q, what to do %q; want both", m[1], m[2], m[3])
		}
		documented = append(documented, deadletter.Reason(m[1]))
	}
	if want := deadletter.Reasons(); !slices.Equal(documented, want) {
		t.Errorf("README's reasons\n %v\nwant, in this order,\n %v", documented, want)
	}
}

// TestReasonsAreDistinct: a reason is an identifier; two with one value
// could not be told apart by an operator's filter.
func TestReasonsAreDistinct(t *testing.T) {
	seen := map[deadletter.Reason]bool{}
	for _, r := range deadletter.Reasons() {
		if seen[r] || r == "" || r.String() != string(r) {
			t.Errorf("reason %q repeated, empty or misprinted", r)
		}
		seen[r] = true
	}
}
