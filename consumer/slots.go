package consumer

import (
	"context"
	"sync"
	"sync/atomic"
)

// slotLoan lends the handler slots a blocked read holds to claimed
// entries. A read takes every free slot and blocks (so that a batch
// written in one transaction comes back in one read); the retries the
// delayer claims and the entries the reclaimer claims meanwhile would
// wait for those slots until the read returned, up to Block later (a
// retry due in 2 s came at 4 s). While the read blocks, its slots are on
// offer: a claimed entry borrows one, and the read, when it returns, uses
// only the slots left (entries past them wait for a slot, as when a read
// returns more entries than it holds).
//
// One read lends at a time (the single read of a standalone server, or a
// cluster's read of a topic of one partition; the reads of several
// partitions block holding one slot each): a second offer while one runs
// is refused, and that read lends nothing.
type slotLoan struct {
	lending atomic.Bool  // an offer runs
	avail   atomic.Int64 // slots on offer now
	mu      sync.Mutex
	ch      chan struct{} // closed when slots are offered (then replaced)
}

// offer puts n slots on offer while a read blocks; false when another
// read's offer runs (then this read lends nothing and must not withdraw).
func (l *slotLoan) offer(n int) bool {
	if !l.lending.CompareAndSwap(false, true) {
		return false
	}
	l.avail.Store(int64(n))
	l.mu.Lock()
	if l.ch != nil {
		close(l.ch)
		l.ch = nil
	}
	l.mu.Unlock()
	return true
}

// withdraw ends the offer of n slots and returns how many were borrowed.
func (l *slotLoan) withdraw(n int) int {
	left := l.avail.Swap(0)
	l.lending.Store(false)
	return n - int(left)
}

// borrow takes a slot on offer, if there is one.
func (l *slotLoan) borrow() bool {
	for {
		v := l.avail.Load()
		if v <= 0 {
			return false
		}
		if l.avail.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

// offered returns a channel closed at the next offer.
func (l *slotLoan) offered() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ch == nil {
		l.ch = make(chan struct{})
	}
	return l.ch
}

// slotPool is a Run's handler slots: Concurrency tokens, one per entry
// held (read or claimed, until the acker is done with it), and the loan a
// blocked read makes of those it holds.
type slotPool struct {
	ch   chan struct{}
	loan slotLoan
}

func newSlotPool(n int) *slotPool {
	s := &slotPool{ch: make(chan struct{}, n)}
	for range n {
		s.ch <- struct{}{}
	}
	return s
}

// take waits for one slot; false when ctx ended first.
func (s *slotPool) take(ctx context.Context) bool {
	select {
	case <-s.ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// more takes free slots without waiting, until the caller holds limit
// (it holds held now), and returns how many it holds then.
func (s *slotPool) more(held, limit int) int {
	for held < limit {
		select {
		case <-s.ch:
			held++
		default:
			return held
		}
	}
	return held
}

// give returns n slots.
func (s *slotPool) give(n int) {
	for range n {
		s.ch <- struct{}{}
	}
}

// claim takes a handler slot for a claimed entry: a free one, or one a
// blocked read lends. It reports false when ctx ended first. The slot goes
// back to the pool when the entry is done, whichever way it was taken.
func (s *slotPool) claim(ctx context.Context) bool {
	for {
		offered := s.loan.offered()
		select {
		case <-s.ch:
			return true
		default:
		}
		if s.loan.borrow() {
			return true
		}
		select {
		case <-s.ch:
			return true
		case <-offered:
		case <-ctx.Done():
			return false
		}
	}
}
