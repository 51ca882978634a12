package producer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Flights (docs/cache.md): one answer obtained for every identical cached
// request of this process that waits for it. Its leader's write (the write
// path's submit: ask) is one round trip to Redis, the cache script, which
// returns the shared answer, joins an identical request in flight
// anywhere, or writes the request and marks it in flight.

// flightKey names a flight: one topic's identical requests.
type flightKey struct {
	topic string
	hash  bus.CacheDigest
}

// flight is one answer being obtained for every identical request of this
// process that waits for it.
type flight struct {
	t    *topic
	fk   flightKey
	done chan struct{} // closed once the result below is set

	// the result, set before done is closed
	payload []byte
	err     error
	age     time.Duration

	// source (for the call that started the flight) and entry (the cache
	// entry id) are set by whichever caller asks Redis, under cache.mu.
	source CacheSource
	entry  string

	noStore bool
	private bool // not in cache.flights (a MaxAge call's own flight)

	// under cache.mu
	refs  int  // callers waiting
	ended bool // the result is set, or every caller left
	w     *waiter
	seq   uint64
	slot  bool // holds an in-flight slot

	// leader is the deadline (unix ns) of the Redis-side request this
	// flight waits for; joined callers with a later deadline ask again once
	// it passed (takeoverGrace later).
	leader atomic.Int64
	asking atomic.Bool
	// rtt is the round trip (ns) of the ask that found the answer in the
	// shared tier.
	rtt atomic.Int64
}

// join makes rq a caller of the flight of its answer: an identical request
// of this process in flight (rq.joined: it writes nothing), or a new one it
// leads (unless it says NoCache or MaxAge: then a flight of its own). The
// first cached request of a topic learns the topic's cache generation
// first.
func (c *cache) join(ctx context.Context, rq *request) bool {
	tc, co := rq.pt.cache, &rq.co
	if tc.metaAt.Load() == 0 {
		// The first cached request of this topic learns its generation.
		if gen, epoch, err := c.port.CacheMeta(ctx, tc.meta); err == nil {
			tc.learn(gen, epoch)
		}
	}
	fk := flightKey{rq.pt.name, rq.hash}
	c.mu.Lock()
	f := c.flights[fk]
	joined := f != nil && !co.noCache && co.maxAge == 0
	if joined {
		f.refs++
	} else {
		f = &flight{t: rq.pt, fk: fk, done: make(chan struct{}), refs: 1, noStore: co.noStore,
			private: co.noCache || co.maxAge > 0 || f != nil}
		if !f.private {
			c.flights[fk] = f
		}
	}
	c.mu.Unlock()
	if joined {
		c.stats.coalescedLocal.Add(1)
	}
	rq.flight, rq.joined = f, joined
	return joined
}

// lead makes seq the correlation id of f (its leader took an in-flight
// slot for it) and registers f's waiter under it: the reply completes f.
func (c *cache) lead(f *flight, seq uint64) {
	w := waiterPool.Get().(*waiter)
	w.fl = f
	c.mu.Lock()
	f.slot, f.w, f.seq = true, w, seq
	c.mu.Unlock()
	c.reader.waiters.add(seq, w)
}

// ask is a cached request's submit: the cache script's round trip for
// rq's flight with rq's envelope (its deadline, this caller's), as the
// flight's leader-to-be. It completes the flight on a shared hit or an
// error, or leaves it waiting for a reply. It encodes env once per try,
// with the topic's current cache generation in its cache key.
func (c *cache) ask(ctx context.Context, rq *request, env *codec.Envelope) {
	f := rq.flight
	t, tc := f.t, f.t.cache
	// The round trip is bounded by the deadline, not cut short by this
	// caller's cancellation: others may wait for its outcome. The deadline
	// cancels it rather than riding on the ctx (see redisx.Detach: a
	// deadline would close the connection when it passed).
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	expire := time.AfterFunc(time.Until(rq.deadline), cancel)
	defer func() {
		expire.Stop()
		cancel()
	}()
	ttl := tc.cfg.TTL
	if f.noStore {
		ttl = 0
	}
	env.CacheTTL = int64(ttl)
	drop := false
	for range 3 {
		gen := tc.gen.Load()
		entry := bus.CacheEntryID(gen, f.fk.hash.Hash())
		c.mu.Lock() // before the round trip: its answer may complete f before Begin returns
		f.entry = entry
		c.mu.Unlock()
		c.reader.waiters.expectCache(rq.seq, entry)
		now := time.Now()
		env.CacheKey, env.Sent = entry, now.UnixNano()
		buf := encode(c.send.cfg, env)
		c.timings.Record(metrics.Encode, time.Since(now))
		args := redisx.BeginArgs{Stream: t.key, Meta: tc.meta, Entry: c.keys.Cache(t.name, entry), Flight: c.keys.Flight(t.name, entry),
			Gen: gen, MaxAge: rq.co.maxAge, Waiter: c.reader.key + " " + env.ID, Now: now, Deadline: rq.deadline,
			MarkerTTL: rq.deadline.Sub(now) + takeoverGrace + time.Second, MaxWaiters: maxFlightWaiters,
			Data: buf.B, Cap: c.send.trimCap(), DropValue: drop, SkipLookup: rq.co.noCache}
		r, err := c.port.Begin(rctx, &args)
		if !redisx.IsConnErr(err) {
			codec.PutBuffer(buf)
		}
		rtt := time.Since(now)
		if err != nil || r.Outcome != redisx.BeginHit {
			c.stats.writes.Add(1)
			c.timings.Record(metrics.Write, rtt)
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && !time.Now().Before(rq.deadline) {
				err = context.DeadlineExceeded // the deadline cancelled rctx
			}
			c.stats.writeErrors.Add(1)
			c.complete(f, result{err: fmt.Errorf("producer: request to %s: %w", t.name, redisx.Classify(err, "the cache script")), writeErr: true}, SourceNone, nil)
			return
		}
		tc.learn(r.Gen, r.Epoch)
		if r.Corrupted {
			c.stats.cacheCorrupt.Add(1)
		}
		var again bool
		if again, drop = c.answered(f, &r, rtt, rq.deadline, args.Entry); !again {
			return
		}
	}
	c.complete(f, result{err: fmt.Errorf("producer: request to %s: the cache generation kept changing", t.name)}, SourceNone, nil)
}

// answered takes the cache script's answer r for f (asked with this
// deadline, stored under key): a shared answer completes f; a request
// joined or written leaves f waiting for its reply; a stale generation, or
// a stored answer that does not decode (drop: delete it), asks again.
func (c *cache) answered(f *flight, r *redisx.BeginResult, rtt time.Duration, deadline time.Time, key string) (again, drop bool) {
	switch r.Outcome {
	case redisx.BeginStale:
		return true, false
	case redisx.BeginHit:
		var v codec.Envelope
		if err := codec.DecodeEnvelope(r.Value, &v); err != nil || v.Kind != codec.KindReply || v.ErrCode != "" || codec.Decompress(&v, maxReplyPayload) != nil {
			c.stats.cacheCorrupt.Add(1)
			c.timings.log.Warn().Str("key", key).Msg("undecodable cache value: deleted, asking a worker")
			return true, true
		}
		c.stats.hitsShared.Add(1)
		f.rtt.Store(int64(rtt))
		c.complete(f, result{payload: v.Payload, cacheTTL: r.TTL}, SourceShared, &r.Age)
	case redisx.BeginJoined:
		c.mu.Lock()
		if f.source == SourceNone {
			c.stats.coalescedRemote.Add(1)
			f.source = SourceCoalescedRemote
		}
		c.mu.Unlock()
		f.leader.Store(r.Leader.UnixNano())
	default: // the request was written
		c.stats.requests.Add(1)
		c.stats.cacheMisses.Add(1)
		if r.Outcome == redisx.BeginTakeOver {
			c.stats.takeovers.Add(1)
		}
		c.mu.Lock()
		if f.source == SourceNone || f.source == SourceCoalescedRemote {
			f.source = SourceHandler
		}
		c.mu.Unlock()
		f.leader.Store(deadline.UnixNano())
	}
	return false, false
}

// wait waits for the answer of rq's flight within rq's deadline. It
// returns again (with rq.seq the flight's and f.asking held) when rq
// should ask again itself, through the write path: the request it waited
// for gave up (its deadline passed takeoverGrace ago) while rq still
// waits; the caller then stores f.asking false and waits again.
func (c *cache) wait(ctx context.Context, rq *request) (out []byte, again bool, err error) {
	f := rq.flight
	var recheck *time.Timer
	defer func() {
		if recheck != nil {
			recheck.Stop()
		}
	}()
	for {
		var retry <-chan time.Time
		if ld := f.leader.Load(); ld != 0 && ld < rq.deadline.UnixNano() {
			d := time.Until(time.Unix(0, ld).Add(takeoverGrace))
			if recheck == nil {
				recheck = time.NewTimer(d)
			} else {
				recheck.Reset(d)
			}
			retry = recheck.C
		}
		var gaveUp error
		select {
		case <-f.done:
			if f.err != nil {
				return nil, false, f.err
			}
			return append([]byte(nil), f.payload...), false, nil
		case <-retry:
			if f.asking.CompareAndSwap(false, true) {
				if ld := f.leader.Load(); ld != 0 && time.Now().UnixNano() >= ld {
					c.mu.Lock()
					rq.seq = f.seq
					c.mu.Unlock()
					return nil, true, nil
				}
				f.asking.Store(false)
			}
			continue
		case <-ctx.Done():
			gaveUp = ctx.Err()
		case <-rq.expired:
			gaveUp = context.DeadlineExceeded
		case <-c.closing:
			c.leave(f)
			return nil, false, fmt.Errorf("producer: request: %w", bus.ErrClosed)
		}
		select {
		case <-f.done: // answered meanwhile
			continue
		default:
		}
		c.leave(f)
		return nil, false, c.stats.ctxErr(gaveUp, "waiting for the reply")
	}
}

// leave drops one caller of f; the last one out ends an unanswered flight
// (a reply that comes later is counted late).
func (c *cache) leave(f *flight) {
	c.mu.Lock()
	f.refs--
	if f.refs > 0 || f.ended {
		c.mu.Unlock()
		return
	}
	c.endLocked(f)
	c.mu.Unlock()
}

// endLocked takes f out of the flight map and gives back its waiter and
// slot. c.mu is held.
func (c *cache) endLocked(f *flight) {
	f.ended = true
	if !f.private && c.flights[f.fk] == f {
		delete(c.flights, f.fk)
	}
	if f.w != nil && c.reader.waiters.take(f.seq) != nil {
		f.w.fl = nil
		putWaiter(f.w)
	}
	f.w = nil
	if f.slot {
		f.slot = false
		c.adm.release()
	}
}

// complete sets f's result (once) and wakes its callers. age is the
// answer's age when it came from the shared tier.
func (c *cache) complete(f *flight, r result, src CacheSource, age *time.Duration) {
	c.mu.Lock()
	if f.ended {
		c.mu.Unlock()
		return
	}
	c.endLocked(f)
	if src != SourceNone {
		f.source = src
	}
	entry := f.entry
	c.mu.Unlock()
	if age != nil {
		f.age = *age
	}
	f.payload, f.err = r.payload, r.err
	if r.replied { // the stages of the request a worker answered
		c.timings.Record(waitStage(r.retried), r.queue)
		c.timings.Record(metrics.Handler, r.handler)
		c.timings.Record(metrics.ReplyTransit, r.transit)
		c.timings.Record(metrics.Decode, r.decode)
	}
	if r.err == nil {
		c.stats.replies.Add(1)
		c.keepLocal(f, r.cacheTTL, entry)
	} else if !r.writeErr {
		var re *bus.RemoteError
		if errors.As(r.err, &re) {
			c.stats.remoteErrors.Add(1)
		}
	}
	close(f.done)
}

// keepLocal keeps f's answer in the local tier for at most the time the
// worker stored it for.
func (c *cache) keepLocal(f *flight, stored time.Duration, entry string) {
	tc := f.t.cache
	if c.local == nil || f.noStore || stored <= 0 || tc.cfg.LocalTTL <= 0 {
		return
	}
	ttl := min(tc.cfg.LocalTTL, stored-f.age)
	if ttl <= 0 {
		return
	}
	c.local.Set(localKey{f.t.name, tc.epoch.Load(), f.fk.hash},
		&localEntry{payload: f.payload, made: time.Now().Add(-f.age), ttl: ttl, entry: entry})
}
