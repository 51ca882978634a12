package producer

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Producer publishes events and sends requests. Create it with New; it is
// safe for concurrent use. Close it when done to remove its reply stream.
type Producer struct {
	c      *bus.Client
	cfg    Config
	keys   bus.Keys
	log    zerolog.Logger
	ids    ids // correlation ids
	reader *replyReader
	slots  chan struct{}
	topics *topics
	adm    *admission
	parts  *partitioner

	mu       sync.Mutex // serialises Close
	closed   atomic.Bool
	closing  chan struct{} // closed by Close: wakes waiting requesters
	stats    counters
	closeErr error
	timings  metrics.Recorder

	send    *sender    // batches XADDs
	cancels *canceller // writes cancel notices
	tr      tracing    // OpenTelemetry (trace.go)

	cache *cache // the response cache (nil when no topic is cached)
	// bg runs background refreshes (responders, partition counts, cache
	// epochs); Close stops it.
	bg *background
}

// Option configures optional collaborators of a Producer.
type Option func(*Producer)

// WithLogger sets the logger (default: none).
func WithLogger(l zerolog.Logger) Option { return func(p *Producer) { p.log = l } }

// New returns a Producer that writes through c, under c's key prefix. It
// neither dials nor starts goroutines; the reply reader starts with the
// first Request. The caller keeps ownership of c and closes it after Close.
func New(c *bus.Client, cfg Config, opts ...Option) (*Producer, error) {
	if c == nil {
		return nil, fmt.Errorf("producer: %w: nil client", bus.ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	cfg = cfg.withDefaults()
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("producer: random id: %w", err)
	}
	if cfg.ID == "" {
		cfg.ID = hex.EncodeToString(rnd[:])
	}
	if cfg.Owner == "" && c.User() != "" {
		if err := redisx.ValidOwner(c.User()); err != nil {
			return nil, fmt.Errorf("producer: %w: the client's user names the reply stream (Config.Owner): %w", bus.ErrInvalidConfig, err)
		}
		cfg.Owner = c.User()
	}
	p := &Producer{
		c:       c,
		cfg:     cfg,
		keys:    c.Keys(),
		log:     zerolog.Nop(),
		slots:   make(chan struct{}, cfg.MaxInFlight),
		closing: make(chan struct{}),
	}
	for _, o := range opts {
		o(p)
	}
	p.ids.inc = hex.EncodeToString(rnd[:4])
	replyKey := p.keys.Reply(cfg.ID)
	if cfg.Owner != "" {
		replyKey = p.keys.Reply(cfg.Owner + "." + cfg.ID)
	}
	p.reader = &replyReader{key: replyKey, ids: &p.ids, waiters: newRegistry(), cfg: &p.cfg, rc: c.Redis(), log: p.log,
		stats: &p.stats, flightDone: func(f *flight, r result) { p.cache.complete(f, r, SourceNone, nil) }}
	p.tr = newTracing(&cfg)
	p.bg = newBackground()
	p.adm = &admission{cfg: &p.cfg, rc: c.Redis(), log: p.log, stats: &p.stats, bg: p.bg}
	p.parts = newPartitioner(c.Redis(), p.keys, p.adm, &p.stats, p.bg)
	p.topics = &topics{keys: p.keys, cache: p.cfg.Cache, adm: p.adm, parts: p.parts}
	p.send = newSender(c.Redis(), &p.cfg, p.reader, &p.stats, &p.timings)
	p.cancels = newCanceller(c.Redis(), &p.ids, replyKey, &p.stats, p.log)
	cache, err := newCache(&p.cfg, &p.stats)
	if err != nil {
		return nil, err
	}
	if cache != nil {
		cache.rc, cache.keys, cache.ids, cache.reader, cache.send = c.Redis(), p.keys, &p.ids, p.reader, p.send
		cache.slots, cache.closing, cache.timings, cache.log, cache.bg = p.slots, p.closing, &p.timings, p.log, p.bg
		p.cache = cache
	}
	return p, nil
}

// ID returns the producer id (names its reply stream).
func (p *Producer) ID() string { return p.cfg.ID }

// ReplyStream returns the key of this producer's reply stream.
func (p *Producer) ReplyStream() string { return p.reader.key }

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (p *Producer) Stats() Stats {
	s := Stats{
		Published: p.stats.published.Load(), Requests: p.stats.requests.Load(),
		Replies: p.stats.replies.Load(), Late: p.stats.late.Load(), Timeouts: p.stats.timeouts.Load(),
		RemoteErrors: p.stats.remoteErrors.Load(), Malformed: p.stats.malformed.Load(),
		InFlight:    len(p.slots),
		WriteErrors: p.stats.writeErrors.Load(), BreakerRejected: p.stats.breakerRejected.Load(), NoResponders: p.stats.noResponders.Load(),
		Writes: p.stats.writes.Load(), ReplyReads: p.stats.replyReads.Load(), Forged: p.stats.forged.Load(),
		Cancelled: p.stats.cancelled.Load(), CancelErrors: p.stats.cancelErrors.Load(), Streams: p.stats.streams.Load(),
		Chunks: p.stats.chunks.Load(), StreamsBroken: p.stats.streamsBroken.Load(), Delayed: p.stats.delayed.Load(),
		CacheHitsLocal: p.stats.hitsLocal.Load(), CacheHitsShared: p.stats.hitsShared.Load(), CacheMisses: p.stats.cacheMisses.Load(),
		CoalescedLocal: p.stats.coalescedLocal.Load(), CoalescedRemote: p.stats.coalescedRemote.Load(),
		CacheTakeovers: p.stats.takeovers.Load(), CacheCorrupt: p.stats.cacheCorrupt.Load(), CacheEvictions: p.stats.localEvicted.Load(),
	}
	if p.cache != nil && p.cache.local != nil {
		s.CacheLocalBytes, s.CacheLocalEntries = int64(p.cache.local.WeightedSize()), p.cache.local.EstimatedSize()
	}
	return s
}

// BreakerState returns the state of topic's circuit breaker (of its
// partition 0, for a partitioned topic: each partition has its own), and
// false if the producer has none for it (breakers off, or no call to it
// yet).
func (p *Producer) BreakerState(topicName string) (breaker.State, bool) {
	return p.topics.breakerState(topicName)
}

// Timings returns a snapshot of the per-stage latency histograms this
// producer recorded (see package metrics): for requests every stage but
// ReplyWrite (QueueWait and Handler as the worker reported them on the
// reply); for publishes Admission, Encode and Write. Safe for concurrent use.
func (p *Producer) Timings() *metrics.Snapshot { return p.timings.Snapshot() }

type callOptions struct {
	headers map[string]string
	wait    bool // WaitForResponders

	// response cache (see cache.go)
	noCache, noStore bool
	maxAge           time.Duration
	key              string
	hasKey           bool
	info             *CacheInfo

	partKey    string // PartitionKey
	hasPartKey bool

	delay *delaySpec // After, At

	trace *timing // a traced request's stages, for its spans
}

// Limits on a message's headers, checked before anything is sent: the
// decoder refuses more than 1,024 headers, and a worker would dead-letter
// such an entry while its caller waited out its deadline.
const (
	MaxHeaders     = 1024
	MaxHeaderBytes = 64 << 10 // keys and values together
)

// checkHeaders reports headers over MaxHeaders or MaxHeaderBytes, wrapping
// bus.ErrPayloadTooLarge.
func checkHeaders(h map[string]string) error {
	if len(h) > MaxHeaders {
		return fmt.Errorf("producer: %w: %d headers, max %d", bus.ErrPayloadTooLarge, len(h), MaxHeaders)
	}
	n := 0
	for k, v := range h {
		n += len(k) + len(v)
	}
	if n > MaxHeaderBytes {
		return fmt.Errorf("producer: %w: headers of %d bytes, max %d", bus.ErrPayloadTooLarge, n, MaxHeaderBytes)
	}
	return nil
}

func (p *Producer) checkPayload(n int) error {
	if n > p.cfg.MaxPayload {
		return fmt.Errorf("producer: %w: %d bytes, max %d", bus.ErrPayloadTooLarge, n, p.cfg.MaxPayload)
	}
	return nil
}

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
	if err := p.checkPayload(len(payload)); err != nil {
		return "", err
	}
	start := time.Now()
	co := applyPublish(opts)
	if err := checkHeaders(co.headers); err != nil {
		return "", err
	}
	pt, err := p.parts.pick(ctx, t, &co, nil, start.UnixNano())
	if err != nil {
		return "", err
	}
	tok, err := p.adm.breaker(pt)
	if err != nil {
		return "", err
	}
	admitted := time.Now()
	p.timings.Record(metrics.Admission, admitted.Sub(start))
	var span trace.Span
	if p.tr.tr != nil {
		ctx, span = p.tr.startSend(ctx, pt)
	}
	headers := p.tr.inject(ctx, co.headers)
	var id string
	if co.delay != nil {
		id, err = p.publishDelayed(ctx, pt, payload, headers, co.delay, admitted)
	} else {
		id, err = p.publish(ctx, pt, payload, headers, admitted)
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
	buf := codec.Encode(&env)
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
		if err := p.checkPayload(len(pl)); err != nil {
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
	if err := checkHeaders(co.headers); err != nil {
		return nil, err
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
		ids, err = p.publishBatchDelayed(ctx, t, payloads, &co)
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
		bufs[i] = codec.Encode(&env)
		adds[i] = redisx.Add{Key: pt.key, Cap: cp, Data: bufs[i].B}
	}
	ids := make([]string, len(payloads))
	var errs []error
	recycle := true
	p.stats.writes.Add(1)
	for i, r := range p.send.addBatch(ctx, adds, make([]redisx.Result, 0, len(adds))) {
		if r.Err != nil {
			p.stats.writeErrors.Add(1)
			errs = append(errs, &PublishError{Index: i, Err: redisx.Unavailable(r.Err)})
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
	if err := p.checkPayload(len(payload)); err != nil {
		return nil, err
	}
	start := time.Now()
	co := applyRequest(opts)
	if co.headers != nil {
		if err := checkHeaders(co.headers); err != nil {
			return nil, err
		}
	}
	if p.tr.tr != nil {
		return p.tracedRequest(ctx, t, payload, &co, start)
	}
	co.headers = p.tr.inject(ctx, co.headers)
	return p.untracedRequest(ctx, t, payload, &co, start)
}

// untracedRequest is Request after its checks (and, when traced, inside
// its spans).
func (p *Producer) untracedRequest(ctx context.Context, t *topic, payload []byte, co *callOptions, start time.Time) ([]byte, error) {
	if t.cache != nil && (!co.noCache || !co.noStore) {
		return p.cachedRequest(ctx, t, payload, co, start)
	}
	pt, err := p.parts.pick(ctx, t, co, nil, start.UnixNano())
	if err != nil {
		return nil, err
	}
	tok, err := p.adm.request(ctx, pt, co.wait, start)
	if err != nil {
		return nil, err
	}
	var tm timing
	tm.admission = time.Since(start)
	reply, err := p.request(ctx, pt, payload, co.headers, &tm, start)
	p.adm.report(pt, tok, err, start)
	p.recordRequest(t.name, start, &tm, err)
	if co.trace != nil {
		*co.trace = tm
	}
	return reply, err
}

// tracedRequest is Request in a "request {topic}" CLIENT span holding a
// "send {topic}" PRODUCER span for the write (whose context the message
// carries).
func (p *Producer) tracedRequest(ctx context.Context, t *topic, payload []byte, co *callOptions, start time.Time) ([]byte, error) {
	ctx, client := p.tr.startRequest(ctx, t.name)
	sctx, send := p.tr.startSend(ctx, t)
	sendStart := time.Now()
	co.headers = p.tr.inject(sctx, co.headers)
	var tm timing
	co.trace = &tm
	var ci CacheInfo
	if t.cache != nil && co.info == nil {
		co.info = &ci // to name the tier that answered on the span
	}
	reply, err := p.untracedRequest(ctx, t, payload, co, start)
	if co.info != nil && co.info.Source != SourceNone {
		client.SetAttributes(attribute.String("mycelium.cache.source", co.info.Source.String()))
		if co.info.Age > 0 {
			client.SetAttributes(attribute.Int64("mycelium.cache.age_ms", co.info.Age.Milliseconds()))
		}
	}
	if tm.entry != "" {
		send.SetAttributes(attribute.String("messaging.message.id", tm.entry))
		client.SetAttributes(attribute.String("messaging.message.id", tm.entry))
	}
	if tm.seq != 0 {
		id := p.ids.id(tm.seq)
		send.SetAttributes(attribute.String("messaging.message.conversation_id", id))
		client.SetAttributes(attribute.String("messaging.message.conversation_id", id))
	}
	if tm.replied {
		client.SetAttributes(attribute.Int64(waitAttr(tm.retried), tm.queue.Microseconds()),
			attribute.Int64("mycelium.handler_us", tm.handler.Microseconds()))
	}
	var sendErr error
	if err != nil && tm.write == 0 && !tm.replied {
		sendErr = err // the write itself failed, or never happened
	}
	endSpan(send, sendErr, sendEnd(sendStart, tm.encode+tm.write))
	endSpan(client, err)
	return reply, err
}

func (p *Producer) request(ctx context.Context, t *topic, payload []byte, headers map[string]string, tm *timing, start time.Time) ([]byte, error) {
	key := t.key
	w := waiterPool.Get().(*waiter)
	w.write = 0
	// Without a ctx deadline, Config.RequestTimeout applies through the
	// waiter's own reusable timer: a context.WithTimeout per call (an
	// allocation, a runtime timer, registration in the parent ctx) showed in
	// the CPU profile (docs/performance.md, "Decisions in the code").
	var expired <-chan time.Time
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = start.Add(p.cfg.RequestTimeout)
		w.timer.Reset(p.cfg.RequestTimeout)
		expired = w.timer.C
	}
	if err := p.reader.ensure(ctx, deadline); err != nil {
		putWaiter(w)
		return nil, err
	}

	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		putWaiter(w)
		return nil, fmt.Errorf("%w: %w", errSlotWait, p.stats.ctxErr(ctx.Err(), "waiting for an in-flight slot"))
	case <-expired:
		putWaiter(w)
		return nil, fmt.Errorf("%w: %w", errSlotWait, p.stats.ctxErr(context.DeadlineExceeded, "waiting for an in-flight slot"))
	case <-p.closing:
		putWaiter(w)
		return nil, fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}
	defer func() { <-p.slots }()

	seq := p.ids.next()
	tm.seq = seq
	var idb [32]byte
	id := p.ids.appendID(idb[:0], seq)
	now := time.Now()
	w.cancel = noticeFor(t, seq, deadline)
	env := codec.Envelope{
		Kind: codec.KindRequest, ID: string(id), ReplyTo: p.reader.key,
		Deadline: deadline.UnixNano(), Sent: now.UnixNano(), Payload: payload, Token: w.cancel.token,
	}
	env.Headers = headers
	p.reader.waiters.add(seq, w)
	// The write is batched with other callers' (see sender); a write error
	// comes back through w like a reply, so the caller wakes once either way.
	buf := codec.Encode(&env)
	encoded := time.Now()
	tm.encode = encoded.Sub(now)
	if !p.send.submit(sendItem{key: key, buf: buf, seq: seq, at: encoded}) {
		codec.PutBuffer(buf)
		if p.reader.waiters.take(seq) != nil {
			putWaiter(w)
		}
		return nil, fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}

	var gaveUp error
	select {
	case r := <-w.ch:
		if r.err != nil && !r.writeErr && (ctx.Err() != nil || !time.Now().Before(deadline)) {
			// The deadline passed as a remote error arrived (often the
			// handler's own "context deadline exceeded": its ctx carries
			// the same deadline). The caller gave up: a timeout, whichever
			// of the two select saw first.
			putWaiter(w)
			return nil, p.stats.ctxErr(cmp.Or(ctx.Err(), context.DeadlineExceeded), "waiting for the reply")
		}
		return p.received(w, &r, tm)
	case <-ctx.Done():
		gaveUp = ctx.Err()
	case <-expired:
		gaveUp = context.DeadlineExceeded
	case <-p.closing:
		if p.reader.waiters.take(seq) != nil {
			putWaiter(w)
		}
		return nil, fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}
	if p.reader.waiters.take(seq) != nil {
		if errors.Is(gaveUp, context.Canceled) {
			p.cancels.cancel(w.cancel) // the handler stops too
		}
		putWaiter(w)
		return nil, p.stats.ctxErr(gaveUp, "waiting for the reply")
	}
	r := <-w.ch // the reader took it and is handing the reply over
	return p.received(w, &r, tm)
}

// received returns w's result r to the caller and w to the pool.
func (p *Producer) received(w *waiter, r *result, tm *timing) ([]byte, error) {
	tm.fill(w, r)
	putWaiter(w)
	return p.stats.answer(r)
}

// Close stops the reply reader, fails waiting requests with bus.ErrClosed
// and deletes the reply stream. It waits for the reader to exit, bounded by
// ctx. Calling Close again returns the first result. It does not close the
// bus.Client.
func (p *Producer) Close(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Swap(true) {
		return p.closeErr
	}
	p.cancels.abandon(p.reader.waiters) // before the callers wake and leave
	close(p.closing)                    // wakes every waiting caller with ErrClosed
	defer p.topics.closeBreakers()
	if p.cache != nil {
		defer p.cache.stop()
	}
	p.bg.stop()
	started := p.reader.shutdown()
	p.cancels.close(ctx)
	if err := p.send.close(ctx); err != nil {
		p.closeErr = fmt.Errorf("producer: close: waiting for queued writes: %w", err)
		return p.closeErr
	}
	if !started {
		return nil
	}
	if err := p.reader.wait(ctx); err != nil {
		p.closeErr = fmt.Errorf("producer: close: waiting for the reply reader: %w", err)
		return p.closeErr
	}
	if _, err := redisx.Delete(ctx, p.c.Redis(), p.reader.key); err != nil {
		p.closeErr = fmt.Errorf("producer: close: delete reply stream (it expires after %v): %w", p.cfg.ReplyTTL, err)
	}
	return p.closeErr
}
