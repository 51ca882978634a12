package producer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/rueidis"
	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// The cached request path (docs/cache.md): the local tier, then one flight
// per identical request in this process, whose one round trip to Redis
// returns the shared answer, joins an identical request in flight anywhere,
// or writes the request and marks it in flight.

// cache is the response cache's side in the producer (docs/cache.md): the
// local tier (answers kept in this process's memory, bounded by bytes;
// nil when off), the flights of this process's cached requests (one answer
// obtained for every identical request waiting for it), and the round
// trip to Redis (redisx.Begin, the cache script) that answers from the
// shared tier, joins an identical request in flight anywhere, or writes
// the request and marks it in flight. Its background reads of cache
// epochs run on the producer's background runner; Close stops the local
// tier's goroutines (stop).
type cache struct {
	local   *otter.Cache[localKey, *localEntry]
	mu      sync.Mutex // guards flights and each flight's fields marked so
	flights map[flightKey]*flight

	rc      rueidis.Client
	keys    bus.Keys
	ids     *ids
	reader  *replyReader
	send    *sender // its stream trimming
	slots   chan struct{}
	closing <-chan struct{}
	stats   *counters
	timings *metrics.Recorder
	log     zerolog.Logger
	bg      *background
}

// newCache returns the response cache of cfg's cached topics (nil when
// none is cached).
func newCache(cfg *Config, stats *counters) (*cache, error) {
	if len(cfg.Cache) == 0 {
		return nil, nil
	}
	c := &cache{flights: make(map[flightKey]*flight), stats: stats}
	if cfg.LocalCacheBytes > 0 {
		local, err := newLocalTier(cfg.LocalCacheBytes, &stats.localEvicted)
		if err != nil {
			return nil, fmt.Errorf("producer: local cache: %w", err)
		}
		c.local = local
	}
	return c, nil
}

// stop stops the local tier's goroutines.
func (c *cache) stop() {
	if c.local != nil {
		c.local.StopAllGoroutines()
	}
}

// topicCache is a cached topic's state.
type topicCache struct {
	cfg  CacheConfig
	meta string // the topic's metadata key
	// gen and epoch are the topic's cache generation and invalidation epoch
	// as last seen; metaAt is when (unix ns; 0: never).
	gen, epoch atomic.Uint64
	metaAt     atomic.Int64
	refreshing atomic.Bool
}

func (tc *topicCache) learn(gen, epoch uint64) {
	tc.gen.Store(gen)
	tc.epoch.Store(epoch)
	tc.metaAt.Store(time.Now().UnixNano())
}

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
	// entry id) are set by whichever caller asks Redis, under p.cache.mu.
	source CacheSource
	entry  string

	noStore bool
	private bool // not in p.cache.flights (a MaxAge call's own flight)

	// under p.cache.mu
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

// cachedRequest is Request on a cached topic.
func (p *Producer) cachedRequest(ctx context.Context, t *topic, payload []byte, co *callOptions, start time.Time) ([]byte, error) {
	var h bus.CacheDigest
	if co.hasKey {
		h = bus.KeyDigest(co.key)
	} else {
		h = bus.PayloadDigest(payload)
	}
	root := t
	t, err := p.parts.pick(ctx, t, co, &h, start.UnixNano())
	if err != nil {
		return nil, err
	}
	tc := t.cache
	if !co.noCache && p.cache.local != nil && tc.cfg.LocalTTL > 0 {
		if out, ok := p.cache.localHit(t, h, co, start); ok {
			return out, nil
		}
	}
	lookup := time.Since(start) // the Cache stage of a request the local tier did not answer
	tok, err := p.adm.request(ctx, t, co.wait, start)
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	var expired <-chan time.Time
	if !ok {
		deadline = start.Add(p.cfg.RequestTimeout)
		tm := time.NewTimer(p.cfg.RequestTimeout)
		defer tm.Stop()
		expired = tm.C
	}
	if err := p.reader.ensure(ctx, deadline); err != nil {
		p.adm.report(t, tok, err, start)
		return nil, err
	}
	if tc.metaAt.Load() == 0 {
		// The first cached request of this topic learns its generation
		// (without handing the caller's deadline to rueidis: redisx.Detach).
		mctx, cancel := redisx.Detach(ctx)
		if gen, epoch, err := redisx.CacheMeta(mctx, p.c.Redis(), tc.meta); err == nil {
			tc.learn(gen, epoch)
		}
		cancel()
	}
	admitted := time.Now()
	fk := flightKey{t.name, h}
	p.cache.mu.Lock()
	f := p.cache.flights[fk]
	joined := f != nil && !co.noCache && co.maxAge == 0
	if joined {
		f.refs++
	} else {
		f = &flight{t: t, fk: fk, done: make(chan struct{}), refs: 1, noStore: co.noStore,
			private: co.noCache || co.maxAge > 0 || f != nil}
		if !f.private {
			p.cache.flights[fk] = f
		}
	}
	p.cache.mu.Unlock()
	if joined {
		p.stats.coalescedLocal.Add(1)
	} else if err := p.cache.startFlight(ctx, f, payload, co, deadline, expired); err != nil {
		p.cache.leave(f)
		p.adm.report(t, tok, err, start)
		return nil, err
	}
	out, err := p.cache.waitFlight(ctx, f, payload, co, deadline, expired)
	p.adm.report(t, tok, err, start)
	p.cache.mu.Lock()
	src, entry := f.source, f.entry
	p.cache.mu.Unlock()
	cacheStage := lookup
	if joined {
		src = SourceCoalescedLocal
	} else if src == SourceShared {
		cacheStage += time.Duration(f.rtt.Load())
	}
	p.timings.Record(metrics.Cache, cacheStage)
	if co.info != nil {
		*co.info = CacheInfo{Source: src, Entry: entry}
		if err == nil {
			co.info.Age = f.age
		}
	}
	p.recordCached(root.name, start, admitted, src, err)
	return out, err
}

// localHit serves a request from the local tier.
func (c *cache) localHit(t *topic, h bus.CacheDigest, co *callOptions, start time.Time) ([]byte, bool) {
	tc := t.cache
	e, ok := c.local.GetIfPresent(localKey{t.name, tc.epoch.Load(), h})
	if !ok {
		return nil, false
	}
	age := start.Sub(e.made)
	if co.maxAge > 0 && age > co.maxAge {
		return nil, false
	}
	out := append([]byte(nil), e.payload...)
	c.stats.hitsLocal.Add(1)
	if co.info != nil {
		*co.info = CacheInfo{Source: SourceLocal, Age: max(age, 0), Entry: e.entry}
	}
	now := time.Now()
	c.refreshMeta(t, now)
	d := now.Sub(start)
	c.timings.Record(metrics.Cache, d)
	c.timings.Record(metrics.EndToEnd, d)
	if ev := c.log.Debug(); ev != nil {
		ev.Str("topic", t.name).Str("outcome", "ok").Str("cache", SourceLocal.String()).
			Float64("cache_us", metrics.Micros(d)).Float64("end_to_end_us", metrics.Micros(d)).Msg("request timing")
	}
	return out, true
}

// refreshMeta re-reads the topic's epoch in the background when it is older
// than metaRefresh, so that an invalidation reaches this process's local
// tier within about a second even while every request is a local hit.
func (c *cache) refreshMeta(t *topic, now time.Time) {
	tc := t.cache
	if now.UnixNano()-tc.metaAt.Load() < int64(metaRefresh) || !tc.refreshing.CompareAndSwap(false, true) {
		return
	}
	if !c.bg.run(func(ctx context.Context) {
		defer tc.refreshing.Store(false)
		ctx, cancel := context.WithTimeout(ctx, respondersTimeout)
		defer cancel()
		if gen, epoch, err := redisx.CacheMeta(ctx, c.rc, tc.meta); err == nil {
			tc.learn(gen, epoch)
		}
	}) {
		tc.refreshing.Store(false)
	}
}

// startFlight registers f's correlation id and asks Redis.
func (c *cache) startFlight(ctx context.Context, f *flight, payload []byte, co *callOptions, deadline time.Time, expired <-chan time.Time) error {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errSlotWait, c.stats.ctxErr(ctx.Err(), "waiting for an in-flight slot"))
	case <-expired:
		return fmt.Errorf("%w: %w", errSlotWait, c.stats.ctxErr(context.DeadlineExceeded, "waiting for an in-flight slot"))
	case <-c.closing:
		return fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}
	w := waiterPool.Get().(*waiter)
	w.fl = f
	seq := c.ids.next()
	c.mu.Lock()
	f.slot, f.w, f.seq = true, w, seq
	c.mu.Unlock()
	c.reader.waiters.add(seq, w)
	c.ask(ctx, f, payload, co, deadline)
	return nil
}

// ask runs the cached path's round trip for f, as its leader-to-be with
// this deadline: it completes f on a shared hit or an error, or leaves f
// waiting for a reply. A caller asks again (a takeover) when the leader it
// waited for gave up.
func (c *cache) ask(ctx context.Context, f *flight, payload []byte, co *callOptions, deadline time.Time) {
	t, tc := f.t, f.t.cache
	// The round trip is bounded by the deadline, not cut short by this
	// caller's cancellation: others may wait for its outcome. The deadline
	// cancels it rather than riding on the ctx (see redisx.Detach: a
	// deadline would close the connection when it passed).
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	expire := time.AfterFunc(time.Until(deadline), cancel)
	defer func() {
		expire.Stop()
		cancel()
	}()
	id := c.ids.id(f.seq)
	ttl := tc.cfg.TTL
	if f.noStore {
		ttl = 0
	}
	drop := false
	for range 3 {
		gen := tc.gen.Load()
		entry := bus.CacheEntryID(gen, f.fk.hash.Hash())
		c.mu.Lock() // before the round trip: its answer may complete f before Begin returns
		f.entry = entry
		c.mu.Unlock()
		c.reader.waiters.expectCache(f.seq, entry)
		now := time.Now()
		env := codec.Envelope{Kind: codec.KindRequest, ID: id, ReplyTo: c.reader.key, Deadline: deadline.UnixNano(),
			Sent: now.UnixNano(), Payload: payload, Headers: co.headers, CacheKey: entry, CacheTTL: int64(ttl)}
		buf := codec.Encode(&env)
		c.timings.Record(metrics.Encode, time.Since(now))
		args := redisx.BeginArgs{Stream: t.key, Meta: tc.meta, Entry: c.keys.Cache(t.name, entry), Flight: c.keys.Flight(t.name, entry),
			Gen: gen, MaxAge: co.maxAge, Waiter: c.reader.key + " " + id, Now: now, Deadline: deadline,
			MarkerTTL: deadline.Sub(now) + takeoverGrace + time.Second, MaxWaiters: maxFlightWaiters,
			Data: buf.B, Cap: c.send.trimCap(), DropValue: drop, SkipLookup: co.noCache}
		r, err := redisx.Begin(rctx, c.rc, &args)
		if !redisx.IsConnErr(err) {
			codec.PutBuffer(buf)
		}
		rtt := time.Since(now)
		if err != nil || r.Outcome != redisx.BeginHit {
			c.stats.writes.Add(1)
			c.timings.Record(metrics.Write, rtt)
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && !time.Now().Before(deadline) {
				err = context.DeadlineExceeded // the deadline cancelled rctx
			}
			c.stats.writeErrors.Add(1)
			c.complete(f, result{err: fmt.Errorf("producer: request to %s: %w", t.name, redisx.Unavailable(err)), writeErr: true}, SourceNone, nil)
			return
		}
		tc.learn(r.Gen, r.Epoch)
		if r.Corrupted {
			c.stats.cacheCorrupt.Add(1)
		}
		switch r.Outcome {
		case redisx.BeginStale:
			continue
		case redisx.BeginHit:
			var v codec.Envelope
			if err := codec.DecodeEnvelope(r.Value, &v); err != nil || v.Kind != codec.KindReply || v.ErrCode != "" {
				c.stats.cacheCorrupt.Add(1)
				c.log.Warn().Str("key", args.Entry).Msg("undecodable cache value: deleted, asking a worker")
				drop = true
				continue
			}
			c.stats.hitsShared.Add(1)
			f.rtt.Store(int64(rtt))
			c.complete(f, result{payload: v.Payload, cacheTTL: r.TTL}, SourceShared, &r.Age)
			return
		case redisx.BeginJoined:
			c.mu.Lock()
			if f.source == SourceNone {
				c.stats.coalescedRemote.Add(1)
				f.source = SourceCoalescedRemote
			}
			c.mu.Unlock()
			f.leader.Store(r.Leader.UnixNano())
			return
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
			return
		}
	}
	c.complete(f, result{err: fmt.Errorf("producer: request to %s: the cache generation kept changing", t.name)}, SourceNone, nil)
}

// waitFlight waits for f's answer within this caller's deadline.
func (c *cache) waitFlight(ctx context.Context, f *flight, payload []byte, co *callOptions, deadline time.Time, expired <-chan time.Time) ([]byte, error) {
	var recheck *time.Timer
	defer func() {
		if recheck != nil {
			recheck.Stop()
		}
	}()
	for {
		var again <-chan time.Time
		if ld := f.leader.Load(); ld != 0 && ld < deadline.UnixNano() {
			d := time.Until(time.Unix(0, ld).Add(takeoverGrace))
			if recheck == nil {
				recheck = time.NewTimer(d)
			} else {
				recheck.Reset(d)
			}
			again = recheck.C
		}
		var gaveUp error
		select {
		case <-f.done:
			if f.err != nil {
				return nil, f.err
			}
			return append([]byte(nil), f.payload...), nil
		case <-again:
			if f.asking.CompareAndSwap(false, true) {
				if ld := f.leader.Load(); ld != 0 && time.Now().UnixNano() >= ld {
					c.ask(ctx, f, payload, co, deadline)
				}
				f.asking.Store(false)
			}
			continue
		case <-ctx.Done():
			gaveUp = ctx.Err()
		case <-expired:
			gaveUp = context.DeadlineExceeded
		case <-c.closing:
			c.leave(f)
			return nil, fmt.Errorf("producer: request: %w", bus.ErrClosed)
		}
		select {
		case <-f.done: // answered meanwhile
			continue
		default:
		}
		c.leave(f)
		return nil, c.stats.ctxErr(gaveUp, "waiting for the reply")
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
		<-c.slots
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
