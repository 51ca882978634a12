package producer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
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
// transaction per partition: a worker receives them together (a
// BatchHandler can then handle them at once). On a cached topic each
// payload takes the cached path (local tier, shared tier, coalescing), the
// misses' round trips pipelined together. Options apply to every request;
// WithCacheInfo is refused.
//
// Each request is admitted like a Request: by the breaker of the partition
// it goes to (round robin passes partitions whose breaker is open). A
// request that its partition's breaker refuses gets an error wrapping
// bus.ErrBreakerOpen as its Reply.Err while the others are written; when
// every one is refused, the batch fails with it.
//
// It returns one Reply per payload, in order. The error is for the batch
// as a whole: bus.ErrClosed, bus.ErrBreakerOpen (see above),
// bus.ErrNoResponders, bus.ErrPayloadTooLarge (one payload too large fails
// the batch before anything is sent), no in-flight slot within the
// deadline, or more payloads than Config.MaxInFlight. Safe for concurrent
// use.
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
	if err := co.check(); err != nil {
		return nil, err
	}
	if t.cache != nil && (!co.noCache || !co.noStore) {
		// The cached path for each payload at once: each a Request.
		out := make([]Reply, len(payloads))
		each := co // the copy the option keeps (only this path allocates it)
		opts := []RequestOption{CacheOption(func(c *callOptions) { *c = each })}
		var wg sync.WaitGroup
		for i, pl := range payloads {
			wg.Go(func() { out[i].Payload, out[i].Err = p.Request(ctx, topic, pl, opts...) })
		}
		wg.Wait()
		return out, nil
	}
	return p.requestBatch(ctx, t, payloads, &co, time.Now())
}

// requestBatch takes each payload through the write path as a request of
// its own (its spans, partition, admission, slot, waiter, envelope), then
// writes them all in one round trip on this goroutine (sender.write) and
// waits for each reply. A request its partition's breaker refuses is that
// request's error; any other error of the write path (Close, no slot in
// time, no responders, the partition count unknown) fails the batch: what
// the requests before it took is given back.
func (p *Producer) requestBatch(ctx context.Context, t *topic, payloads [][]byte, co *callOptions, start time.Time) ([]Reply, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(p.cfg.RequestTimeout))
		defer cancel()
	}
	var headers map[string]string
	if p.tr.tr == nil {
		// Without spans the trace context is the same for every request:
		// injected once (begin would copy the headers for each).
		headers = p.tr.inject(ctx, co.headers)
	}
	rqs := make([]request, len(payloads))
	items := make([]sendItem, 0, len(payloads))
	out := make([]Reply, len(payloads))
	var refused error
	for i, pl := range payloads {
		rq := &rqs[i]
		*rq = request{t: t, payload: pl, co: *co, start: start, via: viaBatch, batch: &items, headers: headers}
		rctx := ctx
		if p.tr.tr != nil {
			rctx = p.begin(ctx, rq)
		}
		err := p.write(rctx, rq)
		switch {
		case err == nil:
			continue
		case errors.Is(err, bus.ErrBreakerOpen):
			out[i].Err, refused = err, err
			p.finish(rq, err)
			continue
		}
		p.finish(rq, err)
		for _, it := range items {
			codec.PutBuffer(it.buf)
		}
		for j := range rqs[:i] {
			if out[j].Err == nil { // not refused (finished above)
				p.release(&rqs[j])
				p.finish(&rqs[j], err)
			}
		}
		return nil, err
	}
	if len(items) == 0 {
		return nil, refused // every request refused by its partition's breaker
	}
	p.send.write(ctx, items) // settles each: its write stamped, or its error handed to its waiter
	for i := range rqs {
		if out[i].Err != nil {
			continue // refused: finished above
		}
		out[i].Payload, out[i].Err = p.await(ctx, &rqs[i])
		p.finish(&rqs[i], out[i].Err)
	}
	return out, nil
}
