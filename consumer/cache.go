package consumer

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// The worker's side of the response cache (docs/cache.md): a cached request
// names its cache entry; once the handler answered, the worker stores the
// answer (unless it may not be stored), takes the requests that joined it in
// flight and answers each of them too.

// cacheSettle is what a finished cached request leaves to the acker.
type cacheSettle struct {
	entry, flight string         // keys
	ttl           time.Duration  // 0: do not store
	env           codec.Envelope // the reply, re-addressed to every joined request
}

// cacheOf validates a request's cache entry id (it comes from the stream:
// anyone who can write the topic wrote it) and how long its answer may be
// stored. A malformed id makes the request an uncached one.
func (c *Consumer) cacheOf(j *job, id string) {
	if _, _, ok := bus.ParseCacheEntryID(j.env.CacheKey); !ok {
		c.warnEntry(entryWarning{id: id, attempt: j.msg.Attempt, reason: "cache", request: true,
			err: "malformed cache entry id", msg: "cached request with a malformed cache entry id: answered, not cached"})
		return
	}
	ttl := min(max(time.Duration(j.env.CacheTTL), 0), DefaultCacheMaxTTL)
	switch {
	case c.cfg.CacheTTL < 0:
		ttl = 0
	case c.cfg.CacheTTL > 0:
		ttl = min(ttl, c.cfg.CacheTTL)
	}
	j.cache, j.cacheTTL = j.env.CacheKey, ttl
	j.msg.CacheTTL = ttl
}

// settleOf decides what becomes of a cached request's answer: stored for
// the time the handler allowed (errors never), and sent to every request
// that joined it. A handler that ran out of the request's deadline settles
// nothing: the joined requests, whose deadlines may be later, ask again.
// It marks reply with the entry and the time it is stored for.
func (c *Consumer) settleOf(j *job, reply *codec.Envelope, err error, ended time.Time) *cacheSettle {
	if err != nil && (errors.Is(err, context.DeadlineExceeded) || (!j.msg.Deadline.IsZero() && !ended.Before(j.msg.Deadline))) {
		return nil
	}
	ttl := time.Duration(0)
	if err == nil {
		ttl = min(max(j.msg.CacheTTL, 0), j.cacheTTL)
		if len(reply.Payload) > c.cfg.CacheMaxValue {
			ttl = 0
		}
		if ttl > 0 && ttl < time.Millisecond {
			ttl = 0 // Redis stores in milliseconds
		}
	}
	reply.CacheKey, reply.CacheTTL = j.cache, int64(ttl)
	s := &cacheSettle{entry: c.keys.Cache(c.cfg.Topic, j.cache), flight: c.keys.Flight(c.cfg.Topic, j.cache), ttl: ttl, env: *reply}
	return s
}

// waiter parses one joined request taken from a flight marker:
// "<reply stream> <correlation id>". Nothing read from Redis is trusted:
// the reply stream must be one of this bus's reply streams.
func (c *Consumer) waiter(w string) (replyTo, id string, ok bool) {
	i := strings.LastIndexByte(w, ' ')
	if i <= 0 || i == len(w)-1 || len(w)-i-1 > 64 {
		return "", "", false
	}
	replyTo, id = w[:i], w[i+1:]
	if _, ok := c.keys.ParseReply(replyTo); !ok {
		return "", "", false
	}
	return replyTo, id, true
}

// settle runs the batch's cache settles in one round trip and returns the
// replies to the requests that joined them, to be written with the batch's
// own replies. Their buffers go back to the pool after the write.
func (a *acker) settle(batch []completion) []waiterReply {
	c := a.c
	var idx []int
	for i := range batch {
		if batch[i].cache != nil && batch[i].dead == nil {
			idx = append(idx, i)
		}
	}
	if idx == nil {
		return nil
	}
	settles := make([]redisx.Settle, len(idx))
	for k, i := range idx {
		d := &batch[i]
		settles[k] = redisx.Settle{Entry: d.cache.entry, Flight: d.cache.flight, Value: d.reply.B, TTL: d.cache.ttl, TakeWaiters: true}
	}
	res, ok := retry(a, nil, func(out []redisx.SettleResult) []redisx.SettleResult {
		return redisx.SettleMulti(a.ctx, c.c.Redis(), settles, out)
	}, func(r redisx.SettleResult) error { return r.Err })
	if !ok {
		return nil
	}
	var out []waiterReply
	for k, r := range res {
		d := &batch[idx[k]]
		if r.Err != nil {
			c.stats.cacheSettleErrors.Add(1)
			c.log.Warn().Err(r.Err).Str("key", d.cache.entry).Msg("cache store refused; joined requests ask again after the deadline")
			continue
		}
		if d.cache.ttl > 0 {
			c.stats.cacheStores.Add(1)
		}
		for _, w := range r.Waiters {
			replyTo, id, ok := c.waiter(w)
			if !ok {
				c.warnEntry(entryWarning{id: d.id, reason: "cache", err: "malformed waiter in flight marker", msg: "skipped a joined request that is not a reply stream of this bus"})
				continue
			}
			env := d.cache.env
			env.ID = id
			out = append(out, waiterReply{key: replyTo, buf: codec.Encode(&env)})
		}
	}
	return out
}

// waiterReply is one reply to a joined request.
type waiterReply struct {
	key string
	buf *codec.Buffer
}
