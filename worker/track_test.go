package worker

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cio-relay/cio-relay/deadletter"
)

// TestTrackCallSettlement sends each kind of Track API call through a
// scripted API and checks its settlement, in virtual time.
func TestTrackCallSettlement(t *testing.T) {
	calls := []struct{ subject, body string }{
		{SubjectSuppress, `{"identifier":"a@x.io"}`},
		{SubjectUnsuppress, `{"identifier":"a@x.io"}`},
		{SubjectUnsubscribe, `{"delivery_id":"d1","unsubscribe":false}`},
		{SubjectMetric, `{"delivery_id":"d3","metric":"opened","timestamp":1700000000}`},
	}
	tests := []struct {
		name       string
		deliveries uint64
		respond    error
		cancel     bool
		want       string
		letter     deadletter.Reason
	}{
		{"2xx acks", 1, nil, false, "ack", ""},
		{"400 is rejected", 1, statusErr("track", 400), false, "term rejected", deadletter.ReasonRejected},
		{"5xx naks with a delay", 2, statusErr("track", 500), false, "nak 1m0s", ""},
		{"5xx at MaxDeliver is exhausted", 3, statusErr("track", 500), false, "term retries_exhausted", deadletter.ReasonRetriesExhausted},
		{"429 then hard stop naks now", 1, retryAfterErr("track", time.Second), true, "nak", ""},
	}
	for _, tt := range tests {
		for _, c := range calls {
			t.Run(tt.name+"/"+c.subject, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					ctx, cancel := context.WithCancel(t.Context())
					defer cancel()
					api := &fakeDirect{respond: func(string, string) error {
						if tt.cancel {
							time.AfterFunc(500*time.Millisecond, cancel)
						}
						return tt.respond
					}}
					w, js := newFakeWorker(t, &fakeSender{}, Options{Track: api, Delivery: api, RetryMaxElapsed: time.Hour})
					m := newScriptedMsg(c.subject, c.body, 9, tt.deliveries)
					h, _ := w.hold(m, "test.", newLeases[*held](time.Hour), func() *held { return new(held) })
					tc, err := parseTrackCall(h)
					if err != nil {
						t.Fatal(err)
					}
					w.track.send(ctx, tc)
					if got := m.how(); got != tt.want {
						t.Errorf("settled %q, want %q", got, tt.want)
					}
					var want []deadletter.Reason
					if tt.letter != "" {
						want = []deadletter.Reason{tt.letter}
					}
					if got := js.reasons(); !slices.Equal(got, want) {
						t.Errorf("dead letters %q, want %q", got, want)
					}
				})
			})
		}
	}
}
