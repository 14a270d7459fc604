package worker

import (
	"context"
	"strings"
	"testing"

	"github.com/cio-relay/cio-relay/internal/natstest"
	"github.com/cio-relay/cio-relay/sink"
)

// noTrack is a Suppressor and DeliveryReporter that is never called: these
// tests only bind consumers.
type noTrack struct{}

func (noTrack) Suppress(context.Context, string) error              { return nil }
func (noTrack) Unsuppress(context.Context, string) error            { return nil }
func (noTrack) Unsubscribe(context.Context, sink.Unsubscribe) error { return nil }
func (noTrack) ReportMetric(context.Context, []byte) error          { return nil }

// TestOrderedConsumersSurviveAnOlderReplica: the ordered consumers are
// created with MaxAckPending 1; an older replica starting during a rolling
// deploy writes the suppression consumer with its own config (MaxAckPending
// 1000, the same subjects) and restoreOrdered puts it back, without
// touching the subjects; the new subjects' consumers are not the older
// replica's to rewrite. A consumer bound without managing streams must
// already be ordered.
func TestOrderedConsumersSurviveAnOlderReplica(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, StreamConfig("CIO")); err != nil {
		t.Fatal(err)
	}
	w, err := New(js, nil, Options{ManageStreams: true, Track: noTrack{}, Delivery: noTrack{}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"cio-relay-suppress": 1, "cio-relay-unsubscribe": 1, "cio-relay-metric": 1000}
	dcs := w.directConsumers()
	if len(dcs) != len(want) {
		t.Fatalf("direct consumers %+v", dcs)
	}
	for _, dc := range dcs {
		cons, err := w.bindDirect(ctx, dc)
		if err != nil {
			t.Fatal(err)
		}
		if got := cons.CachedInfo().Config.MaxAckPending; got != want[dc.name] {
			t.Errorf("%s: MaxAckPending %d, want %d", dc.name, got, want[dc.name])
		}
	}

	// The older replica's bindDirect: same name and subjects, 1000.
	old := w.consumerConfig()
	old.Durable, old.FilterSubjects, old.MaxAckPending = "cio-relay-suppress", []string{SubjectSuppress, SubjectUnsuppress}, 1000
	if _, err := js.CreateOrUpdateConsumer(ctx, "CIO", old); err != nil {
		t.Fatal(err)
	}
	for _, dc := range dcs {
		if dc.ordered {
			if err := w.restoreOrdered(ctx, dc); err != nil {
				t.Fatal(err)
			}
		}
	}
	cons, err := js.Consumer(ctx, "CIO", "cio-relay-suppress")
	if err != nil {
		t.Fatal(err)
	}
	cfg := cons.CachedInfo().Config
	if cfg.MaxAckPending != 1 || strings.Join(cfg.FilterSubjects, " ") != "cio.suppress cio.unsuppress" {
		t.Errorf("after restoreOrdered: MaxAckPending %d, subjects %v", cfg.MaxAckPending, cfg.FilterSubjects)
	}

	// Not managing streams: an unordered suppression consumer is refused.
	if _, err := js.CreateOrUpdateConsumer(ctx, "CIO", old); err != nil {
		t.Fatal(err)
	}
	unmanaged, err := New(js, nil, Options{Track: noTrack{}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = unmanaged.bindDirect(ctx, unmanaged.directConsumers()[0])
	if err == nil || !strings.Contains(err.Error(), "MaxAckPending 1000") {
		t.Errorf("binding an unordered suppression consumer: %v, want a refusal naming MaxAckPending", err)
	}
}

// TestUnmanagedWorkerSkipsMissingDeliveryConsumers: a worker that does not
// manage streams still starts when nobody has created the consumers of
// unsubscribes and metrics (they need no credentials, so nothing says they
// were wanted), and binds the ones that exist.
func TestUnmanagedWorkerSkipsMissingDeliveryConsumers(t *testing.T) {
	_, js := natstest.Start(t).Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, StreamConfig("CIO")); err != nil {
		t.Fatal(err)
	}
	w, err := New(js, nil, Options{Delivery: noTrack{}})
	if err != nil {
		t.Fatal(err)
	}
	if cs := w.boundDirectConsumers(ctx); len(cs) != 0 {
		t.Errorf("bound %+v with no consumers created", cs)
	}
	cfg := w.consumerConfig()
	cfg.Durable, cfg.FilterSubjects = "cio-relay-metric", []string{SubjectMetric}
	if _, err := js.CreateOrUpdateConsumer(ctx, "CIO", cfg); err != nil {
		t.Fatal(err)
	}
	cs := w.boundDirectConsumers(ctx)
	if len(cs) != 1 || cs[0].name != "cio-relay-metric" {
		t.Fatalf("bound %+v, want cio-relay-metric", cs)
	}
	if _, err := w.bindDirect(ctx, cs[0]); err != nil {
		t.Errorf("binding the operator's metric consumer: %v", err)
	}
}
