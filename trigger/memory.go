package trigger

import "unsafe"

// recordOverhead is what holding one trigger costs beyond its bytes: the
// NATS message around the body (its struct, subject, reply and headers),
// the worker's record of it and its lease, and the Request itself.
const recordOverhead = 1024

// MemoryCost estimates the heap one trigger holds from the moment its
// message is received until its request is answered: the message body
// (which the worker keeps to ack or dead-letter it), the parsed Request (its
// compacted Body, each list entry and the key it is compared by, its other
// members) and, for a trigger that may be merged, its share of the merged
// request's body. It is what a Pacer counts against MaxPendingBytes;
// TestPacerBoundCountsEveryCopy measures it against the real heap for the
// shapes that matter (large per-user data, many short ids, large data).
func (r *Request) MemoryCost() int { return r.cost }

// memoryCost computes MemoryCost for r, parsed from input bytes.
func memoryCost(input int, r *Request) int {
	n := recordOverhead + allocSize(input) + allocSize(len(r.body)) + allocSize(len(r.restKey))
	n += allocSize(cap(r.entries) * int(unsafe.Sizeof(entry{})))
	for _, e := range r.entries {
		n += allocSize(len(e.who))
		if !r.listInBody {
			n += allocSize(cap(e.raw))
		}
		if r.coalescable {
			n += len(e.raw) + 1 // in a merged body, with its comma
		}
	}
	n += allocSize(cap(r.rest) * int(unsafe.Sizeof(member{})))
	for _, m := range r.rest {
		n += allocSize(cap(m.raw)) + allocSize(len(m.key))
	}
	return n
}

// allocSize approximates the memory the Go allocator gives a request of n
// bytes: small sizes round up to a size class (16-byte steps at most, up to
// 128), larger ones waste a few percent on average, and objects beyond 32
// KB take whole 8 KB pages.
func allocSize(n int) int {
	switch {
	case n <= 0:
		return 0
	case n <= 8:
		return 8
	case n <= 128:
		return (n + 15) &^ 15
	case n <= 32<<10:
		return n + n/16
	default:
		return (n + 8191) &^ 8191
	}
}
