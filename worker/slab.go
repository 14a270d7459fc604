package worker

import "sync/atomic"

// slabSize is the size of the buffers calls are prepared into: a few
// hundred typical calls each.
const slabSize = 256 << 10

// idleSlabs is how many released slabs the reader keeps for later calls:
// about what SendConcurrency (default 4) batches in flight and the open one
// span, so a busy worker prepares into recycled memory. An idle worker holds
// at most idleSlabs × slabSize (2 MB).
const idleSlabs = 8

// slab is a buffer that many calls are prepared into, one after the other,
// instead of one allocation each. It counts the calls whose bytes it holds,
// plus one while the reader still prepares into it; when the count falls to
// nothing, no call's bytes are used any more (each was settled: its batch
// delivered or nakked, its halves sent, its dead letter written), and the
// slab goes back to its pool to be written over. On a busy relay these
// slabs were over a third of the bytes allocated, and their garbage
// collection much of the relay's CPU.
type slab struct {
	buf  []byte
	refs atomic.Int64
	pool *slabs // nil: not recycled
}

// slabs recycles released slabs. get is for the reader alone; release may
// run on any goroutine.
type slabs struct {
	free chan *slab
	made atomic.Int64 // slabs allocated, for tests
}

func newSlabs() *slabs { return &slabs{free: make(chan *slab, idleSlabs)} }

// get returns an empty slab with room for need bytes, held once by the
// caller: a released one when there is one and need fits. A nil pool makes
// a slab that is never recycled.
func (p *slabs) get(need int) *slab {
	if p != nil && need <= slabSize {
		select {
		case s := <-p.free:
			s.buf = s.buf[:0]
			s.refs.Store(1)
			return s
		default:
		}
	}
	s := &slab{buf: make([]byte, 0, max(slabSize, need))}
	if p != nil {
		p.made.Add(1)
		if cap(s.buf) == slabSize {
			s.pool = p
		}
	}
	s.refs.Store(1)
	return s
}

// hold counts one more call prepared into s.
func (s *slab) hold() { s.refs.Add(1) }

// release drops n of s's references; the last returns s to its pool, or
// leaves it to the garbage collector when the pool has idleSlabs already.
func (s *slab) release(n int64) {
	if s.refs.Add(-n) != 0 || s.pool == nil {
		return
	}
	select {
	case s.pool.free <- s:
	default:
	}
}

// releaseCalls drops the slab references of calls, which are settled: none
// of their bytes is used again. Consecutive calls of one slab, the usual
// case, cost one atomic operation together.
func releaseCalls(calls []*held) {
	var cur *slab
	var n int64
	for _, h := range calls {
		s := h.slab
		if s == nil {
			continue
		}
		h.slab = nil
		if s != cur {
			if cur != nil {
				cur.release(n)
			}
			cur, n = s, 0
		}
		n++
	}
	if cur != nil {
		cur.release(n)
	}
}
