package breaker

import (
	"runtime"
	"sync/atomic"
	"unsafe"
)

// stripe is one cache line of outcome counters.
type stripe struct {
	succ, fail, slow atomic.Uint64
	_                [64 - 3*8]byte
}

// bucket counts one time slice of the window, striped.
type bucket struct {
	epoch   atomic.Int64 // the time index this slot holds
	stripes []stripe
}

func (b *bucket) clear() {
	for i := range b.stripes {
		s := &b.stripes[i]
		s.succ.Store(0)
		s.fail.Store(0)
		s.slow.Store(0)
	}
}

// cursor is the current time slice: writers use its slot until end. It is
// read on every call, so it fills a cache line of its own (objects of 64
// bytes are 64-byte aligned): no unrelated write nearby can evict it.
type cursor struct {
	idx  int64 // time index: unix nanoseconds / width
	end  int64 // unix nanoseconds when idx ends
	slot *bucket
	_    [64 - 24]byte
}

// window is a rolling window of n buckets over n+1 slots: the slot after
// the current one is outside the window, so it is cleared ahead of time
// while nobody writes to it, and writers never race a clear in steady state.
type window struct {
	width int64 // bucket width in nanoseconds
	n     int64 // buckets in the window
	slots []bucket
	mask  uint32
	cur   atomic.Pointer[cursor]
	_     [64]byte
	salt  atomic.Uint64 // bumped when an increment meets contention
	_     [56]byte
}

func newWindow(width int64, n int, now int64) *window {
	stripes := 8
	for stripes < 4*runtime.GOMAXPROCS(0) && stripes < 64 {
		stripes *= 2
	}
	w := &window{width: width, n: int64(n), slots: make([]bucket, n+1), mask: uint32(stripes - 1)}
	for i := range w.slots {
		w.slots[i].stripes = make([]stripe, stripes)
		w.slots[i].epoch.Store(-1)
	}
	idx := now / width
	w.prepare(idx)
	w.prepare(idx + 1)
	w.cur.Store(&cursor{idx: idx, end: (idx + 1) * width, slot: w.slot(idx)})
	return w
}

func (w *window) slot(idx int64) *bucket { return &w.slots[idx%int64(len(w.slots))] }

// prepare clears the slot of idx for that index unless it already holds it.
func (w *window) prepare(idx int64) {
	s := w.slot(idx)
	if s.epoch.Load() != idx {
		s.clear()
		s.epoch.Store(idx)
	}
}

// current returns the time slice for time now, advancing the window when
// now has passed it. The fast path is one atomic load and a compare.
func (w *window) current(now int64) *cursor {
	c := w.cur.Load()
	if now < c.end {
		return c
	}
	idx := now / w.width
	if idx <= c.idx { // a late writer: count it in the current slice
		return c
	}
	// Prepare every slice from the current one's successor up to idx+1
	// (at most the whole ring), then publish idx. Concurrent advancers
	// prepare the same slices; prepare is idempotent per index, and a
	// write racing the clear of a slice skipped over by an idle period is
	// the only count that can be lost.
	from := max(c.idx+1, idx+1-int64(len(w.slots))+1)
	for i := from; i <= idx+1; i++ {
		w.prepare(i)
	}
	n := &cursor{idx: idx, end: (idx + 1) * w.width, slot: w.slot(idx)}
	for {
		if w.cur.CompareAndSwap(c, n) {
			return n
		}
		c = w.cur.Load()
		if c.idx >= idx {
			return c
		}
	}
}

// stripeOf picks a stripe of c's slot for the calling goroutine: the
// address of a local variable identifies the goroutine's stack (goroutines
// never share one), mixed with the time-slice index and a salt that inc
// bumps on contention, so two goroutines that collide on a stripe do not
// stay collided. It costs about a nanosecond, against several for a random
// number.
func (w *window) stripeOf(c *cursor) *stripe {
	var local byte
	h := (uint64(uintptr(unsafe.Pointer(&local)))>>11 + uint64(c.idx) + w.salt.Load()) * 0x9E3779B97F4A7C15
	return &c.slot.stripes[uint32(h>>32)&w.mask]
}

// inc adds one to a striped counter. The increment is a compare-and-swap
// so that contention is visible: when it fails, another goroutine writes
// the same stripe, and bumping the salt moves every goroutine to another
// mapping. Uncontended it costs the same as an atomic add.
func (w *window) inc(n *atomic.Uint64) {
	v := n.Load()
	if !n.CompareAndSwap(v, v+1) {
		w.salt.Add(1)
		n.Add(1)
	}
}

// sum adds up the window ending at time now.
func (w *window) sum(now int64) (succ, fail, slow uint64) {
	idx := now / w.width
	for i := range w.slots {
		b := &w.slots[i]
		if e := b.epoch.Load(); e <= idx-w.n || e > idx {
			continue
		}
		for j := range b.stripes {
			s := &b.stripes[j]
			succ += s.succ.Load()
			fail += s.fail.Load()
			slow += s.slow.Load()
		}
	}
	return succ, fail, slow
}

// reset empties the window (after the breaker closes).
func (w *window) reset() {
	for i := range w.slots {
		w.slots[i].clear()
	}
}
