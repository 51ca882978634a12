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
	entry    string        // a reply's RequestEntry: the request entry it answers ("" from an older worker)
	cacheKey string        // a reply's CacheKey: the cache entry of the request it answers

	queue, handler time.Duration // as the worker reported them
	retried        bool          // the reply came from a redelivery: queue is its retry wait (metrics.RetryWait)
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
	// fl is the flight a cached request's reply completes (instead of ch);
	// cacheKey the cache entry id its answer must name (set by expectCache
	// before each ask, under the shard lock): an answer that joined this
	// caller to another flight (a waiter planted in someone else's flight
	// marker) names another and is dropped.
	fl       *flight
	cacheKey string
	// entry is the stream entry id of the request, once its write
	// returned (see stamp); early are replies that came before that, held
	// until the entry id is known (a few: a forged one must not push out
	// the real one). Both under the shard lock.
	entry string
	early []result

	// st is set for a streamed request (stream.go): its chunks and reply go
	// there. Such waiters are not pooled.
	st *streamState
	// cancel is where a cancel notice for this request goes (its topic's
	// control stream, its correlation id, its deadline): Close sends one for
	// each request it abandons. Empty for flights.
	cancel cancelNotice
}

// maxEarly bounds the replies held for one request before its write
// returned.
const maxEarly = 4

var waiterPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{ch: make(chan result, 1), timer: t}
}}

// putWaiter stops w's timer and returns w to the pool. Since Go 1.23 a
// stopped timer delivers no stale tick, so the next user can Reset it.
func putWaiter(w *waiter) {
	w.timer.Stop()
	w.fl, w.cacheKey, w.entry, w.cancel = nil, "", "", cancelNotice{}
	clear(w.early)
	w.early = w.early[:0]
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

// stamp records the Redis write time and entry id of seq's request if it
// still waits. The shard lock orders it before the take that hands the
// waiter over. Of the replies that came first (held by match), the one that
// answers this entry is handed over now, returned with the waiter; the
// others answered other entries and are dropped (forged counts them).
func (r *registry) stamp(seq uint64, d time.Duration, entry string) (w *waiter, early result, forged int) {
	s := &r.shards[seq%shards]
	s.mu.Lock()
	defer s.mu.Unlock()
	w = s.m[seq]
	if w == nil {
		return nil, result{}, 0
	}
	w.write, w.entry = d, entry
	found := -1
	for i := range w.early {
		if found < 0 && w.early[i].entry == entry {
			found = i
		} else {
			forged++
		}
	}
	if found < 0 {
		clear(w.early)
		w.early = w.early[:0]
		return nil, result{}, forged
	}
	early = w.early[found]
	clear(w.early)
	w.early = w.early[:0]
	delete(s.m, seq)
	return w, early, forged
}

// Outcomes of match.
const (
	matchNone   = iota // no waiter: a late or duplicate reply
	matchTaken         // the waiter, taken: hand r over
	matchHeld          // held until the request's entry id is known (stamp)
	matchForged        // answers another entry than the request's: dropped, the caller waits on
	matchStream        // a streamed request's waiter, left registered: its stream sorts chunks and reply out
)

// match takes seq's waiter for reply r when r answers the entry its
// request was written as (or says nothing of it: an older worker; or the
// waiter is a flight's, whose answer may come from another producer's
// entry, but must name the flight's cache entry: a Python worker names
// none). A reply that comes before the request's write returned is held in
// the waiter for stamp.
func (r *registry) match(seq uint64, res *result, chunk bool) (*waiter, int) {
	s := &r.shards[seq%shards]
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.m[seq]
	switch {
	case w == nil:
		return nil, matchNone
	case w.st != nil:
		return w, matchStream
	case chunk:
		return nil, matchNone // a chunk for a request that reads no stream
	case w.fl != nil:
		if res.cacheKey != "" && res.cacheKey != w.cacheKey {
			return nil, matchForged
		}
	case res.entry == "" || res.entry == w.entry:
	case w.entry == "":
		if len(w.early) >= maxEarly {
			return nil, matchForged // the real one is among those held, or never came
		}
		w.early = append(w.early, *res)
		return nil, matchHeld
	default:
		return nil, matchForged
	}
	delete(s.m, seq)
	return w, matchTaken
}

// expectCache records the cache entry id the answer of seq's flight must
// name (see waiter.cacheKey).
func (r *registry) expectCache(seq uint64, key string) {
	s := &r.shards[seq%shards]
	s.mu.Lock()
	if w := s.m[seq]; w != nil {
		w.cacheKey = key
	}
	s.mu.Unlock()
}

// each calls fn for every waiter, leaving them registered.
func (r *registry) each(fn func(*waiter)) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		for _, w := range s.m {
			fn(w)
		}
		s.mu.Unlock()
	}
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
