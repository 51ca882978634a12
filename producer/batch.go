package producer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// Reply is one request's outcome in a RequestBatch: its reply payload, or
// its error (as Request would have returned it).
type Reply struct {
	Payload []byte
	Err     error
}

// RequestBatch sends one request per payload to topic and waits for every
// reply, within one deadline (ctx's, or Config.RequestTimeout). On an
// uncached topic all requests go in one round trip, as one MULTI/EXEC
// transaction: a worker receives them together (a BatchHandler can then
// handle them at once). On a cached topic each payload takes the cached
// path (local tier, shared tier, coalescing), the misses' round trips
// pipelined together. Options apply to every request; WithCacheInfo is
// ignored.
//
// It returns one Reply per payload, in order. The error is for the batch
// as a whole: bus.ErrClosed, bus.ErrBreakerOpen, bus.ErrNoResponders,
// bus.ErrPayloadTooLarge (one payload too large fails the batch before
// anything is sent), or more payloads than Config.MaxInFlight. Safe for
// concurrent use.
func (p *Producer) RequestBatch(ctx context.Context, topic string, payloads [][]byte, opts ...RequestOption) ([]Reply, error) {
	t, err := p.checkBatch("request batch", topic, payloads)
	if err != nil {
		return nil, err
	}
	if len(payloads) > p.cfg.MaxInFlight {
		return nil, fmt.Errorf("producer: %w: request batch of %d exceeds MaxInFlight %d", bus.ErrInvalidConfig, len(payloads), p.cfg.MaxInFlight)
	}
	if len(payloads) == 0 {
		return nil, nil
	}
	co := applyRequest(opts)
	if co.info != nil {
		return nil, fmt.Errorf("producer: request batch: %w: WithCacheInfo applies to one Request (a batch's answers come from several sources)", bus.ErrInvalidConfig)
	}
	if err := checkHeaders(co.headers); err != nil {
		return nil, err
	}
	if t.cache != nil && (!co.noCache || !co.noStore) {
		return p.cachedBatch(ctx, payloads, topic, co), nil
	}
	start := time.Now()
	tok, err := p.adm.request(ctx, t, co.wait, start)
	if err != nil {
		return nil, err
	}
	out, err := p.requestBatch(ctx, t, payloads, &co, start)
	var first error
	for i := range out {
		if out[i].Err != nil && first == nil {
			first = out[i].Err
		}
	}
	p.adm.report(t, tok, first, start)
	return out, err
}

// cachedBatch runs the cached path for each payload at once.
func (p *Producer) cachedBatch(ctx context.Context, payloads [][]byte, topic string, co callOptions) []Reply {
	out := make([]Reply, len(payloads))
	opts := []RequestOption{CacheOption(func(c *callOptions) { *c = co })}
	var wg sync.WaitGroup
	for i, pl := range payloads {
		wg.Go(func() { out[i].Payload, out[i].Err = p.Request(ctx, topic, pl, opts...) })
	}
	wg.Wait()
	return out
}

func (p *Producer) requestBatch(ctx context.Context, t *topic, payloads [][]byte, co *callOptions, start time.Time) ([]Reply, error) {
	headers := p.tr.inject(ctx, co.headers)
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = start.Add(p.cfg.RequestTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	if err := p.reader.ensure(ctx, deadline); err != nil {
		return nil, err
	}
	n := len(payloads)
	for i := range n {
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			for range i {
				<-p.slots
			}
			return nil, fmt.Errorf("%w: %w", errSlotWait, p.stats.ctxErr(ctx.Err(), "waiting for in-flight slots"))
		case <-p.closing:
			for range i {
				<-p.slots
			}
			return nil, fmt.Errorf("producer: request batch: %w", bus.ErrClosed)
		}
	}
	defer func() {
		for range n {
			<-p.slots
		}
	}()
	ws := make([]*waiter, n)
	seqs := make([]uint64, n)
	bufs := make([]*codec.Buffer, n)
	adds := make([]redisx.Add, n)
	now := time.Now()
	cp := p.send.trimCap()
	pts := make([]*topic, n)
	for i := range payloads {
		var err error
		if pts[i], err = p.parts.pick(ctx, t, co, nil, now.UnixNano()); err != nil {
			return nil, err
		}
	}
	for i, pl := range payloads {
		seqs[i] = p.ids.next()
		ws[i] = waiterPool.Get().(*waiter)
		ws[i].write = 0
		env := codec.Envelope{Kind: codec.KindRequest, ID: p.ids.id(seqs[i]), ReplyTo: p.reader.key,
			Deadline: deadline.UnixNano(), Sent: now.UnixNano(), Payload: pl, Headers: headers}
		bufs[i] = codec.Encode(&env)
		adds[i] = redisx.Add{Key: pts[i].key, Cap: cp, Data: bufs[i].B}
		p.reader.waiters.add(seqs[i], ws[i])
	}
	out := make([]Reply, n)
	p.stats.writes.Add(1)
	recycle := true
	for i, r := range p.send.addBatch(ctx, adds, make([]redisx.Result, 0, n)) {
		if r.Err == nil {
			p.stats.requests.Add(1)
			p.reader.stamp(seqs[i], 0, r.ID)
			continue
		}
		p.stats.writeErrors.Add(1)
		if redisx.IsConnErr(r.Err) {
			recycle = false
		}
		if w := p.reader.waiters.take(seqs[i]); w != nil {
			putWaiter(w)
		}
		ws[i] = nil
		out[i].Err = fmt.Errorf("producer: request to %s: %w", t.name, redisx.Unavailable(r.Err))
	}
	if recycle {
		for _, b := range bufs {
			codec.PutBuffer(b)
		}
	}
	for i, w := range ws {
		if w == nil {
			continue
		}
		select {
		case r := <-w.ch:
			putWaiter(w)
			out[i].Payload, out[i].Err = p.stats.answer(&r)
			continue
		case <-ctx.Done():
		case <-p.closing:
		}
		if p.reader.waiters.take(seqs[i]) != nil {
			putWaiter(w)
			if p.closed.Load() {
				out[i].Err = fmt.Errorf("producer: request: %w", bus.ErrClosed)
			} else {
				out[i].Err = p.stats.ctxErr(ctx.Err(), "waiting for the reply")
			}
			continue
		}
		r := <-w.ch // the reader took it and is handing it over
		putWaiter(w)
		out[i].Payload, out[i].Err = p.stats.answer(&r)
	}
	return out, nil
}
