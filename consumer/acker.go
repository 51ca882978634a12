package consumer

import (
	"context"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
)

// completion is one entry the consumer is done with: it is acknowledged,
// after its reply or dead letter (if any) is written.
type completion struct {
	id      string
	replyTo string
	reply   *codec.Buffer // encoded reply envelope, nil for none
	dead    []string      // dead-letter field/values, nil for none
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
// acknowledgements. It batches by flat combining: the worker that finishes
// an entry and finds a free flusher slot writes everything finished so far
// as one pipeline (one XACK for the whole batch); workers finishing while
// all slots are busy queue their entry for the next flush. Batches grow
// with load; at low load a worker writes its own reply with no hand-off.
type acker struct {
	ctx   context.Context // cancelled only if the final flush overruns shutdown
	c     *Consumer
	slots chan<- struct{}

	mu      sync.Mutex
	queue   []completion
	active  int
	helpers sync.WaitGroup
}

var ackBatchPool = sync.Pool{New: func() any {
	b := make([]completion, 0, 64)
	return &b
}}

func newAcker(ctx context.Context, c *Consumer, slots chan<- struct{}) *acker {
	return &acker{ctx: ctx, c: c, slots: slots}
}

// add queues d and flushes on the caller's goroutine if a slot is free.
// When add returns, d is written or queued for a running flusher.
func (a *acker) add(d completion) {
	a.mu.Lock()
	a.queue = append(a.queue, d)
	if a.active >= maxAckFlushers {
		a.mu.Unlock()
		return
	}
	a.active++
	a.mu.Unlock()
	a.flushLoop(maxAckRounds)
}

// addAsync queues d like add, but never flushes on the caller's goroutine:
// the read loop uses it so a slow flush cannot stall reading or shutdown.
func (a *acker) addAsync(d completion) {
	a.mu.Lock()
	a.queue = append(a.queue, d)
	if a.active >= maxAckFlushers {
		a.mu.Unlock()
		return
	}
	a.active++
	a.helpers.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.helpers.Done()
		a.flushLoop(0)
	}()
}

// wait returns when every helper flusher has finished. Call it after the
// last add has returned.
func (a *acker) wait() { a.helpers.Wait() }

// flushLoop flushes queued batches while there are any, holding one slot;
// the slot is released only when the queue is seen empty under the lock.
func (a *acker) flushLoop(rounds int) {
	for i := 0; ; i++ {
		a.mu.Lock()
		if len(a.queue) == 0 {
			a.active--
			a.mu.Unlock()
			return
		}
		if rounds > 0 && i == rounds {
			a.helpers.Add(1)
			a.mu.Unlock()
			go func() {
				defer a.helpers.Done()
				a.flushLoop(0)
			}()
			return
		}
		bp := ackBatchPool.Get().(*[]completion)
		n := min(len(a.queue), maxAckBatch)
		batch := (*bp)[:0]
		batch = append(batch, a.queue[:n]...)
		rest := copy(a.queue, a.queue[n:])
		clear(a.queue[rest:])
		a.queue = a.queue[:rest]
		a.mu.Unlock()

		a.flush(batch)
		clear(batch)
		*bp = batch[:0]
		ackBatchPool.Put(bp)
	}
}

// flush writes one batch: dead letters first (an entry is acknowledged only
// once its dead letter is stored), then replies and one XACK in one
// pipeline. Connection errors are retried with backoff for up to a minute;
// after that the entries stay pending (at-least-once). Every entry's slot
// is released at the end.
func (a *acker) flush(batch []completion) {
	c := a.c
	var dead []int
	for i := range batch {
		if batch[i].dead != nil {
			dead = append(dead, i)
		}
	}
	if dead != nil {
		a.flushDead(batch, dead)
	}
	cmds := make(rueidis.Commands, 0, len(batch)+1)
	ids := make([]string, 0, len(batch))
	replies := 0
	for i := range batch {
		d := &batch[i]
		if d.dead != nil {
			continue
		}
		if d.reply != nil {
			cmds = append(cmds, bus.AddCmd(c.c, d.replyTo, c.replyCap, true, d.reply.B))
			replies++
		}
		ids = append(ids, d.id)
	}
	if len(ids) > 0 {
		cmds = append(cmds, bus.AckCmd(c.c, c.key, c.cfg.Group, ids...))
		res, ok := a.do(cmds)
		if ok {
			for _, r := range res[:replies] {
				if _, err := r.ToString(); err == nil {
					c.stats.replied.Add(1)
				} else {
					// NOMKSTREAM returned nil (the requester is gone) or
					// Redis refused the write: the caller will time out.
					c.stats.replyDropped.Add(1)
					if !rueidis.IsRedisNil(err) {
						c.log.Warn().Err(err).Msg("reply write refused")
					}
				}
			}
			if n, err := res[replies].AsInt64(); err == nil {
				c.stats.acked.Add(uint64(n))
			} else {
				c.log.Warn().Err(err).Str("stream", c.key).Msg("XACK refused; entries stay pending")
			}
			for i := range batch {
				if batch[i].reply != nil {
					codec.PutBuffer(batch[i].reply) // unsafe to reuse after a failed pipeline
				}
			}
		}
	}
	for range batch {
		c.inFlight.Add(-1)
		a.slots <- struct{}{}
	}
}

// flushDead stores dead letters, then acknowledges the entries whose dead
// letter was stored.
func (a *acker) flushDead(batch []completion, idx []int) {
	c := a.c
	cmds := make(rueidis.Commands, 0, len(idx))
	for _, i := range idx {
		cmds = append(cmds, bus.AddFieldsCmd(c.c, c.dlqKey, c.dlqCap, batch[i].dead...))
	}
	res, ok := a.do(cmds)
	if !ok {
		return
	}
	var ids []string
	for k, r := range res {
		if err := r.Error(); err != nil {
			c.log.Error().Err(err).Str("entry", batch[idx[k]].id).Msg("dead-letter write refused; entry stays pending")
			continue
		}
		ids = append(ids, batch[idx[k]].id)
	}
	if len(ids) == 0 {
		return
	}
	if res, ok := a.do(rueidis.Commands{bus.AckCmd(c.c, c.key, c.cfg.Group, ids...)}); ok {
		if n, err := res[0].AsInt64(); err == nil {
			c.stats.acked.Add(uint64(n))
			c.stats.deadLettered.Add(uint64(len(ids)))
		}
	}
}

// do runs cmds as one pipeline, retrying connection failures with backoff.
// It reports false if they could not be sent within the retry budget or
// the acker's ctx ended.
func (a *acker) do(cmds rueidis.Commands) ([]rueidis.RedisResult, bool) {
	var bo *backoff.ExponentialBackOff
	for {
		// No per-flush timer: the connection's write timeout (bus.Config
		// WriteTimeout) bounds it; a.ctx cancels it at shutdown.
		res := a.c.c.DoMulti(a.ctx, cmds...)
		var netErr error
		for _, r := range res {
			if err := r.Error(); err != nil && !bus.IsRedisReply(err) && !rueidis.IsRedisNil(err) {
				netErr = err
				break
			}
		}
		if netErr == nil {
			return res, true
		}
		if bo == nil {
			bo = newBackoff()
			bo.MaxElapsedTime = time.Minute
			a.c.log.Error().Err(netErr).Str("stream", a.c.key).Msg("cannot write replies/acks; retrying")
		}
		wait := bo.NextBackOff()
		if wait == backoff.Stop {
			a.c.log.Error().Err(netErr).Int("commands", len(cmds)).Msg("giving up on replies/acks; entries stay pending")
			return nil, false
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-a.ctx.Done():
			t.Stop()
			return nil, false
		}
	}
}
