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
	f.putExhausted(t, n)
	code, out := replayWhileAnotherRuns(t, f, func() {
		code, out, _ := f.run(t, t.Context(), Env{}, "replay")
		// B finds A's replay of letter 1 by its intent, and replays the rest.
		if code != 0 || !strings.Contains(out, "replayed "+strconv.Itoa(n)+" (1 already in CIO)") {
			t.Errorf("operator B: exit code %d, summary %q; want 0, all %d, one of them found already published by A", code, out, n)
		}
	})
	twice := replayedTwice(t, f, n)
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

// TestReplayKeepsAmbiguousTriggersUnlessAsked: a trigger dead-lettered as
// ambiguous may have reached Customer.io and messaged its audience; a
// replay sends it again. A plain `dlq replay` (the command an operator
// types after an outage, or a CronJob someone wrote without
// --exclude-subject) must keep those and say why, naming `dlq resolve`,
// which checks the broadcast's triggers first; without a terminal to ask
// on, only --force replays them unchecked.
func TestReplayKeepsAmbiguousTriggersUnlessAsked(t *testing.T) {
	f := newBareFixture(t, 2*time.Minute)
	f.putDead(t, 0, dead{"cio.broadcast", "ambiguous", 0, `{"broadcast_id":7,"ids":["u-1"]}`, time.Minute})
	f.putDead(t, 1, dead{"cio.broadcast", "retries_exhausted", 429, `{"broadcast_id":7,"ids":["u-2"]}`, time.Minute})
	f.putDead(t, 2, dead{"cio.track", "retries_exhausted", 503, `{"userId":"u-3","event":"E"}`, time.Minute})

	code, out, errOut := f.run(t, t.Context(), Env{}, "replay")
	replays := replaysIn(t, f.cio)
	if len(replays[1]) != 0 {
		t.Errorf("plain replay: the ambiguous trigger was published %d times; want kept", len(replays[1]))
	}
	if len(replays[2]) != 1 || len(replays[3]) != 1 {
		t.Errorf("plain replay: the others replayed %d and %d times; want once each", len(replays[2]), len(replays[3]))
	}
	if code != 0 || !strings.Contains(out, "replayed 2") || !strings.Contains(out, "kept 1") {
		t.Errorf("plain replay: exit code %d, summary %q; want 0, 2 replayed, 1 kept", code, out)
	}
	if !strings.Contains(errOut, "seq 1: kept") || !strings.Contains(errOut, "dlq resolve 1") {
		t.Errorf("plain replay: stderr %q does not say why seq 1 was kept and how to replay it", errOut)
	}

	// Naming the reason is not checking it: without a terminal to ask on,
	// only --force replays it unchecked (dlq resolve checks it first).
	code, out, _ = f.run(t, t.Context(), Env{}, "replay", "--reason", "ambiguous")
	if code != 0 || !strings.Contains(out, "kept 1") || len(replaysIn(t, f.cio)[1]) != 0 {
		t.Errorf("--reason ambiguous: exit code %d, summary %q; want the trigger kept", code, out)
	}
	code, out, _ = f.run(t, t.Context(), Env{}, "replay", "--reason", "ambiguous", "--force")
	if code != 0 || !strings.Contains(out, "replayed 1") || len(replaysIn(t, f.cio)[1]) != 1 {
		t.Errorf("--reason ambiguous --force: exit code %d, summary %q; want the trigger replayed once", code, out)
	}
}

// TestReplayFindsAnIntentWrittenAfterItStarted: operator A's slow replay
// holds letters past the duplicate window; meanwhile operator B's replay
// publishes one of them and dies before deleting it, leaving its intent.
// When A reaches that letter it is still there, but its replay is already
// in CIO: A must find it by B's intent, written after A started, and not
// publish it a second time.
func TestReplayFindsAnIntentWrittenAfterItStarted(t *testing.T) {
	const n, k = 4, 2
	f := newBareFixture(t, 100*time.Millisecond)
	f.putExhausted(t, n)
	code, out := replayWhileAnotherRuns(t, f, func() {
		// B finds A's replay of letter 1 by its intent, then dies after
		// publishing letter k.
		if code, _, _ := f.run(t, t.Context(), Env{afterPublish: crashAt(k)}, "replay"); code != 1 {
			t.Errorf("operator B: exit code %d; want 1, the crash", code)
		}
	})
	twice := replayedTwice(t, f, n)
	t.Logf("operator A: exit code %d, %q; %d of %d letters replayed more than once", code, out, twice, n)
	if twice != 0 {
		t.Errorf("%d of %d dead letters replayed twice; want each once", twice, n)
	}
	if got := dlqSeqs(t, f.dlq); len(got) != 0 {
		t.Errorf("left in CIO_DLQ: %v; want nothing", got)
	}
	if got := intentsIn(t, f.dlq); len(got) != 0 {
		t.Errorf("replay intents left: %v", got)
	}
}

// replayedTwice returns how many of dead letters 1 to n are in CIO more
// than once, failing the test for one that is not there at all.
func replayedTwice(t *testing.T, f *fixture, n uint64) int {
	t.Helper()
	replays := replaysIn(t, f.cio)
	twice := 0
	for seq := uint64(1); seq <= n; seq++ {
		switch len(replays[seq]) {
		case 0:
			t.Errorf("dead letter %d never replayed", seq)
		case 1:
		default:
			twice++
		}
	}
	return twice
}

// replayWhileAnotherRuns runs operator A's `dlq replay`, and other (operator
// B) when A has published letter 1 and holds the rest it has fetched;
// then A waits out the duplicate window before going on, as a slow --rate
// would. It returns A's exit code and summary.
func replayWhileAnotherRuns(t *testing.T, f *fixture, other func()) (int, string) {
	t.Helper()
	ran := false
	hook := func(seq uint64) error {
		if seq != 1 || ran {
			return nil
		}
		ran = true
		other()
		f.awaitDuplicateWindow(t)
		return nil
	}
	code, out, _ := f.run(t, t.Context(), Env{afterPublish: hook}, "replay")
	if !ran {
		t.Fatal("operator B never ran")
	}
	return code, out
}
