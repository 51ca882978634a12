package consumer

import (
	"context"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/combine"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// completion is one entry the consumer is done with: it is acknowledged,
// after its reply or dead letter (if any) is written.
type completion struct {
	p       *part // the partition it was read from
	id      string
	replyTo string
	reply   *codec.Buffer // encoded reply envelope, nil for none
	dead    []string      // dead-letter field/values, nil for none
	at      time.Time     // when the handler returned (ReplyWrite stage)
	queued  time.Duration // the entry's queue wait (retry wait when retried) and handler time, for timing logs
	handled time.Duration
	retried bool         // a redelivery: queued is its retry wait
	failed  bool         // the handler returned an error (sent as a remote error)
	cache   *cacheSettle // a cached request's answer to store and share, nil for none
	// unanswered: Redis refused its reply (OOM under noeviction, a reply
	// stream replaced by another type): it is not acknowledged, so it is
	// delivered again (flush sets it).
	unanswered bool
}

// flushBufs are one flush's commands, ids and results, pooled: a flush runs
// for every batch of finished entries.
type flushBufs struct {
	adds []redisx.Add
	ids  []string
	acks []redisx.Ack // one per partition in the batch (usually one)
	tied []redisx.Ack // the answered requests', run with their replies (see flush)
	res  []redisx.Result
}

var flushPool = sync.Pool{New: func() any {
	return &flushBufs{adds: make([]redisx.Add, 0, 64), ids: make([]string, 0, 64), acks: make([]redisx.Ack, 0, 1), tied: make([]redisx.Ack, 0, 1),
		res: make([]redisx.Result, 0, 66)}
}}

// put clears fb (it must not keep entries' buffers or ids alive) and
// returns it to the pool.
func (fb *flushBufs) put() {
	clear(fb.adds)
	clear(fb.ids)
	clear(fb.res)
	clear(fb.acks)
	clear(fb.tied)
	fb.adds, fb.ids, fb.res, fb.acks, fb.tied = fb.adds[:0], fb.ids[:0], fb.res[:0], fb.acks[:0], fb.tied[:0]
	flushPool.Put(fb)
}

const (
	// maxAckFlushers bounds concurrent pipelined flushes.
	maxAckFlushers = 2
	// maxAckRounds is how many batches a worker flushes for others before
	// handing the rest to a helper goroutine.
	maxAckRounds = 4
	// maxAckBatch bounds one flush.
	maxAckBatch = 512
)

// acker owns every write that finishes entries: replies, dead letters and
// acknowledgements, batched by combining (see internal/combine): the worker
// that finishes an entry and finds a free flusher slot writes everything
// finished so far as one pipeline (one XACK for the whole batch); workers
// finishing while all slots are busy queue their entry for the next flush.
// Batches grow with load; at low load a worker writes its own reply with no
// hand-off.
type acker struct {
	*env
	ctx   context.Context // cancelled only if the final flush overruns shutdown
	slots *slotPool
	comb  *combine.Combiner[completion]
	// oneServer: the client reaches one server (not a cluster), so a
	// flush's replies and their requests' XACKs can share a transaction.
	oneServer        bool
	replyCap, dlqCap redisx.Cap
	// chunks writes streamed replies' chunks (stream.go), batched the same
	// way.
	chunks *combine.Combiner[chunkWrite]
	// async: workers never flush on their own goroutine (Config.Prefetch:
	// the next entry is already read, and a handler of few slots would
	// otherwise wait out each XACK's round trip before taking it).
	async bool
}

func newAcker(ctx context.Context, e *env, slots *slotPool) *acker {
	a := &acker{env: e, ctx: ctx, slots: slots, oneServer: e.c.Mode() != "cluster",
		replyCap: redisx.MaxLen(e.cfg.Retention.ReplyMaxLen), dlqCap: redisx.MaxLen(e.cfg.Retention.DeadLetterMaxLen), async: e.cfg.Prefetch > 0}
	a.comb = combine.New(a.flush, maxAckFlushers, maxAckBatch, maxAckRounds).Busy(func() bool { return e.inFlight.Load() > 1 })
	a.chunks = newChunkWriter(a)
	return a
}

// add queues d and, if a flusher slot is free (and not async), flushes on the caller's
// goroutine (a worker). When add returns, d is written or queued for a
// running flusher.
func (a *acker) add(d completion) { a.comb.Add(d, !a.async) }

// addAsync queues d like add, but never flushes on the caller's goroutine:
// the reader, reclaimer and delayer use it so a slow flush cannot stall them.
func (a *acker) addAsync(d completion) { a.comb.Add(d, false) }

// wait returns when every helper flusher has finished. Call it after the
// last add has returned.
func (a *acker) wait() { a.comb.Wait(); a.chunks.Wait() }

// flush writes one batch: dead letters first (an entry is acknowledged only
// once its dead letter is stored), then replies and XACKs in one pipeline.
// A request is acknowledged only with its reply stored (an XACK pipelined
// with a reply that Redis refused, OOM say, would acknowledge a request
// whose caller never hears of it): on one server the replies and their
// requests' XACKs run in one MULTI/EXEC, which a refused reply aborts
// whole (redisx.AddTied); on a cluster, where they live on other slots,
// the answered requests' XACKs follow once the replies are known stored
// (ackAnswered: a second round trip). Connection errors are retried with
// backoff for up to a minute; after that the entries stay pending
// (at-least-once). Every entry's slot is released at the end.
func (a *acker) flush(batch []completion) {
	var dead []int
	for i := range batch {
		if batch[i].dead != nil {
			dead = append(dead, i)
		}
	}
	if dead != nil {
		a.flushDead(batch, dead)
	}
	fb := flushPool.Get().(*flushBufs)
	defer fb.put()
	replies := 0
	for i := range batch {
		if d := &batch[i]; d.dead == nil && d.reply != nil {
			replies++
			fb.adds = append(fb.adds, redisx.Add{Key: d.replyTo, Cap: a.replyCap, NoMkStream: true, Data: d.reply.B})
		}
	}
	fb.ids, fb.acks = a.acksOf(batch, withoutReply, fb.ids, fb.acks)
	if a.oneServer {
		fb.ids, fb.tied = a.acksOf(batch, withReply, fb.ids, fb.tied)
	}
	if replies > 0 || len(fb.acks) > 0 {
		a.writeReplies(batch, fb, replies)
	}
	a.inFlight.Add(-int64(len(batch)))
	a.lim.settle()
	a.slots.give(len(batch))
}

// writeReplies writes a batch's replies, in one transaction per reply
// stream (redisx.DoBatch: a caller's reply reader gets all of its replies
// in one read), with the XACKs (one per partition) of the entries that
// need no reply after them, the cached answers to store and their flights
// to settle; the answered requests' XACKs are tied to their replies, or
// follow once the replies are known to be stored (ackAnswered).
func (a *acker) writeReplies(batch []completion, fb *flushBufs, replies int) {
	sets, setIdx := settles(batch)
	var setRes []redisx.SettleResult
	res, ok, reusable := a.doOwned(fb.res, func(out []redisx.Result) []redisx.Result {
		if sets == nil {
			return a.port.AddTied(a.ctx, fb.adds, fb.tied, fb.acks, out)
		}
		// Cached answers: stored, and their flights settled, in the same
		// round trip.
		out, setRes = a.port.SettleAndAdd(a.ctx, sets, fb.adds, fb.tied, fb.acks, out, setRes[:0])
		return out
	})
	if !ok {
		return
	}
	fb.res = res // its array, grown or not, goes back to the pool
	a.stats.flushes.Add(1)
	now := time.Now()
	a.replied(batch, res[:replies], now)
	a.acked(res[replies:replies+len(fb.tied)], fb.tied)
	a.acked(res[replies+len(fb.tied):replies+len(fb.tied)+len(fb.acks)], fb.acks)
	if replies > 0 && !a.oneServer {
		a.ackAnswered(batch, fb)
	}
	// Handled entries without a reply (events) are done when the XACK is:
	// their "reply write" is the acknowledgement.
	for i := range batch {
		if d := &batch[i]; d.reply == nil && d.dead == nil && !d.at.IsZero() {
			a.logTiming(d, now.Sub(d.at))
		}
	}
	if sets != nil {
		a.answerJoined(batch, setIdx, setRes)
		a.deleteStale(sets, setRes)
	}
	if reusable { // unsafe to reuse after a failed pipeline
		for i := range batch {
			if batch[i].reply != nil {
				codec.PutBuffer(batch[i].reply)
			}
		}
	}
}

// replied takes the results of the batch's replies (res, in order): a
// reply stored is timed and logged; one Redis refused leaves its request
// unanswered (not acknowledged: delivered again after ClaimIdle).
func (a *acker) replied(batch []completion, res []redisx.Result, now time.Time) {
	k := 0 // index in res of batch[i]'s reply
	for i := range batch {
		d := &batch[i]
		if d.reply == nil || d.dead != nil {
			continue
		}
		switch err := res[k].Err; {
		case err == nil:
			a.stats.replied.Add(1)
			a.timings.Record(metrics.ReplyWrite, now.Sub(d.at))
			a.logTiming(d, now.Sub(d.at))
		case redisx.IsNil(err):
			// NOMKSTREAM: the requester is gone; nobody waits.
			a.stats.replyDropped.Add(1)
		default:
			d.unanswered = true
			a.stats.replyDropped.Add(1)
			if !a.fail(err, "XADD to a reply stream") {
				a.log.Warn().Err(err).Str("entry", d.id).Msg("reply write refused; the request stays pending and is delivered again")
			}
		}
		k++
	}
}

// flushDead stores dead letters, then acknowledges the entries whose dead
// letter was stored.
func (a *acker) flushDead(batch []completion, idx []int) {
	adds := make([]redisx.Add, 0, len(idx))
	for _, i := range idx {
		adds = append(adds, redisx.Add{Key: batch[i].p.dlqKey, Cap: a.dlqCap, Fields: batch[i].dead})
	}
	res, ok := a.do(nil, func(out []redisx.Result) []redisx.Result {
		return a.port.AddBatch(a.ctx, adds, nil, out)
	})
	if !ok {
		return
	}
	stored := make([]completion, 0, len(idx))
	for k, r := range res {
		if r.Err != nil {
			if !a.fail(r.Err, "XADD "+adds[k].Key) {
				a.log.Error().Err(r.Err).Str("entry", batch[idx[k]].id).Msg("dead-letter write refused; entry stays pending")
			}
			continue
		}
		stored = append(stored, completion{p: batch[idx[k]].p, id: batch[idx[k]].id})
	}
	if len(stored) == 0 {
		return
	}
	_, acks := a.acksOf(stored, notDead, nil, nil)
	res, ok = a.do(nil, func(out []redisx.Result) []redisx.Result {
		return a.port.AddBatch(a.ctx, nil, acks, out)
	})
	if !ok {
		return
	}
	for k, r := range res {
		if r.Err == nil {
			a.stats.acked.Add(uint64(r.N))
			a.stats.deadLettered.Add(uint64(len(acks[k].IDs)))
		} else {
			a.fail(r.Err, "XACK "+acks[k].Key)
		}
	}
}

// Which entries of a batch an XACK takes.
func withoutReply(d *completion) bool { return d.dead == nil && d.reply == nil }
func withReply(d *completion) bool    { return d.dead == nil && d.reply != nil }
func answered(d *completion) bool     { return d.dead == nil && d.reply != nil && !d.unanswered }
func notDead(d *completion) bool      { return d.dead == nil }

// ackAnswered acknowledges the requests of batch whose reply Redis took,
// one XACK per partition (fb's id and ack buffers reused).
func (a *acker) ackAnswered(batch []completion, fb *flushBufs) {
	clear(fb.ids)
	clear(fb.acks)
	fb.ids, fb.acks = a.acksOf(batch, answered, fb.ids[:0], fb.acks[:0])
	if len(fb.acks) == 0 {
		return
	}
	res, ok := a.do(fb.res, func(out []redisx.Result) []redisx.Result {
		return a.port.AddBatch(a.ctx, nil, fb.acks, out)
	})
	if ok {
		fb.res = res
		a.acked(res, fb.acks)
	}
}

// acked counts the XACKs' results (res, one per ack) and logs refusals.
func (a *acker) acked(res []redisx.Result, acks []redisx.Ack) {
	for k, r := range res {
		if r.Err == nil {
			a.stats.acked.Add(uint64(r.N))
		} else if !a.fail(r.Err, "XACK "+acks[k].Key) {
			a.log.Warn().Err(r.Err).Str("stream", acks[k].Key).Msg("XACK refused; entries stay pending")
		}
	}
}

// acksOf appends the ids of batch's entries that keep takes to ids and
// one XACK per partition among them to acks (the acks' id lists are
// sub-slices of ids: one partition, the common case, costs nothing).
func (a *acker) acksOf(batch []completion, keep func(*completion) bool, ids []string, acks []redisx.Ack) ([]string, []redisx.Ack) {
	var first *part
	mixed := false
	for i := range batch {
		if !keep(&batch[i]) {
			continue
		}
		if first == nil {
			first = batch[i].p
		} else if batch[i].p != first {
			mixed = true
			break
		}
	}
	if first == nil {
		return ids, acks
	}
	if !mixed {
		start := len(ids)
		for i := range batch {
			if keep(&batch[i]) {
				ids = append(ids, batch[i].id)
			}
		}
		return ids, append(acks, redisx.Ack{Key: first.key, Group: a.cfg.Group, IDs: ids[start:]})
	}
	// Several partitions: ids grouped by partition, in order of first
	// appearance.
	var order []*part
	seen := map[*part]bool{}
	for i := range batch {
		if d := &batch[i]; keep(d) && !seen[d.p] {
			seen[d.p] = true
			order = append(order, d.p)
		}
	}
	for _, pt := range order {
		start := len(ids)
		for i := range batch {
			if d := &batch[i]; keep(d) && d.p == pt {
				ids = append(ids, d.id)
			}
		}
		acks = append(acks, redisx.Ack{Key: pt.key, Group: a.cfg.Group, IDs: ids[start:len(ids):len(ids)]})
	}
	return ids, acks
}

// do runs one pipeline (send builds its commands afresh and sends them,
// appending its results to the slice it is given: buf[:0] on every attempt),
// retrying connection failures with backoff. It reports false if they could
// not be sent within the retry budget or the acker's ctx ended. Building the
// commands for every attempt matters: rueidis recycles each command that got
// a reply, so resending one after a partial failure would send a recycled
// one.
func (a *acker) do(buf []redisx.Result, send func([]redisx.Result) []redisx.Result) ([]redisx.Result, bool) {
	res, ok, _ := a.doOwned(buf, send)
	return res, ok
}

// doOwned is do that also says whether the data send gave the client is
// ours again (reusable): only when the first attempt went through. After a
// connection error, the broken connection's writer goroutine may still be
// reading it.
func (a *acker) doOwned(buf []redisx.Result, send func([]redisx.Result) []redisx.Result) (res []redisx.Result, ok, reusable bool) {
	return retry(a, buf, send, func(r redisx.Result) error { return r.Err })
}

// retry is doOwned for any kind of result; errOf returns one result's error.
func retry[R any](a *acker, buf []R, send func([]R) []R, errOf func(R) error) (_ []R, ok, reusable bool) {
	var bo *backoff.ExponentialBackOff
	res := buf
	for {
		// No per-flush timer: the connection's write timeout (bus.Config
		// WriteTimeout) bounds it; a.ctx cancels it at shutdown.
		res = send(res[:0])
		var netErr error
		for _, r := range res {
			if err := errOf(r); redisx.IsConnErr(err) {
				netErr = err
				break
			}
		}
		if netErr == nil {
			return res, true, bo == nil
		}
		if bo == nil {
			bo = redisx.NewBackoff()
			bo.MaxElapsedTime = time.Minute
			a.log.Error().Err(netErr).Str("topic", a.cfg.Topic).Msg("cannot write replies/acks; retrying")
		}
		wait := bo.NextBackOff()
		if wait == backoff.Stop {
			a.log.Error().Err(netErr).Msg("giving up on replies/acks; entries stay pending")
			return nil, false, false
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-a.ctx.Done():
			t.Stop()
			return nil, false, false
		}
	}
}
