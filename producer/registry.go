package producer

import (
	"sync"
	"time"
)

// result is what a waiter receives: a reply envelope's payload or error.
type result struct {
	payload  []byte
	id       string // publish: the entry id
	err      error
	writeErr bool          // err is a failed write, not a remote error
	replied  bool          // a reply arrived (payload or remote error): the stages below are set
	cacheTTL time.Duration // how long the answer was stored (a cached request's reply, or a shared hit)

	queue, handler time.Duration // as the worker reported them
	transit        time.Duration // reply encoded by the worker until the reader got it
	decode         time.Duration
}

// waiter is one outstanding request. ch has room for exactly one result, so
// the reply reader never blocks on it.
type waiter struct {
	ch    chan result
	write time.Duration // request's Redis write; set under its shard lock while registered (see stamp)
	// timer enforces Config.RequestTimeout for a request whose ctx has no
	// deadline; stopped (by putWaiter) whenever w is not in use.
	timer *time.Timer
	// fl is the flight a cached request's reply completes (instead of ch).
	fl *flight
}

var waiterPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{ch: make(chan result, 1), timer: t}
}}

// putWaiter stops w's timer and returns w to the pool. Since Go 1.23 a
// stopped timer delivers no stale tick, so the next user can Reset it.
func putWaiter(w *waiter) {
	w.timer.Stop()
	w.fl = nil
	waiterPool.Put(w)
}

const shards = 64

// registry maps correlation sequence numbers to waiters, sharded so that
// concurrent requesters and the reply reader rarely contend on one lock.
type registry struct {
	shards [shards]struct {
		mu sync.Mutex
		m  map[uint64]*waiter
		_  [40]byte // pad to a cache line
	}
}

func newRegistry() *registry {
	r := &registry{}
	for i := range r.shards {
		r.shards[i].m = make(map[uint64]*waiter)
	}
	return r
}

func (r *registry) add(seq uint64, w *waiter) {
	s := &r.shards[seq%shards]
	s.mu.Lock()
	s.m[seq] = w
	s.mu.Unlock()
}

// take removes and returns the waiter for seq, or nil if there is none (it
// timed out, or the reply is a duplicate).
func (r *registry) take(seq uint64) *waiter {
	s := &r.shards[seq%shards]
	s.mu.Lock()
	w := s.m[seq]
	if w != nil {
		delete(s.m, seq)
	}
	s.mu.Unlock()
	return w
}

// stamp records the Redis write time of seq's request if it still waits.
// The shard lock orders it before the take that hands the waiter over.
func (r *registry) stamp(seq uint64, d time.Duration) {
	s := &r.shards[seq%shards]
	s.mu.Lock()
	if w := s.m[seq]; w != nil {
		w.write = d
	}
	s.mu.Unlock()
}

// drain removes every waiter and hands it to fn.
func (r *registry) drain(fn func(*waiter)) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		for k, w := range s.m {
			delete(s.m, k)
			fn(w)
		}
		s.mu.Unlock()
	}
}
