package producer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
)

// The request write path (issue 25, point 2). Every request, whatever its
// verb (Request, each entry of a RequestBatch, Stream, a cached request
// Redis must answer), goes through the same steps, so that each gets the
// same spans, timings, stats and per-partition breaker:
//
//	begin    its spans (when traced) and the headers it carries
//	write    route: its partition, then admission (the partition's
//	           breaker, whether a worker serves the topic);
//	         reserve: its deadline, the reply reader, an in-flight slot,
//	           a correlation id and the waiter its reply goes to (a cached
//	           request may join an identical one in flight instead);
//	         its envelope, built here only;
//	         submit: to the sender, its batch's round trip or the cache
//	           script
//	await    its reply (a Stream reads its chunks; a cached request waits
//	           for its flight)
//	finish   its slot back, its outcome to its partition's breaker, its
//	           stages to the timings and the timing log, its spans ended

// How a request's envelope reaches Redis (request.via).
const (
	viaSender = iota // Request: the sender, batched with other callers' writes
	viaStream        // Stream: the sender; its waiter keeps the chunks that come
	viaBatch         // a RequestBatch entry: the batch's one round trip
	viaCache         // a cached request: the cache script (answer, join or write)
)

// request is one request on its way through the write path: what its verb
// asked for and what each step learned. It lives on its caller's stack
// (Request), in its Stream, or in its batch's slice, and nothing keeps it
// after the call: the waiter, the flight and the send item take copies of
// what they need. Its call options are a copy, not a pointer: a pointer to
// the caller's would make them escape to the heap (every step is handed
// rq, and what rq points to is assumed to leak), an allocation per call.
type request struct {
	t       *topic // the topic the caller named
	pt      *topic // the partition written to (route; a cached request picks it first, by its cache key)
	payload []byte
	co      callOptions
	headers map[string]string // co's, with the trace context (begin)
	start   time.Time
	via     uint8

	tok      breaker.Token
	admitted bool // admission let it through: finish reports tok and records its stages
	slot     bool // holds an in-flight slot (a cached request's is its flight's)
	deadline time.Time
	expired  <-chan time.Time // Config.RequestTimeout's timer, when ctx has no deadline
	timer    *time.Timer      // that timer when made for this request (a Stream's, a cached one's)
	seq      uint64           // correlation id (ids); 0 until reserved
	w        *waiter
	notice   cancelNotice // a cancellable request's (Request, Stream)
	tm       timing

	st    *streamState // a Stream's chunks (viaStream)
	batch *[]sendItem  // a RequestBatch's writes, made in one round trip (viaBatch)

	// a cached request (viaCache)
	hash   bus.CacheDigest
	flight *flight
	joined bool          // joined an identical request of this process in flight: writes nothing
	src    CacheSource   // where its answer came from
	age    time.Duration // and how old it was

	spans *spans // when traced (begin)
}

// spans are a traced request's: "request {topic}" (CLIENT) around it all,
// "send {topic}" (PRODUCER) for its write.
type spans struct {
	client, send trace.Span
	sendStart    time.Time
	cid          string // the request's correlation id, made once for both
}

// verb names rq's verb in errors.
func (rq *request) verb() string {
	if rq.via == viaStream {
		return "stream"
	}
	return "request"
}

// Request sends payload to topic and waits for the handler's reply. The
// deadline of ctx (or Config.RequestTimeout when ctx has none) travels with
// the request: workers skip requests whose caller already gave up.
//
// A request to a topic that no worker serves fails at once with
// bus.ErrNoResponders (nothing is written), unless Config.WaitForResponders
// or the WaitForResponders option says to queue it anyway. Whether a worker
// serves a topic is checked at most once a second per topic, in the
// background while the answer is yes.
//
// Errors: bus.ErrTimeout (with context.DeadlineExceeded) when the deadline
// passes, ctx's error when it is cancelled, bus.ErrNoResponders, *bus.RemoteError when the handler
// failed, bus.ErrPayloadTooLarge, bus.ErrClosed, bus.ErrBreakerOpen,
// bus.ErrUnavailable when Redis could not be reached, or Redis's own error
// reply. Safe for concurrent use.
func (p *Producer) Request(ctx context.Context, topic string, payload []byte, opts ...RequestOption) ([]byte, error) {
	if p.closed.Load() {
		return nil, fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}
	t, err := p.topics.get(topic)
	if err != nil {
		return nil, err
	}
	if err := checkPayload(len(payload), p.cfg.MaxPayload); err != nil {
		return nil, err
	}
	rq := request{t: t, payload: payload, co: applyRequest(opts), start: time.Now()}
	if rq.co.headers != nil {
		if err := rq.co.check(); err != nil {
			return nil, err
		}
	}
	ctx = p.begin(ctx, &rq)
	var reply []byte
	if t.cache != nil && (!rq.co.noCache || !rq.co.noStore) {
		reply, err = p.cachedRequest(ctx, &rq)
	} else if err = p.write(ctx, &rq); err == nil {
		reply, err = p.await(ctx, &rq)
	}
	p.finish(&rq, err)
	return reply, err
}

// begin starts rq's spans when the producer traces ("request {topic}",
// CLIENT, around the whole request; "send {topic}", PRODUCER, for its
// write, whose context the message carries) and sets the headers the
// message carries: the caller's, with the trace context added. It returns
// ctx with the request span.
func (p *Producer) begin(ctx context.Context, rq *request) context.Context {
	if p.tr.tr == nil {
		rq.headers = p.tr.inject(ctx, rq.co.headers)
		return ctx
	}
	sp := &spans{}
	ctx, sp.client = p.tr.startRequest(ctx, rq.t.name)
	sctx, send := p.tr.startSend(ctx, rq.t)
	sp.send, sp.sendStart = send, time.Now()
	rq.spans = sp
	rq.headers = p.tr.inject(sctx, rq.co.headers)
	return ctx
}

// write is the one request write path: it routes rq (partition,
// admission), reserves its reply (deadline, reader, slot, correlation id,
// waiter), builds its envelope and submits it. It returns once the
// envelope is submitted (a batch entry: queued for its batch's round
// trip), or why it was not; then nothing of rq stays registered, and
// finish still reports an admitted rq. A cached request that joined an
// identical one in flight writes nothing; one asking again (a takeover:
// rq.flight is set) goes straight to its envelope, its flight holding the
// rest.
func (p *Producer) write(ctx context.Context, rq *request) error {
	if rq.flight == nil {
		if err := p.route(ctx, rq); err != nil {
			return err
		}
		if err := p.reserve(ctx, rq); err != nil || rq.joined {
			return err
		}
	}
	var idb [32]byte
	now := time.Now()
	env := codec.Envelope{
		Kind: codec.KindRequest, ID: string(p.ids.appendID(idb[:0], rq.seq)), ReplyTo: p.reader.key,
		Deadline: rq.deadline.UnixNano(), Sent: now.UnixNano(), Payload: rq.payload, Token: rq.notice.token,
	}
	env.Headers = rq.headers
	if rq.via == viaStream {
		env.Flags = codec.FlagStream
	}
	return p.submit(ctx, rq, &env, now)
}

// route picks rq's partition (a cached request picked it already, by its
// cache key) and admits rq there: the partition's breaker, then whether a
// worker serves the topic.
func (p *Producer) route(ctx context.Context, rq *request) error {
	if rq.pt == nil {
		pt, err := p.parts.pick(ctx, rq.t, &rq.co, nil, rq.start.UnixNano())
		if err != nil {
			return err
		}
		rq.pt = pt
	}
	tok, err := p.adm.request(ctx, rq.pt, rq.co.wait, rq.start)
	if err != nil {
		return err
	}
	rq.tok, rq.admitted = tok, true
	rq.tm.admission = time.Since(rq.start)
	return nil
}

// reserve readies rq's reply before its write: its deadline, the reply
// reader, an in-flight slot, a correlation id and the waiter its reply goes
// to, registered under it. A cached request joins an identical one of this
// process in flight instead when there is one (rq.joined), or leads a new
// flight, which then holds the waiter and the slot. A RequestBatch's
// entries carry no cancel notice (their callers cannot cancel one alone).
// On an error it gives back what it took.
func (p *Producer) reserve(ctx context.Context, rq *request) error {
	rq.arm(ctx, p.cfg.RequestTimeout)
	if err := p.reader.ensure(ctx, rq.deadline); err != nil {
		p.release(rq)
		return err
	}
	if rq.via == viaCache && p.cache.join(ctx, rq) {
		return nil
	}
	if err := p.press.room(ctx, rq.pt, 1, rq.start.UnixNano(), rq.expired); err != nil {
		p.release(rq)
		if rq.flight != nil {
			p.cache.leave(rq.flight)
		}
		return err
	}
	if err := p.adm.acquire(ctx, rq.expired, rq.verb()); err != nil {
		p.release(rq)
		if rq.flight != nil {
			p.cache.leave(rq.flight)
		}
		return err
	}
	rq.slot = true
	rq.seq = p.ids.next()
	rq.tm.seq = rq.seq
	switch rq.via {
	case viaCache:
		p.cache.lead(rq.flight, rq.seq) // registers the flight's waiter
		rq.slot = false                 // the flight's now: its end gives it back
		return nil
	case viaSender, viaStream:
		rq.notice = noticeFor(rq.pt, rq.seq, rq.deadline)
		rq.w.cancel = rq.notice
	}
	p.reader.waiters.add(rq.seq, rq.w)
	return nil
}

// arm sets rq's deadline: ctx's, else Config.RequestTimeout (timeout) from
// its start, enforced by a timer. A Request's timer is its waiter's own,
// pooled with it: a context.WithTimeout per call (an allocation, a runtime
// timer, registration in the parent ctx) showed in the CPU profile
// (docs/performance.md, "Decisions in the code"). A Stream's and a cached
// request's are made for them (a cached request's waiter is its flight's).
// It takes rq's waiter: from the pool, or a Stream's own (not pooled).
func (rq *request) arm(ctx context.Context, timeout time.Duration) {
	switch rq.via {
	case viaStream:
		rq.w = &waiter{ch: make(chan result, 1), st: rq.st}
	case viaSender, viaBatch:
		rq.w = waiterPool.Get().(*waiter)
		rq.w.write = 0
	}
	deadline, ok := ctx.Deadline()
	if ok {
		rq.deadline = deadline
		return
	}
	rq.deadline = rq.start.Add(timeout)
	if rq.w == nil || rq.w.timer == nil {
		rq.timer = time.NewTimer(timeout)
		rq.expired = rq.timer.C
		return
	}
	rq.w.timer.Reset(timeout)
	rq.expired = rq.w.timer.C
}

// submit hands rq's envelope to the writer of its verb: the sender
// (Request, Stream: batched with other callers' writes; a write error
// comes back through the waiter like a reply, so the caller wakes once
// either way), its batch's round trip (written by requestBatch once every
// entry is in), or the cache script (one round trip that may answer the
// request instead of writing it).
func (p *Producer) submit(ctx context.Context, rq *request, env *codec.Envelope, now time.Time) error {
	if rq.via == viaCache {
		p.cache.ask(ctx, rq, env)
		return nil
	}
	buf := encode(&p.cfg, env)
	encoded := time.Now()
	rq.tm.encode = encoded.Sub(now)
	it := sendItem{key: rq.pt.key, buf: buf, seq: rq.seq, st: rq.st, at: encoded}
	if rq.via == viaBatch {
		*rq.batch = append(*rq.batch, it)
		return nil
	}
	if !p.send.submit(it) {
		codec.PutBuffer(buf)
		p.release(rq)
		return fmt.Errorf("producer: %s: %w", rq.verb(), bus.ErrClosed)
	}
	return nil
}

// release gives back what reserve took for rq when no reply is awaited:
// its waiter (taken out of the registry unless someone else took it: they
// hand it a result) and its in-flight slot.
func (p *Producer) release(rq *request) {
	if w := rq.w; w != nil {
		rq.w = nil
		if (rq.seq == 0 || p.reader.waiters.take(rq.seq) != nil) && w.st == nil {
			putWaiter(w) // a Stream's waiter is not pooled
		}
	}
	if rq.slot {
		rq.slot = false
		p.adm.release()
	}
}

// await waits for rq's reply (or its write's error), bounded by its
// deadline, ctx and Close. A caller that gives up takes its waiter back
// and, when it cancelled, has the handler cancelled too (a notice).
func (p *Producer) await(ctx context.Context, rq *request) ([]byte, error) {
	w := rq.w
	rq.w = nil // the waiter goes back to the pool here, whatever happens
	var gaveUp error
	select {
	case r := <-w.ch:
		if r.err != nil && !r.writeErr && (ctx.Err() != nil || !time.Now().Before(rq.deadline)) {
			// The deadline passed as a remote error arrived (often the
			// handler's own "context deadline exceeded": its ctx carries
			// the same deadline). The caller gave up: a timeout, whichever
			// of the two select saw first.
			putWaiter(w)
			return nil, p.stats.ctxErr(cmp.Or(ctx.Err(), context.DeadlineExceeded), "waiting for the reply")
		}
		rq.tm.fill(w, &r)
		putWaiter(w)
		return p.stats.answer(&r)
	case <-ctx.Done():
		gaveUp = ctx.Err()
	case <-rq.expired:
		gaveUp = context.DeadlineExceeded
	case <-p.closing:
		if p.reader.waiters.take(rq.seq) != nil {
			putWaiter(w)
		}
		return nil, fmt.Errorf("producer: %s: %w", rq.verb(), bus.ErrClosed)
	}
	if p.reader.waiters.take(rq.seq) != nil {
		if errors.Is(gaveUp, context.Canceled) {
			p.cancels.cancel(w.cancel) // the handler stops too
		}
		putWaiter(w)
		return nil, p.stats.ctxErr(gaveUp, "waiting for the reply")
	}
	r := <-w.ch // the reader took it and is handing the reply over
	rq.tm.fill(w, &r)
	putWaiter(w)
	return p.stats.answer(&r)
}

// finish ends rq, however it ended (err): its in-flight slot goes back;
// when it was admitted, its outcome goes to its partition's breaker and
// its stages to the timings (and the timing log); its spans end.
func (p *Producer) finish(rq *request, err error) {
	if rq.slot {
		rq.slot = false
		p.adm.release()
	}
	if rq.timer != nil {
		rq.timer.Stop()
	}
	if rq.admitted {
		p.adm.report(rq.pt, rq.tok, err, rq.start)
		if rq.via == viaCache {
			p.timings.cached(rq.t.name, rq.start, rq.tm.admission, rq.src, err)
		} else {
			p.timings.request(rq.t.name, rq.start, &rq.tm, err)
		}
	}
	if rq.spans != nil {
		p.tr.end(rq, &p.ids, err)
	}
}
