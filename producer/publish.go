package producer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Publish appends one event to topic and returns its stream entry id once
// Redis accepted it (and, with Config.WaitReplicas, its replicas: when they
// did not in time, the id comes with an error wrapping
// bus.ErrNotReplicated). With After or At the id is the delayed entry's
// ("d" and a producer-unique suffix), not a stream entry id: the event gets
// its stream id when it is due. It blocks for one round trip (shared with
// concurrent callers), bounded by ctx. Safe for concurrent use.
func (p *Producer) Publish(ctx context.Context, topic string, payload []byte, opts ...PublishOption) (string, error) {
	if p.closed.Load() {
		return "", fmt.Errorf("producer: publish: %w", bus.ErrClosed)
	}
	t, err := p.topics.get(topic)
	if err != nil {
		return "", err
	}
	if err := checkPayload(len(payload), p.cfg.MaxPayload); err != nil {
		return "", err
	}
	start := time.Now()
	co := applyPublish(opts)
	if err := co.check(); err != nil {
		return "", err
	}
	if co.once != "" {
		if co.delay != nil {
			return "", fmt.Errorf("producer: publish to %s: %w: IdempotencyKey with After or At", topic, bus.ErrInvalidConfig)
		}
		if !co.hasPartKey { // duplicates must meet in one partition
			co.partKey, co.hasPartKey = co.once, true
		}
	}
	pt, err := p.parts.pick(ctx, t, &co, nil, start.UnixNano())
	if err != nil {
		return "", err
	}
	tok, err := p.adm.breaker(pt)
	if err != nil {
		return "", err
	}
	if co.delay == nil {
		if err := p.press.room(ctx, pt, 1, start.UnixNano(), nil); err != nil {
			p.adm.report(pt, tok, err, start)
			return "", err
		}
	}
	admitted := time.Now()
	p.timings.Record(metrics.Admission, admitted.Sub(start))
	var span trace.Span
	if p.tr.tr != nil {
		ctx, span = p.tr.startSend(ctx, pt)
	}
	headers := p.tr.inject(ctx, co.headers)
	var id string
	dup := false
	switch {
	case co.delay != nil:
		id, err = p.delayed.one(ctx, pt, payload, headers, co.delay, admitted)
	case co.once != "":
		id, dup, err = p.publishOnce(ctx, pt, payload, headers, co.once, admitted)
	default:
		id, err = p.publish(ctx, pt, payload, headers, admitted)
	}
	if co.pubInfo != nil && err == nil {
		*co.pubInfo = PublishInfo{ID: id, Duplicate: dup}
	}
	if span != nil {
		span.SetAttributes(attribute.String("messaging.message.id", id))
		endSpan(span, err)
	}
	p.adm.report(pt, tok, err, start)
	return id, err
}

// publish writes one event to pt (a topic, or a partition of one).
func (p *Producer) publish(ctx context.Context, pt *topic, payload []byte, headers map[string]string, now time.Time) (string, error) {
	topic, key := pt.root().name, pt.key
	env := codec.Envelope{Kind: codec.KindEvent, Payload: payload, Sent: now.UnixNano()}
	env.Headers = headers
	w := waiterPool.Get().(*waiter)
	buf := encode(&p.cfg, &env)
	encoded := time.Now()
	p.timings.Record(metrics.Encode, encoded.Sub(now))
	if !p.send.submit(sendItem{key: key, buf: buf, pub: w, at: encoded}) {
		codec.PutBuffer(buf)
		putWaiter(w)
		return "", fmt.Errorf("producer: publish: %w", bus.ErrClosed)
	}
	var r result
	select {
	case r = <-w.ch:
		putWaiter(w)
	case <-ctx.Done():
		// A flusher still owns w and will settle it; leave w to it.
		return "", fmt.Errorf("producer: publish to %s: %w", topic, ctx.Err())
	}
	id, err := r.id, r.err
	if err != nil {
		// With bus.ErrNotReplicated the entry was written: its id comes
		// with the error.
		return id, fmt.Errorf("producer: publish to %s: %w", topic, err)
	}
	p.stats.published.Add(1)
	return id, nil
}

// publishOnce writes one idempotent event to pt: the once script checks the
// key's record and writes the event in one round trip (not shared with
// other callers' writes: a script of its own).
func (p *Producer) publishOnce(ctx context.Context, pt *topic, payload []byte, headers map[string]string, key string, now time.Time) (string, bool, error) {
	env := codec.Envelope{Kind: codec.KindEvent, Payload: payload, Sent: now.UnixNano(), Headers: headers}
	buf := encode(&p.cfg, &env)
	p.timings.Record(metrics.Encode, time.Since(now))
	start := time.Now()
	id, dup, err := p.send.port.AddOnce(ctx, pt.key, p.keys.Once(pt.name, bus.IdempotencyHash(key)), buf.B, p.send.trimCap(), p.cfg.window(pt.root().name))
	if !redisx.IsConnErr(err) {
		codec.PutBuffer(buf)
	}
	if err != nil {
		p.stats.writeErrors.Add(1)
		if ctx.Err() != nil {
			return "", false, fmt.Errorf("producer: publish to %s: %w", pt.root().name, ctx.Err())
		}
		return "", false, fmt.Errorf("producer: publish to %s: %w", pt.root().name, redisx.Classify(err, "the idempotent publish"))
	}
	p.timings.Record(metrics.Write, time.Since(start))
	if dup {
		p.stats.duplicates.Add(1)
	} else {
		p.stats.published.Add(1)
	}
	return id, dup, nil
}

// checkBatch is what both batch calls check before anything is sent: the
// producer is open, the topic's name, every payload's size.
func (p *Producer) checkBatch(what, topic string, payloads [][]byte) (*topic, error) {
	if p.closed.Load() {
		return nil, fmt.Errorf("producer: %s: %w", what, bus.ErrClosed)
	}
	t, err := p.topics.get(topic)
	if err != nil {
		return nil, err
	}
	for i, pl := range payloads {
		if err := checkPayload(len(pl), p.cfg.MaxPayload); err != nil {
			return nil, fmt.Errorf("producer: %s entry %d: %w", what, i, err)
		}
	}
	return t, nil
}

// PublishError is one failed entry of a PublishBatch.
type PublishError struct {
	Index int
	Err   error
}

func (e *PublishError) Error() string { return fmt.Sprintf("entry %d: %v", e.Index, e.Err) }

// Unwrap returns the entry's error.
func (e *PublishError) Unwrap() error { return e.Err }

// PublishBatch appends payloads to topic in one pipelined round trip, as
// one MULTI/EXEC transaction: the entries are contiguous in the stream and
// a blocked consumer receives them in one read (see redisx.DoBatch). It
// returns one stream id per payload ("" for a failed one) and, if any
// failed, an error joining a *PublishError per failure. Payloads are checked
// before anything is sent: one too large fails the whole batch.
func (p *Producer) PublishBatch(ctx context.Context, topic string, payloads [][]byte, opts ...PublishOption) ([]string, error) {
	t, err := p.checkBatch("publish batch", topic, payloads)
	if err != nil {
		return nil, err
	}
	co := applyPublish(opts)
	if err := co.check(); err != nil {
		return nil, err
	}
	if co.once != "" || co.pubInfo != nil {
		return nil, fmt.Errorf("producer: publish batch to %s: %w: IdempotencyKey and WithPublishInfo apply to Publish only", topic, bus.ErrInvalidConfig)
	}
	if len(payloads) == 0 {
		return nil, nil
	}
	start := time.Now()
	tok, err := p.adm.breaker(t)
	if err != nil {
		return nil, err
	}
	p.timings.Record(metrics.Admission, time.Since(start))
	var span trace.Span
	if p.tr.tr != nil {
		ctx, span = p.tr.startSend(ctx, t, attribute.Int("messaging.batch.message_count", len(payloads)))
	}
	if trace.SpanContextFromContext(ctx).IsValid() {
		co.headers = p.tr.inject(ctx, co.headers)
	}
	var ids []string
	if co.delay != nil {
		ids, err = p.delayed.batch(ctx, t, payloads, &co)
	} else {
		ids, err = p.publishBatch(ctx, t, payloads, &co)
	}
	if span != nil {
		endSpan(span, err)
	}
	p.adm.report(t, tok, err, start)
	return ids, err
}

func (p *Producer) publishBatch(ctx context.Context, t *topic, payloads [][]byte, co *callOptions) ([]string, error) {
	topic := t.name
	now := time.Now()
	env := codec.Envelope{Kind: codec.KindEvent, Sent: now.UnixNano()}
	env.Headers = co.headers
	bufs := make([]*codec.Buffer, len(payloads))
	adds := make([]redisx.Add, len(payloads))
	cp := p.send.trimCap()
	var picked []partCount // the partitions written to, in runs
	for i, pl := range payloads {
		// Each entry's partition (one for a PartitionKey batch, round robin
		// otherwise); AddBatch makes one transaction per partition.
		pt, err := p.parts.pick(ctx, t, co, nil, now.UnixNano())
		if err != nil {
			for _, b := range bufs[:i] {
				codec.PutBuffer(b)
			}
			return nil, err
		}
		env.Payload = pl
		bufs[i] = encode(&p.cfg, &env)
		adds[i] = redisx.Add{Key: pt.key, Cap: cp, Data: bufs[i].B}
		if i == 0 || pt != picked[len(picked)-1].pt {
			picked = append(picked, partCount{pt: pt})
		}
		picked[len(picked)-1].n++
	}
	if err := p.batchRoom(ctx, picked, now.UnixNano()); err != nil {
		for _, b := range bufs {
			codec.PutBuffer(b)
		}
		return nil, err
	}
	ids := make([]string, len(payloads))
	var errs []error
	recycle := true
	p.stats.writes.Add(1)
	for i, r := range p.send.addBatch(ctx, adds, make([]redisx.Result, 0, len(adds))) {
		if r.Err != nil {
			p.stats.writeErrors.Add(1)
			errs = append(errs, &PublishError{Index: i, Err: redisx.Classify(r.Err, "XADD")})
			if errors.Is(r.Err, bus.ErrNotReplicated) {
				ids[i] = r.ID // written, not replicated: its id is known
			}
			if redisx.IsConnErr(r.Err) {
				recycle = false // rueidis may still hold the buffer
			}
			continue
		}
		ids[i] = r.ID
	}
	if recycle {
		for _, b := range bufs {
			codec.PutBuffer(b)
		}
	}
	p.stats.published.Add(uint64(len(payloads) - len(errs)))
	if errs != nil {
		return ids, fmt.Errorf("producer: publish batch to %s: %d of %d failed: %w", topic, len(errs), len(payloads), errors.Join(errs...))
	}
	return ids, nil
}

// partCount is a run of a batch's entries going to one partition.
type partCount struct {
	pt *topic
	n  int64
}

// batchRoom takes room for a batch's entries in each stream they go to
// (runs of one partition merged first: a round-robin batch spreads over
// every partition).
func (p *Producer) batchRoom(ctx context.Context, runs []partCount, now int64) error {
	if p.press.limit == 0 {
		return nil
	}
	var per []partCount
	for _, r := range runs {
		i := slices.IndexFunc(per, func(c partCount) bool { return c.pt == r.pt })
		if i < 0 {
			per = append(per, r)
			continue
		}
		per[i].n += r.n
	}
	for _, c := range per {
		if err := p.press.room(ctx, c.pt, c.n, now, nil); err != nil {
			return err
		}
	}
	return nil
}
