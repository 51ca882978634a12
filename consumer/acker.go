package consumer

import (
	"context"
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
	dead    []string      // dead-letter field/value pairs, nil for none
}

// acker owns all writes that finish entries. One goroutine runs it; while a
// flush is in flight completions accumulate, so batches grow with load and
// one XACK acknowledges a whole batch.
type acker struct {
	ctx   context.Context // cancelled only if the final flush overruns shutdown
	c     *Consumer
	in    chan completion
	slots chan<- struct{}

	batch []completion
	cmds  rueidis.Commands
	ids   []string
}

const maxAckBatch = 512

// flushTimeout bounds one pipelined flush.
const flushTimeout = 5 * time.Second

func newAcker(ctx context.Context, c *Consumer, slots chan<- struct{}) *acker {
	// Room for every entry the consumer can hold, so add never waits long.
	return &acker{ctx: ctx, c: c, in: make(chan completion, 2*c.cfg.Concurrency+maxReadBatch), slots: slots}
}

func (a *acker) add(d completion) { a.in <- d }

// close ends run once everything queued is flushed. Call it only after the
// last add.
func (a *acker) close() { close(a.in) }

func (a *acker) run() {
	for d := range a.in {
		a.batch = append(a.batch[:0], d)
	drain:
		for len(a.batch) < maxAckBatch {
			select {
			case d, ok := <-a.in:
				if !ok {
					break drain
				}
				a.batch = append(a.batch, d)
			default:
				break drain
			}
		}
		a.flush()
	}
}

// flush writes replies and acknowledgements in one pipeline, and dead
// letters first when there are any: an entry is acknowledged only after its
// dead letter is stored. Connection errors are retried with backoff for up
// to a minute; after that the entries stay pending (at-least-once).
func (a *acker) flush() {
	c := a.c
	var dead []int
	for i := range a.batch {
		if a.batch[i].dead != nil {
			dead = append(dead, i)
		}
	}
	if dead != nil {
		a.flushDead(dead)
	}
	a.cmds, a.ids = a.cmds[:0], a.ids[:0]
	replies := 0
	for i := range a.batch {
		d := &a.batch[i]
		if d.dead != nil {
			continue
		}
		if d.reply != nil {
			a.cmds = append(a.cmds, bus.AddCmd(c.c, d.replyTo, c.replyCap, true, d.reply.B))
			replies++
		}
		a.ids = append(a.ids, d.id)
	}
	if len(a.ids) > 0 {
		a.cmds = append(a.cmds, bus.AckCmd(c.c, c.key, c.cfg.Group, a.ids...))
		res, ok := a.do(a.cmds)
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
		}
		for i := range a.batch {
			if d := &a.batch[i]; d.reply != nil && ok {
				codec.PutBuffer(d.reply) // unsafe to reuse after a failed pipeline
			}
		}
	}
	for i := range a.batch {
		a.batch[i] = completion{}
		c.inFlight.Add(-1)
		a.slots <- struct{}{}
	}
}

// flushDead stores dead letters, then acknowledges the entries whose dead
// letter was stored.
func (a *acker) flushDead(idx []int) {
	c := a.c
	cmds := make(rueidis.Commands, 0, len(idx))
	for _, i := range idx {
		cmds = append(cmds, bus.AddFieldsCmd(c.c, c.dlqKey, c.dlqCap, a.batch[i].dead...))
	}
	res, ok := a.do(cmds)
	if !ok {
		return
	}
	var ids []string
	for k, r := range res {
		if err := r.Error(); err != nil {
			c.log.Error().Err(err).Str("entry", a.batch[idx[k]].id).Msg("dead-letter write refused; entry stays pending")
			continue
		}
		ids = append(ids, a.batch[idx[k]].id)
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
// It reports false if they could not be sent within the retry budget.
func (a *acker) do(cmds rueidis.Commands) ([]rueidis.RedisResult, bool) {
	var bo *backoff.ExponentialBackOff
	for {
		ctx, cancel := context.WithTimeout(a.ctx, flushTimeout)
		res := a.c.c.DoMulti(ctx, cmds...)
		cancel()
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
			a.c.log.Error().Err(netErr).Int("entries", len(a.batch)).Msg("giving up on replies/acks; entries stay pending")
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
