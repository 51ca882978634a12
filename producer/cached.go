package producer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/metrics"
)

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

	port    port
	keys    bus.Keys
	ids     *ids
	reader  *replyReader // the waiters, the reply stream's key
	send    *sender      // its stream trimming
	adm     *admission   // in-flight slots: a flight holds one
	closing <-chan struct{}
	stats   *counters
	timings *stages
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

// cachedRequest is Request on a cached topic (rq from Request, its spans
// begun): its partition by cache key, the local tier, then the write path,
// which joins an identical request of this process in flight or leads a
// flight whose one round trip (the cache script) answers from the shared
// tier, joins an identical request in flight anywhere, or writes the
// request; then the flight's answer, asking again as this caller when the
// request it waited for gave up (a takeover, through the write path too).
func (p *Producer) cachedRequest(ctx context.Context, rq *request) ([]byte, error) {
	co := &rq.co
	rq.via = viaCache
	if co.hasKey {
		rq.hash = bus.KeyDigest(co.key)
	} else {
		rq.hash = bus.PayloadDigest(rq.payload)
	}
	pt, err := p.parts.pick(ctx, rq.t, co, &rq.hash, rq.start.UnixNano())
	if err != nil {
		return nil, err
	}
	rq.pt = pt
	c := p.cache
	if !co.noCache && c.local != nil && pt.cache.cfg.LocalTTL > 0 {
		if out, ok := c.localHit(rq); ok {
			return out, nil
		}
	}
	lookup := time.Since(rq.start) // the Cache stage of a request the local tier did not answer
	if err := p.write(ctx, rq); err != nil {
		return nil, err
	}
	f := rq.flight
	out, again, err := c.wait(ctx, rq)
	for again {
		_ = p.write(ctx, rq) // ask again, as this caller: its outcome completes f
		f.asking.Store(false)
		out, again, err = c.wait(ctx, rq)
	}
	var re *bus.RemoteError
	if err != nil && errors.As(err, &re) && (ctx.Err() != nil || !rq.deadline.IsZero() && !time.Now().Before(rq.deadline)) {
		// As await: the deadline passed as a remote error arrived (the
		// handler's own "context deadline exceeded", its ctx carrying the
		// same deadline): the caller gave up, a timeout, whichever the
		// caller's timer or the reply came first.
		err = p.stats.ctxErr(cmp.Or(ctx.Err(), context.DeadlineExceeded), "waiting for the reply")
	}
	c.mu.Lock()
	src, entry := f.source, f.entry
	c.mu.Unlock()
	cacheStage := lookup
	if rq.joined {
		src = SourceCoalescedLocal
	} else if src == SourceShared {
		cacheStage += time.Duration(f.rtt.Load())
	}
	p.timings.Record(metrics.Cache, cacheStage)
	rq.src = src
	if err == nil {
		rq.age = f.age
	}
	if co.info != nil {
		*co.info = CacheInfo{Source: src, Age: rq.age, Entry: entry}
	}
	return out, err
}

// localHit serves rq from the local tier.
func (c *cache) localHit(rq *request) ([]byte, bool) {
	t, co, start := rq.pt, &rq.co, rq.start
	tc := t.cache
	e, ok := c.local.GetIfPresent(localKey{t.name, tc.epoch.Load(), rq.hash})
	if !ok {
		return nil, false
	}
	age := start.Sub(e.made)
	if co.maxAge > 0 && age > co.maxAge {
		return nil, false
	}
	out := append([]byte(nil), e.payload...)
	c.stats.hitsLocal.Add(1)
	rq.src, rq.age = SourceLocal, max(age, 0)
	if co.info != nil {
		*co.info = CacheInfo{Source: SourceLocal, Age: rq.age, Entry: e.entry}
	}
	now := time.Now()
	c.refreshMeta(t, now)
	d := now.Sub(start)
	c.timings.Record(metrics.Cache, d)
	c.timings.Record(metrics.EndToEnd, d)
	if ev := c.timings.log.Debug(); ev != nil {
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
		if gen, epoch, err := c.port.CacheMeta(ctx, tc.meta); err == nil {
			tc.learn(gen, epoch)
		}
	}) {
		tc.refreshing.Store(false)
	}
}
