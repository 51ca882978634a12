package consumer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// job is one entry on its way to a worker. Jobs are pooled: a Message is
// valid only during Handle.
type job struct {
	msg Message
	env codec.Envelope
	p   *part // the partition it was read from
	// cache is the entry id of a cached request ("" otherwise) and cacheTTL
	// the most its answer may be stored for (the caller's wish within this
	// worker's limits).
	cache    string
	cacheTTL time.Duration
	// comp is how the request's payload came compressed: its reply is
	// compressed the same way (its caller reads what it writes).
	comp   codec.Compression
	readAt int64         // unix nanoseconds when the entry was read or reclaimed
	queued time.Duration // QueueWait (RetryWait when msg.Attempt > 1) stage: entry id (or sent time, if later) to readAt
}

var jobPool = sync.Pool{New: func() any { return new(job) }}

func putJob(j *job) {
	*j = job{}
	jobPool.Put(j)
}

// pipe is what one Run's components hand entries through: the handler
// slots, the workers' job queue, and the acker.
type pipe struct {
	slots *slotPool
	jobs  chan *job // never blocks: at most Concurrency + Prefetch entries are held
	a     *acker
	q     *queuedSet // entries read ahead, waiting in jobs (nil without Prefetch)
}

// router turns an entry read or claimed from a partition into a job for a
// worker, or, when it must not be handled (malformed, deleted, expired,
// cancelled), into a completion for the acker. The reader, the reclaimer
// and the delayer all hand their entries to it.
type router struct {
	*env
	cancels *cancelSet
}

// route routes one entry; it holds one slot.
func (r *router) route(pt *part, e *redisx.Entry, now time.Time, attempt int, p *pipe) {
	r.stats.received.Add(1)
	r.inFlight.Add(1)
	a := p.a
	switch {
	case e.Deleted:
		a.addAsync(completion{p: pt, id: e.ID}) // nothing left to handle or dead-letter
		return
	case !e.HasData:
		r.malformed(pt, e, attempt, fmt.Sprintf("entry has no %q field", redisx.Field), a)
		return
	case len(e.Data) > r.cfg.MaxEntrySize:
		why := fmt.Sprintf("entry of %d bytes exceeds MaxEntrySize %d", len(e.Data), r.cfg.MaxEntrySize)
		r.warnEntry(entryWarning{id: e.ID, attempt: attempt, reason: "malformed", err: why, msg: "oversized entry: dead-lettered (its size and first bytes)"})
		a.addAsync(completion{p: pt, id: e.ID, dead: redisx.DeadLetterOversized(e, r.deadLetter(attempt, "malformed", why))})
		return
	}
	j := jobPool.Get().(*job)
	// The entry's value is ours alone (a fresh bulk string from the client,
	// not read again once decoded): the payload may alias it.
	if err := codec.DecodeEnvelopeOwned(e.Data, &j.env); err != nil {
		putJob(j)
		r.malformed(pt, e, attempt, err.Error(), a)
		return
	}
	if why := r.check(&j.env); why != "" {
		putJob(j)
		r.malformed(pt, e, attempt, why, a)
		return
	}
	if r.skip(pt, e.ID, &j.env, now, a) {
		putJob(j)
		return
	}
	if codec.Compressed(&j.env) { // after the skips: nothing is decompressed for a request nobody waits for
		j.comp = codec.CompressionOf(&j.env)
		if err := codec.Decompress(&j.env, r.cfg.MaxEntrySize); err != nil {
			putJob(j)
			r.malformed(pt, e, attempt, err.Error(), a)
			return
		}
	}
	r.prepare(j, pt, e.ID, now, attempt, a)
	if j.env.Headers != nil {
		// A token budget charges the caller's estimate now; the handler's
		// report corrects it when it returns (processor.finish).
		j.msg.cost = estimatedCost(j.env.Headers)
		j.msg.estimate = j.msg.cost
		r.lim.start(context.Background(), j.msg.cost)
	}
	p.q.add(j)
	p.jobs <- j
}

// check returns why an envelope on a topic stream cannot be handled, or "".
func (r *router) check(env *codec.Envelope) string {
	switch {
	case env.Kind != codec.KindEvent && env.Kind != codec.KindRequest:
		return "envelope kind " + env.Kind.String() + " on a topic stream"
	case env.Kind == codec.KindRequest:
		return r.checkRequest(env)
	}
	return ""
}

// skip acknowledges, unhandled, a request whose caller is gone: its
// deadline passed, or it cancelled the request. It reports whether it did.
func (r *router) skip(pt *part, id string, env *codec.Envelope, now time.Time, a *acker) bool {
	switch {
	case env.Deadline != 0 && now.UnixNano() >= env.Deadline:
		r.tr.expired(&r.cfg, id, env)
		r.stats.expired.Add(1)
	case env.Kind == codec.KindRequest && r.cancels.has(&env.Token):
		r.stats.cancelled.Add(1)
	default:
		return false
	}
	a.addAsync(completion{p: pt, id: id})
	return true
}

// prepare fills j's Message and stages for a worker.
func (r *router) prepare(j *job, pt *part, id string, now time.Time, attempt int, a *acker) {
	j.msg = Message{
		ID: id, Topic: r.cfg.Topic, Partition: pt.idx, Payload: j.env.Payload, Headers: j.env.Headers, Attempt: attempt,
		Request: j.env.Kind == codec.KindRequest, Sent: time.Unix(0, j.env.Sent),
	}
	if j.env.Deadline != 0 {
		j.msg.Deadline = time.Unix(0, j.env.Deadline)
	}
	if j.env.Kind == codec.KindRequest && j.env.CacheKey != "" {
		r.cacheOf(j, id)
	}
	if j.env.Kind == codec.KindRequest && j.env.Flags&codec.FlagStream != 0 {
		j.msg.stream = &chunkStream{a: a, replyTo: j.env.ReplyTo, id: j.env.ID, entry: id, attempt: uint32(min(attempt, 1<<31))}
	}
	j.p = pt
	j.readAt = now.UnixNano()
	j.queued = queueWait(id, j.env.Sent, j.readAt)
	if attempt > 1 {
		r.timings.Record(metrics.RetryWait, j.queued) // earlier deliveries and the waits between them
	} else {
		r.timings.Record(metrics.QueueWait, j.queued)
	}
}

// maxCorrelationID bounds a request's correlation id (the Go producer's are
// about 15 bytes).
const maxCorrelationID = 128

// checkRequest validates what a request asks the worker to do with its
// answer (the entry comes from the stream: anyone who can write the topic
// wrote it): the reply must go to one of this bus's reply streams, never to
// another key (a worker writes replies with NOMKSTREAM and trims the stream
// it writes), and carry a plausible correlation id. It returns why not, or
// "".
func (r *router) checkRequest(env *codec.Envelope) string {
	if _, ok := r.keys.ParseReply(env.ReplyTo); !ok {
		return fmt.Sprintf("reply_to %q is not a reply stream of this bus (%s)", clip(env.ReplyTo), r.keys.Reply("<producer-id>"))
	}
	if env.ID == "" || len(env.ID) > maxCorrelationID {
		return fmt.Sprintf("request id of %d bytes: want 1 to %d", len(env.ID), maxCorrelationID)
	}
	return ""
}

// clip bounds a string from an entry for logs and dead letters.
func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// malformed dead-letters an entry that cannot be handled, at once.
func (r *router) malformed(pt *part, e *redisx.Entry, attempt int, why string, a *acker) {
	r.warnEntry(entryWarning{id: e.ID, attempt: attempt, reason: "malformed", err: why, msg: "malformed entry: dead-lettered"})
	a.addAsync(completion{p: pt, id: e.ID, dead: r.deadFields(e, attempt, "malformed", why)})
}

// claimed routes entries this consumer just claimed (reclaimed, or due
// retries), each once it has a handler slot; past MaxDeliveries they go to
// the dead-letter stream. Entries it cannot route before ctx ends stay
// pending (ours), and are reclaimed again after ClaimIdle.
func (r *router) claimed(ctx context.Context, pt *part, entries []redisx.Entry, p *pipe) error {
	if len(entries) == 0 {
		return nil
	}
	deliveries, err := r.port.Deliveries(ctx, pt.key, r.cfg.Group, r.cfg.Name, idsOf(entries))
	if err != nil {
		return fmt.Errorf("delivery counts: %w", err)
	}
	for i := range entries {
		if !p.slots.claim(ctx) {
			return nil
		}
		e := &entries[i]
		attempt := int(deliveries[i])
		if attempt == 0 {
			attempt = 1 // not listed: acknowledged meanwhile; handling is harmless
		}
		r.stats.reclaimed.Add(1)
		if attempt > r.cfg.Retry.MaxDeliveries {
			r.stats.received.Add(1)
			r.inFlight.Add(1)
			r.warnEntry(entryWarning{id: e.ID, attempt: attempt, reason: "max_deliveries",
				msg: "not completed after MaxDeliveries deliveries (its workers died or timed out): dead-lettered"})
			p.a.addAsync(completion{p: pt, id: e.ID, dead: r.deadFields(e, attempt-1, "max_deliveries",
				fmt.Sprintf("not completed after %d deliveries (MaxDeliveries %d)", attempt-1, r.cfg.Retry.MaxDeliveries))})
			continue
		}
		r.route(pt, e, time.Now(), attempt, p)
	}
	return nil
}

// cacheOf validates a request's cache entry id (it comes from the stream:
// anyone who can write the topic wrote it) and how long its answer may be
// stored. A malformed id makes the request an uncached one.
func (r *router) cacheOf(j *job, id string) {
	if _, _, ok := bus.ParseCacheEntryID(j.env.CacheKey); !ok {
		r.warnEntry(entryWarning{id: id, attempt: j.msg.Attempt, reason: "cache", request: true,
			err: "malformed cache entry id", msg: "cached request with a malformed cache entry id: answered, not cached"})
		return
	}
	ttl := min(max(time.Duration(j.env.CacheTTL), 0), DefaultCacheMaxTTL)
	switch {
	case r.cfg.Cache.TTL < 0:
		ttl = 0
	case r.cfg.Cache.TTL > 0:
		ttl = min(ttl, r.cfg.Cache.TTL)
	}
	j.cache, j.cacheTTL = j.env.CacheKey, ttl
	j.msg.CacheTTL = ttl
}

// queueWait is how long an entry waited in the stream before a worker
// picked it up at readAt (unix nanoseconds). The entry id has millisecond
// resolution and the sender's clock may differ from Redis's; the later of
// the two bounds the time the entry became readable.
func queueWait(id string, sent, readAt int64) time.Duration {
	from := sent
	if t, ok := redisx.IDTime(id); ok && t.UnixNano() > from {
		from = t.UnixNano()
	}
	if from == 0 || readAt < from {
		return 0
	}
	return time.Duration(readAt - from)
}

func idsOf(entries []redisx.Entry) []string {
	ids := make([]string, len(entries))
	for i := range entries {
		ids[i] = entries[i].ID
	}
	return ids
}
