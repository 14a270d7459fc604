package worker

import (
	"cmp"
	"slices"
)

// keyOrder is the per-key policy of ordered delivery within one replica,
// without goroutines, NATS or clocks, so it can be tested as a table.
//
// A key is blocked while a call of it that this replica nakked (its retries
// spent) has not come back: a later call of the key must not reach
// Customer.io before it. Later calls wait, leased, in the key's wait list.
// When a blocker is redelivered it joins the wait list too, and the list is
// released in stream order up to the next blocker still out: so several
// blockers of one key go in sequence order, each before the calls behind
// it. A call that is dead-lettered or delivered blocks nothing, nor does a
// blocker the consumer's ack floor has passed (settled).
//
// Calls released go to their key's lane, which sends one batch at a time in
// stream order; a call already queued in a lane when its key
// became blocked is taken out again at send time (eligible). A released
// call keeps blocking its key until it is sent: a later call already in a
// batch (the other half of a bisect whose first half was nakked and came
// back meanwhile) must not go ahead of it, queued behind it in the lane.
type keyOrder struct {
	keys map[uint64]*keyState
	// freed are calls released from wait lists by eligible or nakked: the
	// caller queues them in their lanes, after the batch being sent.
	freed []*held
	// displaced are older copies of a sequence that a redelivery replaced
	// in a wait list: their leases are the caller's to drop.
	displaced []*held
}

// keyState is a key with blockers out or calls waiting; keys with neither
// have no state.
type keyState struct {
	blockers []uint64 // stream sequences nakked and not yet back, ascending
	waiting  []*held  // leased, not yet released, ascending by seq
	unsent   []uint64 // released to the lane, not yet sent, ascending
}

// empty reports whether nothing of the key is held back any more.
func (ks *keyState) empty() bool {
	return len(ks.blockers) == 0 && len(ks.waiting) == 0 && len(ks.unsent) == 0
}

func newKeyOrder() *keyOrder { return &keyOrder{keys: make(map[uint64]*keyState)} }

// has reports whether key has state: blockers out, calls waiting or
// released and not yet sent.
func (o *keyOrder) has(key uint64) bool { return o.keys[key] != nil }

// add takes a call that arrived (new or redelivered) and returns the calls
// now free to go to the key's lane, in order: usually just h.
func (o *keyOrder) add(h *held) []*held {
	ks := o.keys[h.key]
	if ks == nil {
		return []*held{h}
	}
	if i, ok := slices.BinarySearch(ks.blockers, h.seq); ok {
		ks.blockers = slices.Delete(ks.blockers, i, i+1) // it is back
	}
	o.insert(ks, h)
	return o.release(h.key, ks)
}

// insert puts h in the wait list by stream sequence; a second copy of one
// sequence (redelivered while this replica still held it) replaces the
// first, whose lease is gone.
func (o *keyOrder) insert(ks *keyState, h *held) {
	i, found := slices.BinarySearchFunc(ks.waiting, h.seq, func(w *held, s uint64) int {
		return cmpUint(w.seq, s)
	})
	if found {
		if ks.waiting[i] != h {
			o.displaced = append(o.displaced, ks.waiting[i])
		}
		ks.waiting[i] = h
		return
	}
	ks.waiting = slices.Insert(ks.waiting, i, h)
}

// release takes from the key's wait list every call before its first
// blocker still out, and forgets the key once nothing holds it.
func (o *keyOrder) release(key uint64, ks *keyState) []*held {
	n := len(ks.waiting)
	if len(ks.blockers) > 0 {
		first := ks.blockers[0]
		n, _ = slices.BinarySearchFunc(ks.waiting, first, func(w *held, s uint64) int { return cmpUint(w.seq, s) })
	}
	out := slices.Clone(ks.waiting[:n])
	ks.waiting = slices.Delete(ks.waiting, 0, n)
	for _, h := range out {
		ks.unsent = insertSeq(ks.unsent, h.seq)
	}
	if ks.empty() {
		delete(o.keys, key)
	}
	return out
}

// insertSeq adds seq to the ascending seqs, once.
func insertSeq(seqs []uint64, seq uint64) []uint64 {
	if i, ok := slices.BinarySearch(seqs, seq); !ok {
		seqs = slices.Insert(seqs, i, seq)
	}
	return seqs
}

// removeSeq takes seq out of the ascending seqs, if there.
func removeSeq(seqs []uint64, seq uint64) []uint64 {
	if i, ok := slices.BinarySearch(seqs, seq); ok {
		seqs = slices.Delete(seqs, i, i+1)
	}
	return seqs
}

// gone says a released call was let go without being sent (too large for
// a batch: dead-lettered): it holds its key no longer.
func (o *keyOrder) gone(h *held) {
	ks := o.keys[h.key]
	if ks == nil {
		return
	}
	ks.unsent = removeSeq(ks.unsent, h.seq)
	o.freed = append(o.freed, o.release(h.key, ks)...)
}

// eligible reports whether h may be sent now: nothing of its key before it
// is out or waiting. One that may not joins the key's wait list. A copy of
// a blocker's sequence is the blocker back, whichever delivery it is: a
// redelivery that overtook the nak (the lease lapsed while NATS was away)
// is the live one, and the server will not deliver the sequence again.
func (o *keyOrder) eligible(h *held) bool {
	ks := o.keys[h.key]
	if ks == nil {
		return true
	}
	ks.blockers = removeSeq(ks.blockers, h.seq)
	ks.unsent = removeSeq(ks.unsent, h.seq) // it is being sent
	if (len(ks.blockers) == 0 || h.seq < ks.blockers[0]) && (len(ks.waiting) == 0 || h.seq < ks.waiting[0].seq) &&
		(len(ks.unsent) == 0 || h.seq < ks.unsent[0]) {
		// What waited behind it may follow it now.
		o.freed = append(o.freed, o.release(h.key, ks)...)
		return true
	}
	o.insert(ks, h)
	return false
}

// nakked records that h was handed back for redelivery: its key is blocked
// by it until it comes back. When another copy of the sequence already
// waits here, that copy is the live delivery and nothing blocks.
func (o *keyOrder) nakked(h *held) {
	ks := o.keys[h.key]
	if ks == nil {
		ks = &keyState{}
		o.keys[h.key] = ks
	}
	if slices.ContainsFunc(ks.waiting, func(w *held) bool { return w.seq == h.seq && w != h }) {
		o.freed = append(o.freed, o.release(h.key, ks)...)
		return
	}
	if i, ok := slices.BinarySearch(ks.blockers, h.seq); !ok {
		ks.blockers = slices.Insert(ks.blockers, i, h.seq)
	}
}

// settled forgets the blockers (and released calls) at or below floor, the
// consumer's ack floor, and releases what waited behind them. Such a sequence is acked
// (another delivery of the call was accepted: a replica can hold two, after
// a stale nak) or terminated, so the server ignored its nak and will not
// deliver it again; waiting for it would hold the key's later calls,
// leased, for good.
func (o *keyOrder) settled(floor uint64) {
	for key, ks := range o.keys {
		n, _ := slices.BinarySearch(ks.blockers, floor+1)
		u, _ := slices.BinarySearch(ks.unsent, floor+1)
		if n == 0 && u == 0 {
			continue
		}
		ks.blockers = slices.Delete(ks.blockers, 0, n)
		ks.unsent = slices.Delete(ks.unsent, 0, u)
		o.freed = append(o.freed, o.release(key, ks)...)
	}
}

// reset returns every call in a wait list, and forgets all state:
// for a replica that lost its pin and hands them back.
func (o *keyOrder) reset() []*held {
	out := o.freed
	o.freed = nil
	for _, ks := range o.keys {
		out = append(out, ks.waiting...)
	}
	clear(o.keys)
	return out
}

func cmpUint(a, b uint64) int { return cmp.Compare(a, b) }
