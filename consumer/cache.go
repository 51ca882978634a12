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
	entry, flight, meta string         // keys
	gen                 uint64         // the entry's generation
	ttl                 time.Duration  // 0: do not store
	env                 codec.Envelope // the reply, re-addressed to every joined request
}

// deleteStale deletes the answers just stored under a generation that is
// not the topic's current one (see redisx.Settle): a flush raced them, or
// the request named a generation to come, to plant an answer.
func (a *acker) deleteStale(sets []redisx.Settle, res []redisx.SettleResult) {
	stale := 0
	for i := range res {
		if res[i].Stale {
			stale++
		}
	}
	if stale == 0 {
		return
	}
	a.stats.cacheStale.Add(uint64(stale))
	if err := a.port.DeleteStale(a.ctx, sets, res); err != nil {
		a.log.Warn().Err(err).Msg("could not delete cached answers stored under another generation than the topic's: they expire with their TTL")
	}
}

// settleOf decides what becomes of a cached request's answer: stored for
// the time the handler allowed (errors never), and sent to every request
// that joined it. A handler that ran out of the request's deadline settles
// nothing: the joined requests, whose deadlines may be later, ask again.
// It marks reply with the entry and the time it is stored for.
func (w *processor) settleOf(j *job, reply *codec.Envelope, err error, ended time.Time) *cacheSettle {
	if err != nil && (errors.Is(err, context.DeadlineExceeded) || (!j.msg.Deadline.IsZero() && !ended.Before(j.msg.Deadline))) {
		return nil
	}
	ttl := time.Duration(0)
	if err == nil {
		ttl = min(max(j.msg.CacheTTL, 0), j.cacheTTL)
		if len(reply.Payload) > w.cfg.Cache.MaxValue {
			ttl = 0
		}
		if ttl > 0 && ttl < time.Millisecond {
			ttl = 0 // Redis stores in milliseconds
		}
	}
	reply.CacheKey, reply.CacheTTL = j.cache, int64(ttl)
	gen, _, _ := bus.ParseCacheEntryID(j.cache) // validated by cacheOf
	s := &cacheSettle{entry: w.keys.Cache(j.p.name, j.cache), flight: w.keys.Flight(j.p.name, j.cache), meta: w.keys.Meta(j.p.name),
		gen: gen, ttl: ttl, env: *reply}
	return s
}

// waiter parses one joined request taken from a flight marker:
// "<reply stream> <correlation id>". Nothing read from Redis is trusted:
// the reply stream must be one of this bus's reply streams.
func (a *acker) waiter(w string) (replyTo, id string, ok bool) {
	i := strings.LastIndexByte(w, ' ')
	if i <= 0 || i == len(w)-1 || len(w)-i-1 > 64 {
		return "", "", false
	}
	replyTo, id = w[:i], w[i+1:]
	if _, ok := a.keys.ParseReply(replyTo); !ok {
		return "", "", false
	}
	return replyTo, id, true
}

// settles returns the batch's cache settles (answers to store, flights to
// settle) and the index in batch of each.
func settles(batch []completion) ([]redisx.Settle, []int) {
	var out []redisx.Settle
	var idx []int
	for i := range batch {
		d := &batch[i]
		if d.cache == nil || d.dead != nil || d.reply == nil {
			continue
		}
		out = append(out, redisx.Settle{Entry: d.cache.entry, Flight: d.cache.flight, Meta: d.cache.meta, Gen: d.cache.gen,
			Value: d.reply.B, TTL: d.cache.ttl, TakeWaiters: true})
		idx = append(idx, i)
	}
	return out, idx
}

// answerJoined writes the answers of settled flights to the requests that
// joined them (taken by the settles, whose results res are; idx maps them
// to batch), in one round trip.
func (a *acker) answerJoined(batch []completion, idx []int, res []redisx.SettleResult) {
	var adds []redisx.Add
	var bufs []*codec.Buffer
	for k, r := range res {
		d := &batch[idx[k]]
		if r.Err != nil {
			a.stats.cacheSettleErrors.Add(1)
			a.fail(r.Err, "storing a cached answer")
			a.log.Warn().Err(r.Err).Str("key", d.cache.entry).Msg("cache store refused; joined requests ask again after the deadline")
			continue
		}
		if d.cache.ttl > 0 {
			a.stats.cacheStores.Add(1)
		}
		for _, w := range r.Waiters {
			replyTo, id, ok := a.waiter(w)
			if !ok {
				a.warnEntry(entryWarning{id: d.id, reason: "cache", err: "malformed waiter in flight marker", msg: "skipped a joined request that is not a reply stream of this bus"})
				continue
			}
			env := d.cache.env
			env.ID = id
			b := codec.Encode(&env)
			bufs = append(bufs, b)
			adds = append(adds, redisx.Add{Key: replyTo, Cap: a.replyCap, NoMkStream: true, Data: b.B})
		}
	}
	if len(adds) == 0 {
		return
	}
	out, ok, reusable := a.doOwned(nil, func(out []redisx.Result) []redisx.Result {
		return a.port.AddBatch(a.ctx, adds, nil, out)
	})
	if !ok {
		return // the buffers may still be held by the client: left to the GC
	}
	for _, r := range out {
		if r.Err == nil {
			a.stats.coalescedReplies.Add(1)
		} else {
			a.stats.replyDropped.Add(1)
		}
	}
	if !reusable {
		return // a broken connection may still read them: left to the GC
	}
	for _, b := range bufs {
		codec.PutBuffer(b)
	}
}
