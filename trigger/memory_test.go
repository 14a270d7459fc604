package trigger_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/cio-relay/cio-relay/trigger"
)

// TestPacerBoundCountsEveryCopy fills a Pacer to its byte bound with
// triggers as the worker holds them (the message body it keeps for the ack,
// the parsed request) and releases them (the merged request body), and
// measures the heap they hold. MaxPendingBytes is a memory bound: what a
// full Pacer holds must stay within it, or the bound that is meant to keep
// the process under its memory limit lets it be killed mid-request. It
// must not over-count grossly either, or memory is left unused.
func TestPacerBoundCountsEveryCopy(t *testing.T) {
	const bound = 16 << 20
	pad := strings.Repeat("x", 480)
	tests := []struct {
		name string
		body func(i int) string
	}{
		{"per_user_data, 200 entries of 500 bytes", func(i int) string {
			var b strings.Builder
			fmt.Fprintf(&b, `{"broadcast_id":1,"id_ignore_missing":true,"per_user_data":[`)
			for j := range 200 {
				if j > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `{"id":"u-%d-%d","data":{"note":"%s"}}`, i, j, pad)
			}
			b.WriteString("]}")
			return b.String()
		}},
		{"ids, 10,000 short ids", func(i int) string {
			var b strings.Builder
			fmt.Fprintf(&b, `{"broadcast_id":2,"id_ignore_missing":true,"ids":[`)
			for j := range 10000 {
				if j > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"%d-%d"`, i, j)
			}
			b.WriteString("]}")
			return b.String()
		}},
		{"emails with 4 KB of data, not merged", func(i int) string {
			return fmt.Sprintf(`{"broadcast_id":3,"emails":["p%d@x.io"],"data":{"n":%d,"note":"%s"}}`, i, i, strings.Repeat(pad, 8))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Only the byte bound applies.
			p := newPacer(t, trigger.PacerOptions{MaxPendingBytes: bound, MaxPending: 1 << 30})
			var kept [][]byte // the message bodies the worker keeps until settled
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			for i := 0; ; i++ {
				body := []byte(tt.body(i))
				req, err := trigger.Parse(body)
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Add(req, i); errors.Is(err, trigger.ErrFull) {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				kept = append(kept, body)
			}
			released := p.Ready(t0)
			runtime.GC()
			runtime.ReadMemStats(&after)
			held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			runtime.KeepAlive(kept)
			runtime.KeepAlive(released)
			runtime.KeepAlive(p)
			var bodies int
			for _, b := range kept {
				bodies += len(b)
			}
			ratio := float64(held) / bound
			t.Logf("%d triggers of %d bytes admitted: heap held %.1f MB for a %d MB bound (%.2f×); %.2f× the body bytes",
				len(kept), len(kept[0]), float64(held)/1e6, bound>>20, ratio, float64(held)/float64(bodies))
			if ratio > 1.15 {
				t.Errorf("a full pacer holds %.2f× its byte bound", ratio)
			}
			if ratio < 0.6 {
				t.Errorf("a full pacer holds only %.2f× its byte bound: it over-counts", ratio)
			}
		})
	}
}
