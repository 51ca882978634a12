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

// The cached request path (docs/cache.md): the local tier, then one flight
// per identical request in this process, whose one round trip to Redis
// returns the shared answer, joins an identical request in flight anywhere,
// or writes the request and marks it in flight.

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
	// entry id) are set by whichever caller asks Redis, under p.fmu.
	source CacheSource
	entry  string

	noStore bool
	private bool // not in p.flights (a MaxAge call's own flight)

	// under p.fmu
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
	if !co.noCache && p.local != nil && tc.cfg.LocalTTL > 0 {
		if out, ok := p.localHit(t, h, co, start); ok {
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
	p.fmu.Lock()
	f := p.flights[fk]
	joined := f != nil && !co.noCache && co.maxAge == 0
	if joined {
		f.refs++
	} else {
		f = &flight{t: t, fk: fk, done: make(chan struct{}), refs: 1, noStore: co.noStore,
			private: co.noCache || co.maxAge > 0 || f != nil}
		if !f.private {
			p.flights[fk] = f
		}
	}
	p.fmu.Unlock()
	if joined {
		p.stats.coalescedLocal.Add(1)
	} else if err := p.startFlight(ctx, f, payload, co, deadline, expired); err != nil {
		p.leave(f)
		p.adm.report(t, tok, err, start)
		return nil, err
	}
	out, err := p.waitFlight(ctx, f, payload, co, deadline, expired)
	p.adm.report(t, tok, err, start)
	p.fmu.Lock()
	src, entry := f.source, f.entry
	p.fmu.Unlock()
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
func (p *Producer) localHit(t *topic, h bus.CacheDigest, co *callOptions, start time.Time) ([]byte, bool) {
	tc := t.cache
	e, ok := p.local.GetIfPresent(localKey{t.name, tc.epoch.Load(), h})
	if !ok {
		return nil, false
	}
	age := start.Sub(e.made)
	if co.maxAge > 0 && age > co.maxAge {
		return nil, false
	}
	out := append([]byte(nil), e.payload...)
	p.stats.hitsLocal.Add(1)
	if co.info != nil {
		*co.info = CacheInfo{Source: SourceLocal, Age: max(age, 0), Entry: e.entry}
	}
	now := time.Now()
	p.refreshMeta(t, now)
	d := now.Sub(start)
	p.timings.Record(metrics.Cache, d)
	p.timings.Record(metrics.EndToEnd, d)
	if ev := p.log.Debug(); ev != nil {
		ev.Str("topic", t.name).Str("outcome", "ok").Str("cache", SourceLocal.String()).
			Float64("cache_us", metrics.Micros(d)).Float64("end_to_end_us", metrics.Micros(d)).Msg("request timing")
	}
	return out, true
}

// refreshMeta re-reads the topic's epoch in the background when it is older
// than metaRefresh, so that an invalidation reaches this process's local
// tier within about a second even while every request is a local hit.
func (p *Producer) refreshMeta(t *topic, now time.Time) {
	tc := t.cache
	if now.UnixNano()-tc.metaAt.Load() < int64(metaRefresh) || !tc.refreshing.CompareAndSwap(false, true) {
		return
	}
	if !p.bg.run(func(ctx context.Context) {
		defer tc.refreshing.Store(false)
		ctx, cancel := context.WithTimeout(ctx, respondersTimeout)
		defer cancel()
		if gen, epoch, err := redisx.CacheMeta(ctx, p.c.Redis(), tc.meta); err == nil {
			tc.learn(gen, epoch)
		}
	}) {
		tc.refreshing.Store(false)
	}
}

// startFlight registers f's correlation id and asks Redis.
func (p *Producer) startFlight(ctx context.Context, f *flight, payload []byte, co *callOptions, deadline time.Time, expired <-chan time.Time) error {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errSlotWait, p.stats.ctxErr(ctx.Err(), "waiting for an in-flight slot"))
	case <-expired:
		return fmt.Errorf("%w: %w", errSlotWait, p.stats.ctxErr(context.DeadlineExceeded, "waiting for an in-flight slot"))
	case <-p.closing:
		return fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}
	w := waiterPool.Get().(*waiter)
	w.fl = f
	seq := p.ids.next()
	p.fmu.Lock()
	f.slot, f.w, f.seq = true, w, seq
	p.fmu.Unlock()
	p.reader.waiters.add(seq, w)
	p.ask(ctx, f, payload, co, deadline)
	return nil
}

// ask runs the cached path's round trip for f, as its leader-to-be with
// this deadline: it completes f on a shared hit or an error, or leaves f
// waiting for a reply. A caller asks again (a takeover) when the leader it
// waited for gave up.
func (p *Producer) ask(ctx context.Context, f *flight, payload []byte, co *callOptions, deadline time.Time) {
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
	id := p.ids.id(f.seq)
	ttl := tc.cfg.TTL
	if f.noStore {
		ttl = 0
	}
	drop := false
	for range 3 {
		gen := tc.gen.Load()
		entry := bus.CacheEntryID(gen, f.fk.hash.Hash())
		p.fmu.Lock() // before the round trip: its answer may complete f before Begin returns
		f.entry = entry
		p.fmu.Unlock()
		p.reader.waiters.expectCache(f.seq, entry)
		now := time.Now()
		env := codec.Envelope{Kind: codec.KindRequest, ID: id, ReplyTo: p.reader.key, Deadline: deadline.UnixNano(),
			Sent: now.UnixNano(), Payload: payload, Headers: co.headers, CacheKey: entry, CacheTTL: int64(ttl)}
		buf := codec.Encode(&env)
		p.timings.Record(metrics.Encode, time.Since(now))
		args := redisx.BeginArgs{Stream: t.key, Meta: tc.meta, Entry: p.keys.Cache(t.name, entry), Flight: p.keys.Flight(t.name, entry),
			Gen: gen, MaxAge: co.maxAge, Waiter: p.reader.key + " " + id, Now: now, Deadline: deadline,
			MarkerTTL: deadline.Sub(now) + takeoverGrace + time.Second, MaxWaiters: maxFlightWaiters,
			Data: buf.B, Cap: p.send.trimCap(), DropValue: drop, SkipLookup: co.noCache}
		r, err := redisx.Begin(rctx, p.c.Redis(), &args)
		if !redisx.IsConnErr(err) {
			codec.PutBuffer(buf)
		}
		rtt := time.Since(now)
		if err != nil || r.Outcome != redisx.BeginHit {
			p.stats.writes.Add(1)
			p.timings.Record(metrics.Write, rtt)
		}
		if err != nil {
			if errors.Is(err, context.Canceled) && !time.Now().Before(deadline) {
				err = context.DeadlineExceeded // the deadline cancelled rctx
			}
			p.stats.writeErrors.Add(1)
			p.complete(f, result{err: fmt.Errorf("producer: request to %s: %w", t.name, redisx.Unavailable(err)), writeErr: true}, SourceNone, nil)
			return
		}
		tc.learn(r.Gen, r.Epoch)
		if r.Corrupted {
			p.stats.cacheCorrupt.Add(1)
		}
		switch r.Outcome {
		case redisx.BeginStale:
			continue
		case redisx.BeginHit:
			var v codec.Envelope
			if err := codec.DecodeEnvelope(r.Value, &v); err != nil || v.Kind != codec.KindReply || v.ErrCode != "" {
				p.stats.cacheCorrupt.Add(1)
				p.log.Warn().Str("key", args.Entry).Msg("undecodable cache value: deleted, asking a worker")
				drop = true
				continue
			}
			p.stats.hitsShared.Add(1)
			f.rtt.Store(int64(rtt))
			p.complete(f, result{payload: v.Payload, cacheTTL: r.TTL}, SourceShared, &r.Age)
			return
		case redisx.BeginJoined:
			p.fmu.Lock()
			if f.source == SourceNone {
				p.stats.coalescedRemote.Add(1)
				f.source = SourceCoalescedRemote
			}
			p.fmu.Unlock()
			f.leader.Store(r.Leader.UnixNano())
			return
		default: // the request was written
			p.stats.requests.Add(1)
			p.stats.cacheMisses.Add(1)
			if r.Outcome == redisx.BeginTakeOver {
				p.stats.takeovers.Add(1)
			}
			p.fmu.Lock()
			if f.source == SourceNone || f.source == SourceCoalescedRemote {
				f.source = SourceHandler
			}
			p.fmu.Unlock()
			f.leader.Store(deadline.UnixNano())
			return
		}
	}
	p.complete(f, result{err: fmt.Errorf("producer: request to %s: the cache generation kept changing", t.name)}, SourceNone, nil)
}

// waitFlight waits for f's answer within this caller's deadline.
func (p *Producer) waitFlight(ctx context.Context, f *flight, payload []byte, co *callOptions, deadline time.Time, expired <-chan time.Time) ([]byte, error) {
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
					p.ask(ctx, f, payload, co, deadline)
				}
				f.asking.Store(false)
			}
			continue
		case <-ctx.Done():
			gaveUp = ctx.Err()
		case <-expired:
			gaveUp = context.DeadlineExceeded
		case <-p.closing:
			p.leave(f)
			return nil, fmt.Errorf("producer: request: %w", bus.ErrClosed)
		}
		select {
		case <-f.done: // answered meanwhile
			continue
		default:
		}
		p.leave(f)
		return nil, p.stats.ctxErr(gaveUp, "waiting for the reply")
	}
}

// leave drops one caller of f; the last one out ends an unanswered flight
// (a reply that comes later is counted late).
func (p *Producer) leave(f *flight) {
	p.fmu.Lock()
	f.refs--
	if f.refs > 0 || f.ended {
		p.fmu.Unlock()
		return
	}
	p.endLocked(f)
	p.fmu.Unlock()
}

// endLocked takes f out of the flight map and gives back its waiter and
// slot. p.fmu is held.
func (p *Producer) endLocked(f *flight) {
	f.ended = true
	if !f.private && p.flights[f.fk] == f {
		delete(p.flights, f.fk)
	}
	if f.w != nil && p.reader.waiters.take(f.seq) != nil {
		f.w.fl = nil
		putWaiter(f.w)
	}
	f.w = nil
	if f.slot {
		f.slot = false
		<-p.slots
	}
}

// complete sets f's result (once) and wakes its callers. age is the
// answer's age when it came from the shared tier.
func (p *Producer) complete(f *flight, r result, src CacheSource, age *time.Duration) {
	p.fmu.Lock()
	if f.ended {
		p.fmu.Unlock()
		return
	}
	p.endLocked(f)
	if src != SourceNone {
		f.source = src
	}
	entry := f.entry
	p.fmu.Unlock()
	if age != nil {
		f.age = *age
	}
	f.payload, f.err = r.payload, r.err
	if r.replied { // the stages of the request a worker answered
		p.timings.Record(waitStage(r.retried), r.queue)
		p.timings.Record(metrics.Handler, r.handler)
		p.timings.Record(metrics.ReplyTransit, r.transit)
		p.timings.Record(metrics.Decode, r.decode)
	}
	if r.err == nil {
		p.stats.replies.Add(1)
		p.keepLocal(f, r.cacheTTL, entry)
	} else if !r.writeErr {
		var re *bus.RemoteError
		if errors.As(r.err, &re) {
			p.stats.remoteErrors.Add(1)
		}
	}
	close(f.done)
}

// keepLocal keeps f's answer in the local tier for at most the time the
// worker stored it for.
func (p *Producer) keepLocal(f *flight, stored time.Duration, entry string) {
	tc := f.t.cache
	if p.local == nil || f.noStore || stored <= 0 || tc.cfg.LocalTTL <= 0 {
		return
	}
	ttl := min(tc.cfg.LocalTTL, stored-f.age)
	if ttl <= 0 {
		return
	}
	p.local.Set(localKey{f.t.name, tc.epoch.Load(), f.fk.hash},
		&localEntry{payload: f.payload, made: time.Now().Add(-f.age), ttl: ttl, entry: entry})
}
