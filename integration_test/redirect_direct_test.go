package integration_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cio-relay/cio-relay/internal/ciotest"
	"github.com/cio-relay/cio-relay/sink"
	"github.com/cio-relay/cio-relay/worker"
)

// TestRedirectPausesDirectCalls is TestRedirectPausesDelivery for the
// direct calls: the App API (broadcast triggers) and the Track API
// (suppressions, unsubscribes, delivery metrics) answer every request with
// a redirect to a URL that answers 200 to anything. Nothing may reach the
// redirect target, nothing be dead-lettered (a trigger's "ambiguous"
// included: a 3xx says Customer.io did not act), both APIs show as paused;
// once the redirect is gone every call is sent exactly once.
func TestRedirectPausesDirectCalls(t *testing.T) {
	for _, status := range []int{302, 307} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			var redirecting atomic.Bool
			redirecting.Store(true)
			base := time.Now()
			scaled := func() time.Time { return base.Add(time.Since(base) * speedup) }
			var e *env
			e = newEnv(t, ciotest.Options{AppKey: "app-key", SiteID: "site-1", TrackKey: "track-key", Now: scaled,
				Fault: func(r *ciotest.Request) *ciotest.Fault {
					if (r.API != ciotest.APIApp && r.API != ciotest.APITrack) || !redirecting.Load() {
						return nil
					}
					return &ciotest.Fault{Status: status, Location: e.cio.MovedURL() + r.Path}
				}})
			track, err := sink.NewTrack(sink.TrackOptions{URL: e.cio.TrackURL(), SiteID: "site-1", APIKey: func() string { return "track-key" },
				UserAgent: "test", Client: sink.NewHTTPClient(4, 5*time.Second)})
			if err != nil {
				t.Fatal(err)
			}
			opts := fastOptions()
			opts.App, opts.Track, opts.Delivery = appClient(t, e), track, track
			opts.BroadcastInterval = trigger10s / speedup
			_, reg := e.runWorker(t, opts, 0)

			var msgs []published
			for i := range 3 { // one per broadcast: none waits for another's turn
				msgs = append(msgs, published{subject: worker.SubjectBroadcast,
					body: fmt.Appendf(nil, `{"broadcast_id":%d,"ids":["u-%d"],"data":{"n":%d}}`, 7+i, i, i)})
			}
			msgs = append(msgs,
				published{subject: worker.SubjectSuppress, body: []byte(`{"identifier":"a@x.io"}`)},
				published{subject: worker.SubjectUnsuppress, body: []byte(`{"identifier":"b@x.io"}`)},
				published{subject: worker.SubjectUnsubscribe, body: []byte(`{"delivery_id":"dlv-1"}`)},
				published{subject: worker.SubjectMetric, body: fmt.Appendf(nil, `{"delivery_id":"dlv-2","metric":"opened","timestamp":%d}`, time.Now().Unix())},
			)
			e.publishAll(t, msgs)

			redirects := func(api ciotest.API) int {
				n := 0
				for _, r := range e.cio.Requests() {
					if r.API == api && r.Status == status {
						n++
					}
				}
				return n
			}
			// Stop waiting early if anything was dead-lettered: that is
			// the defect.
			waitFor(t, 20*time.Second, "three redirects on each API, or a dead letter", func() bool {
				return (redirects(ciotest.APIApp) >= 3 && redirects(ciotest.APITrack) >= 3) || streamMsgs(t, e.js, "CIO_DLQ") > 0
			})
			st := e.cio.Stats()
			t.Logf("while redirected: %d requests %v, %d to the redirect target, %d dead letters",
				st.Requests, st.ByStatus, st.ByOutcome[ciotest.OutcomeMoved], streamMsgs(t, e.js, "CIO_DLQ"))
			if moved := st.ByOutcome[ciotest.OutcomeMoved]; moved != 0 {
				t.Errorf("%d requests followed the redirect to its target", moved)
			}
			if dead := streamMsgs(t, e.js, "CIO_DLQ"); dead != 0 {
				for _, d := range readDLQ(t, e.js) {
					t.Logf("dead letter: %+v", d)
				}
				t.Errorf("%d dead letters while redirected, want none", dead)
			}
			for _, api := range []string{"app", "track"} {
				if got := metricValue(t, reg, "cio_relay_auth_paused", "api", api); got != 1 {
					t.Errorf(`cio_relay_auth_paused{api=%q} = %v while redirected, want 1`, api, got)
				}
			}

			redirecting.Store(false)
			waitFor(t, 30*time.Second, "every direct call sent", func() bool {
				return len(e.cio.Triggers()) >= 3 && len(e.cio.Suppressions()) >= 2 && len(e.cio.Unsubscribes()) >= 1 && len(e.cio.Metrics()) >= 1
			})
			waitFor(t, 20*time.Second, "the direct consumers to settle", func() bool {
				for _, name := range []string{"cio-relay-broadcast", "cio-relay-suppress", "cio-relay-unsubscribe", "cio-relay-metric"} {
					c, err := e.js.Consumer(context.Background(), "CIO", name)
					if err != nil {
						return false
					}
					info, err := c.Info(context.Background())
					if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
						return false
					}
				}
				return true
			})
			sent := triggersByN(t, e)
			for i := range 3 {
				if sent[i] != 1 {
					t.Errorf("trigger %d sent %d times after the redirect was removed, want once", i, sent[i])
				}
			}
			if n, u, m := len(e.cio.Suppressions()), len(e.cio.Unsubscribes()), len(e.cio.Metrics()); n != 2 || u != 1 || m != 1 {
				t.Errorf("%d suppressions, %d unsubscribes, %d metrics; want 2, 1, 1", n, u, m)
			}
			if dead := streamMsgs(t, e.js, "CIO_DLQ"); dead != 0 {
				t.Errorf("%d dead letters, want none", dead)
			}
			for _, api := range []string{"app", "track"} {
				if got := metricValue(t, reg, "cio_relay_auth_paused", "api", api); got != 0 {
					t.Errorf(`cio_relay_auth_paused{api=%q} = %v after the redirect was removed, want 0`, api, got)
				}
			}
		})
	}
}
