package consumer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

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
// the oldest-expiring are forgotten first (those requests are handled if
// picked up, as without cancellation).
const maxCancelled = 100_000

// cancelKey identifies a request across producers: its reply stream and
// correlation id.
type cancelKey struct{ to, id string }

// cancelSet is the requests cancelled recently, each until its deadline.
type cancelSet struct {
	n  atomic.Int64 // len(m), read without the lock by the hot path
	mu sync.Mutex
	m  map[cancelKey]int64 // -> unix ms after which it no longer matters
}

// has reports whether the request was cancelled. It costs one atomic load
// while nothing is cancelled.
func (s *cancelSet) has(to, id string) bool {
	if s.n.Load() == 0 {
		return false
	}
	s.mu.Lock()
	_, ok := s.m[cancelKey{to, id}]
	s.mu.Unlock()
	return ok
}

// add remembers a cancelled request until until (unix ms), pruning the
// expired ones when the set is large.
func (s *cancelSet) add(to, id string, until, now int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[cancelKey]int64{}
	}
	if len(s.m) >= maxCancelled/2 {
		s.pruneLocked(now)
	}
	if len(s.m) >= maxCancelled {
		var victim cancelKey
		first := true
		var soonest int64
		for k, u := range s.m {
			if first || u < soonest {
				victim, soonest, first = k, u, false
			}
		}
		delete(s.m, victim)
	}
	s.m[cancelKey{to, id}] = until
	s.n.Store(int64(len(s.m)))
}

// prune forgets requests whose deadline passed.
func (s *cancelSet) prune(now int64) {
	s.mu.Lock()
	s.pruneLocked(now)
	s.mu.Unlock()
}

func (s *cancelSet) pruneLocked(now int64) {
	for k, u := range s.m {
		if u < now {
			delete(s.m, k)
		}
	}
	s.n.Store(int64(len(s.m)))
}

// controlLoop reads the topic's control stream while ctx lives: cancel
// notices cancel running handlers and are remembered (see cancelSet); wake
// notices go to the delay loop. A refused read (an ACL without the control
// key) is logged once and retried slowly: the worker then serves without
// cancellation.
//
// The first reads catch up with the window without blocking; ready is
// closed once they did (or failed), so that Run reads no entry before it
// knows what was cancelled.
func (c *Consumer) controlLoop(ctx context.Context, running []workerSlot, wake chan<- int64, ready chan<- struct{}) {
	key := c.keys.Control(c.cfg.Topic)
	after := redisx.ControlStart(time.Now(), controlWindow)
	out := redisx.Outage{Log: c.log, What: "control stream " + key}
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
		block := c.cfg.Block
		if catchingUp {
			block = 0
		}
		notices, last, bad, err := redisx.ReadControl(rd.For(ctx, c.cfg.Block), c.c.Redis(), key, after, batch, block)
		if err != nil || (last == "" && bad == 0) || len(notices)+bad < batch {
			caughtUp() // an error: serve all the same, without what was missed
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if redisx.IsRedisReply(err) {
				if !refused {
					refused = true
					c.log.Warn().Err(err).Str("key", key).Msg("Redis refuses reading the control stream: cancellations and delayed-entry wake-ups do not reach this worker (logged once)")
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
			c.stats.badControl.Add(uint64(bad))
		}
		now := time.Now().UnixMilli()
		for _, n := range notices {
			switch n.Op {
			case redisx.OpCancel:
				if n.Until != 0 && n.Until < now {
					continue // its deadline passed: nothing left to cancel
				}
				until := n.Until
				if until == 0 || until > now+int64(controlWindow/time.Millisecond) {
					until = now + int64(controlWindow/time.Millisecond)
				}
				c.cancels.add(n.To, n.Req, until, now)
				c.cancelRunning(running, n.To, n.Req)
			case redisx.OpWake:
				select {
				case wake <- n.Until:
				default: // the delay loop is busy: it promotes on its next turn
				}
			}
		}
		if time.Since(lastPrune) > time.Minute {
			lastPrune = time.Now()
			c.cancels.prune(now)
		}
	}
}

// cancelRunning cancels the handler running the request (to, id), if any
// of this consumer's workers runs it.
func (c *Consumer) cancelRunning(running []workerSlot, to, id string) {
	for i := range running {
		s := &running[i]
		s.mu.Lock()
		hit := s.id != "" && !s.cancelled && s.reqID == id && s.replyTo == to && (s.dc != nil || s.cancel != nil)
		if hit {
			s.cancelled = true
			s.cancelHandler(errCancelled) // under the lock: the handler cannot have moved on to another entry
		}
		s.mu.Unlock()
		if hit {
			c.stats.cancelled.Add(1)
		}
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
