package consumer

import (
	"cmp"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// Cancellation: a producer whose caller gave up writes a notice on the
// topic's control stream (bus.Keys.Control); every worker reads that
// stream (one blocking XREAD per worker, no cost per request). A notice
// cancels the ctx of the handler running the request, on whichever worker
// holds it, and is remembered until the request's deadline so that a
// worker picking the request up later acknowledges it unhandled, like an
// expired one. The same stream carries wake-ups for delayed entries
// (delay.go).

// controlWindow is how far back a starting worker reads the control
// stream: requests cancelled before it started are skipped too.
const controlWindow = 10 * time.Minute

// maxCancelled bounds the cancelled requests a worker remembers; past it,
// the soonest-expiring are forgotten first (those requests are handled if
// picked up, as without cancellation). A flood of notices (anyone who may
// write the control stream can write notices, though only a request's
// caller knows the token that cancels it) therefore costs at most this
// many entries, and each notice O(1).
const maxCancelled = 100_000

// wheelSlots is the cancelled set's time wheel: one bucket per second of
// the notices' expiry, more seconds than controlWindow (an expiry is never
// further ahead), so a bucket holds one second at a time.
const wheelSlots = 1024

// runShards stripes the index of running requests (every request's
// handler registers in it), so that workers rarely share a lock.
const runShards = 16

// cancelSet is the requests cancelled recently, by their cancel tokens,
// each remembered until its deadline; and the requests this consumer's
// workers are running, so that a notice finds its handler at once. Every
// operation is O(1): expiry and eviction walk a time wheel of one bucket
// per second instead of the whole set.
type cancelSet struct {
	n     atomic.Int64 // len(until), read without the lock by the hot path
	mu    sync.Mutex
	until map[codec.Token]int64 // -> unix ms after which it no longer matters
	wheel [wheelSlots][]codec.Token
	swept int64 // the wheel holds no token of a second below this
	limit int   // maxCancelled, or a test's smaller bound

	running [runShards]runShard
}

// runShard is one stripe of the running index (padded to its own cache
// lines).
type runShard struct {
	mu sync.Mutex
	m  map[codec.Token]*workerSlot
	_  [40]byte
}

// has reports whether the request with token tok was cancelled. It costs
// one atomic load while nothing is cancelled.
func (s *cancelSet) has(tok *codec.Token) bool {
	if s.n.Load() == 0 || tok.IsZero() {
		return false
	}
	s.mu.Lock()
	_, ok := s.until[*tok]
	s.mu.Unlock()
	return ok
}

// add remembers that the request with token tok was cancelled, until
// until (unix ms; at most controlWindow after now), forgetting expired
// ones as it goes and the soonest-expiring one when full.
func (s *cancelSet) add(tok codec.Token, until, now int64) {
	if tok.IsZero() || until < now {
		return
	}
	until = min(until, now+int64(controlWindow/time.Millisecond))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.until == nil {
		s.until = map[codec.Token]int64{}
	}
	s.sweepLocked(now)
	if _, ok := s.until[tok]; !ok && len(s.until) >= cmp.Or(s.limit, maxCancelled) {
		s.evictLocked()
	}
	s.until[tok] = until
	sec := until / 1000
	s.wheel[sec%wheelSlots] = append(s.wheel[sec%wheelSlots], tok)
	s.n.Store(int64(len(s.until)))
}

// prune forgets requests whose deadline passed.
func (s *cancelSet) prune(now int64) {
	s.mu.Lock()
	s.sweepLocked(now)
	s.mu.Unlock()
}

// sweepLocked empties the wheel's buckets of every second before now's:
// their requests' deadlines passed. A token whose expiry moved (cancelled
// again) stays, in its current bucket.
func (s *cancelSet) sweepLocked(now int64) {
	sec := now / 1000
	if s.swept == 0 || sec-s.swept > wheelSlots {
		s.swept = sec - wheelSlots // first use, or idle longer than a turn: every bucket once
	}
	for ; s.swept < sec; s.swept++ {
		b := &s.wheel[s.swept%wheelSlots]
		for _, tok := range *b {
			if u, ok := s.until[tok]; ok && u/1000 <= s.swept {
				delete(s.until, tok)
			}
		}
		*b = (*b)[:0]
		if cap(*b) > 1024 {
			*b = nil // a burst's bucket: give its memory back
		}
	}
	s.n.Store(int64(len(s.until)))
}

// evictLocked forgets the request that expires soonest: a token of the
// earliest bucket that still holds a live one (tokens whose expiry moved
// are dropped from it on the way).
func (s *cancelSet) evictLocked() {
	for i := int64(0); i < wheelSlots; i++ {
		sec := s.swept + i
		b := &s.wheel[sec%wheelSlots]
		for len(*b) > 0 {
			tok := (*b)[len(*b)-1]
			*b = (*b)[:len(*b)-1]
			if u, ok := s.until[tok]; ok && u/1000 == sec {
				delete(s.until, tok)
				return
			}
		}
	}
}

func (s *cancelSet) shard(tok *codec.Token) *runShard { return &s.running[tok[0]%runShards] }

// started records that slot runs the request with token tok and reports
// whether it was cancelled already (a notice read between the pick-up and
// now found no handler to cancel). It registers first and then looks, and
// a notice is remembered first and then looks for its handler: one of the
// two always sees the other.
func (s *cancelSet) started(tok *codec.Token, slot *workerSlot) bool {
	if tok.IsZero() {
		return false
	}
	sh := s.shard(tok)
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = map[codec.Token]*workerSlot{}
	}
	sh.m[*tok] = slot
	sh.mu.Unlock()
	return s.has(tok)
}

// finished forgets that the request with token tok runs.
func (s *cancelSet) finished(tok *codec.Token) {
	if tok.IsZero() {
		return
	}
	sh := s.shard(tok)
	sh.mu.Lock()
	delete(sh.m, *tok)
	sh.mu.Unlock()
}

// runner returns the slot running the request with token tok, or nil.
func (s *cancelSet) runner(tok *codec.Token) *workerSlot {
	sh := s.shard(tok)
	sh.mu.Lock()
	slot := sh.m[*tok]
	sh.mu.Unlock()
	return slot
}

// controller reads the topic's control stream while Run runs: cancel
// notices cancel running handlers and are remembered (see cancelSet); wake
// notices go to the delayer. A refused read (an ACL without the control
// key) is logged once and retried slowly: the worker then serves without
// cancellation.
type controller struct {
	*env
	cancels *cancelSet
}

// run reads the control stream while ctx lives. The first reads catch up
// with the window without blocking; ready is closed once they did (or
// failed), so that Run reads no entry before it knows what was cancelled.
func (ct *controller) run(ctx context.Context, wake chan<- int64, ready chan<- struct{}) {
	key := ct.keys.Control(ct.cfg.Topic)
	after := redisx.ControlStart(time.Now(), controlWindow)
	out := redisx.Outage{Log: ct.log, What: "control stream " + key}
	var rd redisx.ReadDeadline
	defer rd.Stop()
	refused := false
	lastPrune := time.Now()
	catchingUp := true
	caughtUp := func() {
		if catchingUp {
			catchingUp = false
			close(ready)
		}
	}
	defer caughtUp()
	for ctx.Err() == nil {
		const batch = 512
		block := ct.cfg.Block
		if catchingUp {
			block = 0
		}
		notices, last, bad, err := ct.port.ReadControl(rd.For(ctx, ct.cfg.Block), key, after, batch, block)
		if err != nil || (last == "" && bad == 0) || len(notices)+bad < batch {
			caughtUp() // an error: serve all the same, without what was missed
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if redisx.IsRefused(err) {
				if !refused {
					refused = true
					ct.log.Warn().Err(err).Str("key", key).Msg("Redis refuses reading the control stream: cancellations and delayed-entry wake-ups do not reach this worker (logged once)")
				}
				sleepCtx(ctx, 30*time.Second)
				continue
			}
			out.Failed(err)
			out.Backoff(ctx)
			continue
		}
		out.OK()
		refused = false
		if last != "" {
			after = last
		}
		if bad > 0 {
			ct.stats.badControl.Add(uint64(bad))
		}
		now := time.Now().UnixMilli()
		ct.apply(notices, wake, now)
		if time.Since(lastPrune) > time.Minute {
			lastPrune = time.Now()
			ct.cancels.prune(now)
		}
	}
}

// apply acts on notices read at now (unix ms).
func (ct *controller) apply(notices []redisx.Control, wake chan<- int64, now int64) {
	for _, n := range notices {
		switch n.Op {
		case redisx.OpCancel:
			if n.Until != 0 && n.Until < now {
				continue // its deadline passed: nothing left to cancel
			}
			until := n.Until
			if until == 0 {
				until = now + int64(controlWindow/time.Millisecond)
			}
			ct.cancels.add(n.Token, until, now)
			ct.cancelRunning(&n.Token)
		case redisx.OpPause:
			ct.lim.notePause() // a hint: its time is not trusted (see notePause)
		case redisx.OpWake:
			select {
			case wake <- n.Until:
			default: // the delayer is busy: it promotes on its next turn
			}
		}
	}
}

// cancelRunning cancels the handler running the request with token tok,
// if one of this consumer's workers runs it.
func (ct *controller) cancelRunning(tok *codec.Token) {
	s := ct.cancels.runner(tok)
	if s == nil {
		return
	}
	s.mu.Lock()
	hit := s.id != "" && !s.cancelled && s.token == *tok && (s.dc != nil || s.cancel != nil)
	if hit {
		s.cancelled = true
		s.cancelHandler(errCancelled) // under the lock: the handler cannot have moved on to another entry
	}
	s.mu.Unlock()
	if hit {
		ct.stats.cancelled.Add(1)
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
