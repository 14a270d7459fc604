package dlqcli

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTwoOperatorsReplayingAtOnceSendEachLetterOnce: operator A runs a
// slow replay (--rate), so its walk holds letters it has fetched for
// longer than the target stream's duplicate window; meanwhile operator B
// runs a replay of the same letters and finishes it. When A reaches a
// letter B has replayed and deleted, it must not publish it again: the
// duplicate window has passed, so the publish would be stored as a second
// message (a CDP call with a new derived messageId, or a trigger that
// messages its audience twice).
func TestTwoOperatorsReplayingAtOnceSendEachLetterOnce(t *testing.T) {
	const n = 5
	f := newBareFixture(t, 100*time.Millisecond)
	for i := range n {
		f.putDead(t, i, dead{"cio.track", "retries_exhausted", 503, `{"userId":"u-` + strconv.Itoa(i+1) + `","event":"E"}`, time.Minute})
	}
	// A has fetched all n letters when it publishes the first; there B
	// replays everything and A's letters wait past the duplicate window.
	var bRan bool
	hook := func(seq uint64) error {
		if seq != 1 || bRan {
			return nil
		}
		bRan = true
		code, out, _ := f.run(t, t.Context(), Env{}, "replay")
		// B finds A's replay of letter 1 by its intent, and replays the rest.
		if code != 0 || !strings.Contains(out, "replayed "+strconv.Itoa(n)+" (1 already in CIO)") {
			t.Errorf("operator B: exit code %d, summary %q; want 0, all %d, one of them found already published by A", code, out, n)
		}
		f.awaitDuplicateWindow(t)
		return nil
	}
	code, out, _ := f.run(t, t.Context(), Env{afterPublish: hook}, "replay")
	if !bRan {
		t.Fatal("operator B never ran")
	}
	replays := replaysIn(t, f.cio)
	twice := 0
	for seq := uint64(1); seq <= n; seq++ {
		if len(replays[seq]) > 1 {
			twice++
		}
		if len(replays[seq]) == 0 {
			t.Errorf("dead letter %d never replayed", seq)
		}
	}
	t.Logf("operator A: exit code %d, %q; %d of %d letters replayed more than once", code, out, twice, n)
	if twice != 0 {
		t.Errorf("%d of %d dead letters replayed twice; want each once", twice, n)
	}
	if !strings.Contains(out, "skipped "+strconv.Itoa(n)) {
		t.Errorf("operator A's summary %q; want all %d skipped, as B deleted them", out, n)
	}
	if got := dlqSeqs(t, f.dlq); len(got) != 0 {
		t.Errorf("left in CIO_DLQ: %v; want nothing", got)
	}
}
