package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
)

// TestWrongKeyPausesUntilRotated runs the cio-relay binary with a wrong
// Customer.io key read from a file, as a mounted Kubernetes secret would
// hold it. Delivery must pause — 401s, nothing dead-lettered, /readyz 503
// saying why, cio_relay_auth_paused 1 — and resume by itself, without a
// restart, once the right key is written to the file.
func TestWrongKeyPausesUntilRotated(t *testing.T) {
	const rightKey, wrongKey = "right-cdp-key-5d1f", "wrong-cdp-key-9a3c"
	e := newEnv(t, ciotest.Options{CDPKey: rightKey})
	keyFile := filepath.Join(t.TempDir(), "cdp-api-key")
	writeFileAtomic(t, keyFile, wrongKey+"\n")
	p := startRelay(t, "auth", relayEnv(e.nats.URL(), e.cio.CDPURL(), keyFile, nil))

	r := rand.New(rand.NewPCG(23, 29))
	var msgs []published
	for i := range 50 {
		id := fmt.Sprintf("auth-%02d", i)
		typ := mix(r)
		msgs = append(msgs, published{subject: typ.Subject(), body: makeCall(r, typ, id, 300+r.IntN(700), true), key: id, valid: true})
	}
	e.publishAll(t, msgs)

	// Probes every RELAY_RETRY_MAX_INTERVAL (100ms): a handful of 401s.
	waitFor(t, 30*time.Second, "401s from the stand-in", func() bool { return e.cio.Stats().ByStatus[401] >= 5 })
	waitFor(t, 10*time.Second, "/readyz to report the pause", func() bool {
		code, body := p.get(t, "/readyz")
		return code == 503 && strings.Contains(body, "paused")
	})
	code, body := p.get(t, "/readyz")
	if code != 503 || !strings.Contains(body, "401") {
		t.Errorf("/readyz = %d %q while paused, want 503 naming the 401", code, body)
	}
	if v, ok := p.metric(t, `cio_relay_auth_paused{api="cdp"}`); !ok || v != 1 {
		t.Errorf(`cio_relay_auth_paused{api="cdp"} = %v (present %v) while paused, want 1`, v, ok)
	}
	if n := streamMsgs(t, e.js, "CIO_DLQ"); n != 0 {
		t.Errorf("%d dead letters while the key is wrong, want none", n)
	}
	if n := len(e.cio.Delivered()); n != 0 {
		t.Errorf("%d calls delivered with the wrong key", n)
	}
	if st := e.cio.Stats(); st.Requests != st.ByStatus[401] {
		t.Errorf("while paused the stand-in answered %v; want only 401s", st.ByStatus)
	}
	if p.logs.count("delivery PAUSED") == 0 {
		t.Error("no PAUSED error in the log")
	}

	// Rotate the secret; the same process must pick it up.
	writeFileAtomic(t, keyFile, rightKey+"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.cio.WaitDelivered(ctx, len(msgs)); err != nil {
		t.Fatalf("after rotating the key: %v", err)
	}
	waitSettled(t, e.js, 20*time.Second)
	waitFor(t, 10*time.Second, "/readyz 200 after the rotation", func() bool {
		code, _ := p.get(t, "/readyz")
		return code == 200
	})
	if v, ok := p.metric(t, `cio_relay_auth_paused{api="cdp"}`); !ok || v != 0 {
		t.Errorf(`cio_relay_auth_paused{api="cdp"} = %v (present %v) after the rotation, want 0`, v, ok)
	}
	seen := map[string]int{}
	for _, c := range e.cio.Delivered() {
		seen[c.MessageID]++
	}
	for _, m := range msgs {
		if seen[m.key] != 1 {
			t.Errorf("call %s delivered %d times, want once", m.key, seen[m.key])
		}
	}
	if n := streamMsgs(t, e.js, "CIO_DLQ"); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
	if p.logs.count("delivery resumed") == 0 {
		t.Error(`no "delivery resumed" in the log`)
	}
	if p.logs.contains(wrongKey) || p.logs.contains(rightKey) {
		t.Error("an API key appears in the log")
	}
	if code := p.stop(t, 15*time.Second); code != 0 {
		t.Errorf("cio-relay exited %d after SIGTERM, want 0", code)
	}
}
