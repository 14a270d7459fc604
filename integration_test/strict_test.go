package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
)

// refusedMarker marks a call that passes every check cio-relay makes but
// that Customer.io's own validation refuses (the stand-in's Options.Rule):
// a rule of the workspace the relay cannot know in advance.
const refusedMarker = `"customerio_refuses":true`

const refusedReason = "property customerio_refuses is not allowed in this workspace"

// strictCorpus is valid calls and, among them, calls only Customer.io
// refuses.
func strictCorpus(valid, refused int) []published {
	r := rand.New(rand.NewPCG(61, 67))
	var msgs []published
	every := valid / refused
	for i := range valid + refused {
		if i%(every+1) == every && len(msgs)-valid < refused {
			id := fmt.Sprintf("refused-%03d", i)
			body := fmt.Sprintf(`{"type":"track","messageId":%q,"userId":"u-%d","event":"Order Placed","properties":{"total":12.5,%s}}`, id, i, refusedMarker)
			msgs = append(msgs, published{subject: "cio.track", body: []byte(body), key: id, valid: false})
			continue
		}
		id := fmt.Sprintf("valid-%03d", i)
		typ := mix(r)
		msgs = append(msgs, published{subject: typ.Subject(), body: makeCall(r, typ, id, 200+r.IntN(800), true), key: id, valid: true})
	}
	return msgs
}

func refusingCustomerIO() ciotest.Options {
	return ciotest.Options{Rule: func(c ciotest.Call) error {
		if bytes.Contains(c.Raw, []byte(refusedMarker)) {
			return errors.New(refusedReason)
		}
		return nil
	}}
}

// TestStrictModeKeepsCustomerIOsRejections publishes valid calls and calls
// that only Customer.io's own validation refuses. Customer.io answers such
// a call with 200 and drops it unless the request carries X-Strict-Mode: 1.
// By default every valid call must be delivered exactly once and every
// refused one dead-lettered as rejected with Customer.io's error text, none
// silently dropped. With strict mode off (RELAY_CDP_STRICT=false) the
// refused calls are acked and lost: the test counts them, the loss the
// default prevents.
func TestStrictModeKeepsCustomerIOsRejections(t *testing.T) {
	const valid, refused = 200, 10
	msgs := strictCorpus(valid, refused)

	t.Run("default", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, refusingCustomerIO())
		_, reg := e.runWorker(t, fastOptions(), 0)
		e.publishAll(t, msgs)

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := e.cio.WaitDelivered(ctx, valid); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "every message settled or the refused ones dead-lettered", func() bool {
			info := consumerInfo(t, e.js)
			return info.NumPending == 0 && info.NumAckPending == 0
		})
		st := e.cio.Stats()
		dead := readDLQ(t, e.js)
		t.Logf("strict (default): %d of %d valid delivered, %d of %d refused dead-lettered, %d silently dropped, %d requests (%v)",
			st.CallsAccepted, valid, len(dead), refused, st.CallsDroppedInvalid, st.Requests, st.ByStatus)
		seen := map[string]int{}
		for _, c := range e.cio.Delivered() {
			seen[c.MessageID]++
		}
		checkExactlyOnce(t, msgs, seen)
		if st.CallsDroppedInvalid != 0 || st.RequestsDroppedInvalid != 0 {
			t.Errorf("Customer.io silently dropped %d calls (%d requests), want none", st.CallsDroppedInvalid, st.RequestsDroppedInvalid)
		}
		for _, r := range e.cio.Requests() {
			if r.API == ciotest.APICDP && r.Header.Get(ciotest.StrictModeHeader) != "1" {
				t.Fatalf("a CDP request without %s: 1 (%q)", ciotest.StrictModeHeader, r.Header.Get(ciotest.StrictModeHeader))
			}
		}
		byKey := map[string]published{}
		for _, m := range msgs {
			byKey[m.key] = m
		}
		if len(dead) != refused {
			t.Errorf("%d dead letters, want the %d refused calls", len(dead), refused)
		}
		for _, d := range dead {
			var f struct{ MessageID string }
			_ = json.Unmarshal(d.Data, &f)
			m, ok := byKey[f.MessageID]
			switch {
			case !ok || m.valid:
				t.Errorf("dead letter for %q, which Customer.io accepts", f.MessageID)
			case d.Record.Reason != deadletter.ReasonRejected || d.Record.Status != 400:
				t.Errorf("%s dead-lettered as %s/%d, want rejected/400", f.MessageID, d.Record.Reason, d.Record.Status)
			case !strings.Contains(d.Header.Get("Cio-Relay-Error"), refusedReason):
				t.Errorf("%s: Cio-Relay-Error %q does not carry Customer.io's error %q", f.MessageID, d.Header.Get("Cio-Relay-Error"), refusedReason)
			case !bytes.Equal(d.Data, m.body):
				t.Errorf("%s: dead letter body differs from the published one", f.MessageID)
			}
		}
		if got := metricValue(t, reg, "cio_relay_dead_letters_total", "reason", "rejected"); got != refused {
			t.Errorf("cio_relay_dead_letters_total{reason=rejected} = %v, want %d", got, refused)
		}
	})

	t.Run("strict off", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, refusingCustomerIO())
		e.cdpOptions = func(o *sink.CDPOptions) { o.Permissive = true }
		e.runWorker(t, fastOptions(), 0)
		e.publishAll(t, msgs)

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := e.cio.WaitDelivered(ctx, valid); err != nil {
			t.Fatal(err)
		}
		waitSettled(t, e.js, 30*time.Second)
		st := e.cio.Stats()
		dead := streamMsgs(t, e.js, "CIO_DLQ")
		info := consumerInfo(t, e.js)
		t.Logf("strict off: %d of %d valid delivered, %d acked in all, %d dead-lettered, %d refused calls answered 200 and silently dropped",
			st.CallsAccepted, valid, info.AckFloor.Stream, dead, st.CallsDroppedInvalid)
		// The loss the default prevents: every refused call acked, gone,
		// with no dead letter and no error anywhere in the relay.
		if st.CallsDroppedInvalid != refused {
			t.Errorf("%d calls silently dropped, want all %d refused ones", st.CallsDroppedInvalid, refused)
		}
		if dead != 0 {
			t.Errorf("%d dead letters; with strict mode off the relay never hears of the refusals", dead)
		}
		for _, c := range e.cio.DroppedInvalid() {
			if !strings.HasPrefix(c.MessageID, "refused-") || c.Problem != refusedReason {
				t.Errorf("dropped %s (%q), want only refused calls", c.MessageID, c.Problem)
			}
		}
		for _, r := range e.cio.Requests() {
			if r.API == ciotest.APICDP && r.Header.Get(ciotest.StrictModeHeader) != "" {
				t.Fatalf("strict mode off, yet a request carried %s: %q", ciotest.StrictModeHeader, r.Header.Get(ciotest.StrictModeHeader))
			}
		}
	})
}

// TestStrictModeSetting runs the cio-relay binary with RELAY_CDP_STRICT at
// its default and set to false: the default sends X-Strict-Mode: 1 and
// dead-letters the call Customer.io refuses; false sends no header, warns
// at start what is lost, and the refused call is silently dropped.
func TestStrictModeSetting(t *testing.T) {
	for _, tt := range []struct {
		name    string
		extra   map[string]string
		header  string
		dead    uint64
		dropped int
	}{
		{name: "default", header: "1", dead: 1},
		{name: "off", extra: map[string]string{"RELAY_CDP_STRICT": "false"}, dropped: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, refusingCustomerIO())
			keyFile := filepath.Join(t.TempDir(), "cdp-api-key")
			writeFileAtomic(t, keyFile, cdpKey+"\n")
			p := startRelay(t, "strict-"+tt.name, relayEnv(e.nats.URL(), e.cio.CDPURL(), keyFile, tt.extra))
			rec := p.waitLog(t, 10*time.Second, "delivering to Customer.io")
			if strict, _ := rec["strict"].(bool); strict != (tt.header == "1") {
				t.Errorf("start log says strict=%v", rec["strict"])
			}
			warned := p.logs.count("CDP strict mode OFF") > 0
			if warned != (tt.header == "") {
				t.Errorf("warning that strict mode is off logged: %v", warned)
			}

			e.publishAll(t, []published{
				{subject: "cio.track", body: []byte(`{"messageId":"ok-1","userId":"u","event":"e"}`), key: "ok-1", valid: true},
				{subject: "cio.track", body: []byte(`{"messageId":"refused-1","userId":"u","event":"e","properties":{` + refusedMarker + `}}`), key: "refused-1"},
			})
			// Consumer info can lag the publish: wait for both calls to
			// have had their outcome first.
			waitFor(t, 30*time.Second, "both calls delivered, dropped or dead-lettered", func() bool {
				st := e.cio.Stats()
				return uint64(st.CallsAccepted+st.CallsDroppedInvalid)+streamMsgs(t, e.js, "CIO_DLQ") >= 2
			})
			waitSettled(t, e.js, 30*time.Second)
			for _, r := range e.cio.Requests() {
				if r.API == ciotest.APICDP && r.Header.Get(ciotest.StrictModeHeader) != tt.header {
					t.Errorf("request carried %s %q, want %q", ciotest.StrictModeHeader, r.Header.Get(ciotest.StrictModeHeader), tt.header)
				}
			}
			if d := e.cio.Delivered(); len(d) != 1 || d[0].MessageID != "ok-1" {
				t.Errorf("delivered %v, want ok-1 alone", d)
			}
			if n := streamMsgs(t, e.js, "CIO_DLQ"); n != tt.dead {
				t.Errorf("%d dead letters, want %d", n, tt.dead)
			}
			if n := e.cio.Stats().CallsDroppedInvalid; n != tt.dropped {
				t.Errorf("%d calls silently dropped, want %d", n, tt.dropped)
			}
			if code := p.stop(t, 15*time.Second); code != 0 {
				t.Errorf("cio-relay exited %d", code)
			}
		})
	}
}
