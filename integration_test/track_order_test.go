package integration_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// TestSuppressionsKeepStreamOrderPerIdentifier publishes alternating
// suppress and unsuppress messages for a few identifiers to two workers
// sharing the suppression consumer (4 and 2 senders; one retries in place,
// the other naks at once), while the
// stand-in answers some requests 503 or 429. Whatever the retries, naks
// and replicas do, Customer.io must see each identifier's actions in the
// order they were published, each applied once, so the person's final state
// is the last action published: a suppression overtaken by an older
// unsuppress would leave someone who asked to be forgotten re-addable, or
// the reverse.
func TestSuppressionsKeepStreamOrderPerIdentifier(t *testing.T) {
	var mu sync.Mutex
	perPath := map[string]int{} // requests so far per identifier and action
	e := newEnv(t, ciotest.Options{SiteID: "site-1", TrackKey: "track-key", Fault: func(r *ciotest.Request) *ciotest.Fault {
		if !strings.HasPrefix(r.Path, "/api/v1/customers/") && !strings.HasPrefix(r.Path, "/unsubscribe/") {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		perPath[r.Path]++
		// Roughly one request in three fails on its first try, the
		// identifier's and action's own count deciding, so a retry can
		// pass while a younger message of the same identifier is ready.
		switch n := perPath[r.Path]; {
		case n%5 == 1 && strings.Contains(r.Path, "id-1"), n%4 == 2:
			return &ciotest.Fault{Status: 503, Delay: 5 * time.Millisecond}
		case n%7 == 3:
			return &ciotest.Fault{Status: 429, RetryAfter: "0"}
		}
		return nil
	}})
	newTrack := func() *sink.Track {
		tr, err := sink.NewTrack(sink.TrackOptions{URL: e.cio.TrackURL(), SiteID: "site-1", APIKey: func() string { return "track-key" },
			UserAgent: "test", Client: sink.NewHTTPClient(4, 5*time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	// One worker retries in place; the other naks at once on a failure, so
	// the message goes back to JetStream while younger ones wait.
	for _, w := range []struct {
		conc    int
		noRetry bool
	}{{4, false}, {2, true}} {
		opts := fastOptions()
		tr := newTrack()
		opts.Track, opts.Delivery = tr, tr // with credentials for unsubscribes too: harmless
		opts.DirectConcurrency = w.conc
		opts.NoRetry = w.noRetry
		e.runWorker(t, opts, 0)
	}

	ids := []string{"id-1@x.io", "id-2", "id-3+tag@x.io", "cio_id4"}
	const rounds = 12
	want := map[string][]string{}
	var msgs []published
	for r := range rounds {
		for i, id := range ids {
			action := "suppress"
			if (r+i)%2 == 1 {
				action = "unsuppress"
			}
			body, _ := json.Marshal(map[string]string{"identifier": id})
			subject := worker.SubjectSuppress
			if action == "unsuppress" {
				subject = worker.SubjectUnsuppress
			}
			msgs = append(msgs, published{subject: subject, body: body, valid: true})
			want[id] = append(want[id], action)
		}
	}
	// Unsubscribes and re-subscribes of one delivery are ordered alike.
	deliveries := []string{"dlv-A", "dlv-B"}
	for r := range rounds {
		for i, d := range deliveries {
			unsub := (r+i)%2 == 0
			msgs = append(msgs, published{subject: worker.SubjectUnsubscribe,
				body: fmt.Appendf(nil, `{"delivery_id":%q,"unsubscribe":%t}`, d, unsub), valid: true})
			want[d] = append(want[d], fmt.Sprint(unsub))
		}
	}
	e.publishAll(t, msgs)
	e.waitConsumerSettled(t, "cio-relay-suppress")
	e.waitConsumerSettled(t, "cio-relay-unsubscribe")

	got := map[string][]string{}
	for _, s := range e.cio.Suppressions() {
		got[s.Identifier] = append(got[s.Identifier], s.Action)
	}
	for _, u := range e.cio.Unsubscribes() {
		got[u.DeliveryID] = append(got[u.DeliveryID], fmt.Sprint(u.Unsubscribe))
	}
	ids = append(ids, deliveries...)
	faults := 0
	for _, r := range e.cio.Requests() {
		if r.Outcome == ciotest.OutcomeFault {
			faults++
		}
	}
	inverted, wrongFinal := 0, 0
	for _, id := range ids {
		if !slices.Equal(got[id], want[id]) {
			inverted++
			t.Errorf("%s: Customer.io saw %v, want the published order %v", id, got[id], want[id])
		}
		if g := got[id]; len(g) == 0 || g[len(g)-1] != want[id][len(want[id])-1] {
			wrongFinal++
		}
	}
	t.Logf("%d identifiers and %d delivery ids × %d alternations, 2 workers, %d requests answered 503/429: "+
		"%d keys out of stream order, %d with the wrong final state", len(ids)-len(deliveries), len(deliveries), rounds, faults, inverted, wrongFinal)
	if _, n := dlqReasons(t, e); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
}

// TestSuppressionHeldByAKilledReplicaStaysFirst: a cio-relay process is
// killed (SIGKILL) while its suppress request for an identifier is in
// flight; the unsuppress published next must not reach Customer.io before
// the suppress does, although another worker could take it at once, long
// before the killed one's ack wait ends. The identifier must end
// unsuppressed, as published.
func TestSuppressionHeldByAKilledReplicaStaysFirst(t *testing.T) {
	var inFlight atomic.Int32
	e := newEnv(t, ciotest.Options{SiteID: "site-1", TrackKey: "track-key", Fault: func(r *ciotest.Request) *ciotest.Fault {
		if strings.HasSuffix(r.Path, "/suppress") && inFlight.Add(1) == 1 {
			return &ciotest.Fault{Delay: time.Minute, Slow: true} // answered only if the client waits that long
		}
		return nil
	}})
	keyFile := filepath.Join(t.TempDir(), "cdp-api-key")
	writeFileAtomic(t, keyFile, cdpKey+"\n")
	const ackWait = 5 * time.Second
	p := startRelay(t, "holder", relayEnv(e.nats.URL(), e.cio.CDPURL(), keyFile, map[string]string{
		"CIO_TRACK_URL": e.cio.TrackURL(), "CIO_SITE_ID": "site-1", "CIO_TRACK_API_KEY": "track-key",
		"RELAY_ACK_WAIT": ackWait.String(),
	}))
	body := []byte(`{"identifier":"held@x.io"}`)
	e.publishAll(t, []published{{subject: worker.SubjectSuppress, body: body}})
	waitFor(t, 10*time.Second, "the suppress request in flight", func() bool { return inFlight.Load() == 1 })
	p.kill(t)
	// Published after the kill, so it waits in the stream for a live worker.
	e.publishAll(t, []published{{subject: worker.SubjectUnsuppress, body: body}})

	tr, err := sink.NewTrack(sink.TrackOptions{URL: e.cio.TrackURL(), SiteID: "site-1", APIKey: func() string { return "track-key" },
		UserAgent: "test", Client: sink.NewHTTPClient(2, 5*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	opts := fastOptions()
	opts.Track, opts.AckWait = tr, ackWait
	e.runWorker(t, opts, 0)
	e.waitConsumerSettled(t, "cio-relay-suppress")

	var got []string
	for _, s := range e.cio.Suppressions() {
		got = append(got, s.Action)
	}
	t.Logf("Customer.io applied %v after the holder was killed", got)
	if !slices.Equal(got, []string{"suppress", "unsuppress"}) {
		t.Errorf("Customer.io applied %v, want [suppress unsuppress]: the identifier must end unsuppressed", got)
	}
}
