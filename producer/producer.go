package producer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Inside, a Producer is a composition (issue 25, point 2; DESIGN.md,
// "Inside producer and consumer"), each part a type with its own fields
// and file; Producer wires them in New and keeps the public methods:
//
//	topics       the registry of topics written to (topics.go)
//	partitioner  the partition of each write, its counts from the one
//	             watcher of partition counts, internal/topology (partition.go)
//	admission    breakers per topic and partition, responders, in-flight
//	             slots (admission.go, responders.go)
//	sender       XADDs gathered into pipelined writes (sender.go)
//	replyReader  the reply stream, its reader goroutine, the waiters
//	             (reader.go, registry.go)
//	cache        the response cache: local tier, flights, the cache script
//	             (cached.go, flight.go, cache.go)
//	canceller    cancel notices (cancel.go)
//	delayer      delayed events (delayed.go)
//	background   the goroutines of background refreshes (background.go)
//
// Every request verb goes through one write path (request.go). Close stops
// the parts in this order: a cancel notice queued for each abandoned
// request, waiting callers woken (closing), background refreshes stopped
// and waited for, the reply reader signalled, queued notices then queued
// writes flushed (bounded by Close's ctx), the reader waited for, the reply
// stream deleted; the breakers and the local tier last.

// Producer publishes events and sends requests. Create it with New; it is
// safe for concurrent use. Close it when done to remove its reply stream.
type Producer struct {
	cfg  Config
	keys bus.Keys
	log  zerolog.Logger
	ids  ids // correlation ids

	topics  *topics      // the topics written to
	parts   *partitioner // the partition of each write
	adm     *admission   // breakers, responders, in-flight slots
	press   *pressure    // backpressure: room in each stream's backlog
	send    *sender      // batches XADDs
	reader  *replyReader // the reply stream and the waiters
	cache   *cache       // the response cache (nil when no topic is cached)
	cancels *canceller   // writes cancel notices
	delayed *delayer     // publishes delayed events
	tr      tracing      // OpenTelemetry (trace.go)
	stats   counters
	timings stages
	// bg runs background refreshes (responders, partition counts, cache
	// epochs); Close stops it.
	bg *background
	// portFor, when set (tests: WithFaults), builds the port.
	portFor func(client) port

	mu       sync.Mutex // serialises Close
	closed   atomic.Bool
	closing  chan struct{} // closed by Close: wakes waiting requesters
	closeErr error
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
	p := &Producer{cfg: cfg, keys: c.Keys(), log: zerolog.Nop(), closing: make(chan struct{})}
	for _, o := range opts {
		o(p)
	}
	p.ids.inc = hex.EncodeToString(rnd[:4])
	// The components, each given what it uses of the others.
	port := portOf(c, p.portFor)
	replyKey := p.keys.Reply(p.cfg.ID)
	if p.cfg.Owner != "" {
		replyKey = p.keys.Reply(p.cfg.Owner + "." + p.cfg.ID)
	}
	p.timings.cfg, p.timings.log = &p.cfg, p.log
	p.tr = newTracing(&p.cfg)
	p.bg = newBackground()
	p.adm = &admission{cfg: &p.cfg, port: port, log: p.log, stats: &p.stats, bg: p.bg,
		slots: make(chan struct{}, p.cfg.MaxInFlight), closing: p.closing}
	p.press = newPressure(&p.cfg, port, p.bg, p.log, &p.stats, p.closing)
	p.parts = newPartitioner(port, p.keys, p.adm, &p.stats, p.bg)
	p.topics = &topics{keys: p.keys, cache: p.cfg.Cache, adm: p.adm, parts: p.parts}
	p.reader = &replyReader{key: replyKey, ids: &p.ids, waiters: newRegistry(), cfg: &p.cfg, port: port, log: p.log, stats: &p.stats, inFlight: p.adm.inFlight}
	p.send = newSender(port, &p.cfg, p.reader, &p.stats, &p.timings.Recorder)
	p.cancels = newCanceller(port, &p.ids, replyKey, &p.stats, p.log)
	p.delayed = &delayer{port: port, keys: p.keys, ids: &p.ids, cfg: &p.cfg, parts: p.parts, stats: &p.stats, timings: &p.timings.Recorder, log: p.log}
	cache, err := newCache(&p.cfg, &p.stats)
	if err != nil {
		return nil, err
	}
	if cache == nil {
		return p, nil
	}
	cache.port, cache.keys, cache.ids, cache.reader, cache.send = port, p.keys, &p.ids, p.reader, p.send
	cache.adm, cache.closing, cache.timings, cache.bg = p.adm, p.closing, &p.timings, p.bg
	p.reader.flights = cache
	p.cache = cache
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
		InFlight:    p.adm.inFlight(),
		WriteErrors: p.stats.writeErrors.Load(), BreakerRejected: p.stats.breakerRejected.Load(), NoResponders: p.stats.noResponders.Load(),
		Writes: p.stats.writes.Load(), ReplyReads: p.stats.replyReads.Load(), Forged: p.stats.forged.Load(),
		Cancelled: p.stats.cancelled.Load(), CancelErrors: p.stats.cancelErrors.Load(), Streams: p.stats.streams.Load(),
		Chunks: p.stats.chunks.Load(), StreamsBroken: p.stats.streamsBroken.Load(), Delayed: p.stats.delayed.Load(), Duplicates: p.stats.duplicates.Load(),
		BacklogWaits: p.stats.backlogWaits.Load(), BacklogFull: p.stats.backlogFull.Load(), BacklogDropped: p.stats.backlogDropped.Load(),
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

// callOptions are what a call's options chose (options.go).
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

	once    string       // IdempotencyKey
	pubInfo *PublishInfo // WithPublishInfo

	cost    int64 // Cost
	hasCost bool

	priority    int // Priority
	hasPriority bool
	tenant      string // Tenant
}

// withCost returns co with its Cost, Priority and Tenant in its headers
// (a copy of the caller's map: WithHeaders's map is never written).
func (co *callOptions) withCost() {
	prio := co.hasPriority && co.priority > 0
	if !co.hasCost && !co.hasPriority && co.tenant == "" {
		return
	}
	// Non-nil from here: a call checks its options (check) when it has
	// headers.
	h := make(map[string]string, len(co.headers)+3)
	for k, v := range co.headers {
		h[k] = v
	}
	if co.hasCost {
		h[CostHeader] = strconv.FormatInt(co.cost, 10)
	}
	if prio {
		h[bus.PriorityHeader] = strconv.Itoa(co.priority)
	}
	if co.tenant != "" {
		h[bus.TenantHeader] = co.tenant
	}
	co.headers = h
}

// check refuses headers over the limits (checkHeaders), and a Priority
// or a Tenant out of range.
func (co *callOptions) check() error {
	if err := checkHeaders(co.headers); err != nil {
		return err
	}
	if co.hasPriority && (co.priority < 0 || co.priority >= bus.MaxPriorities) {
		return fmt.Errorf("producer: %w: priority %d out of [0, %d]", bus.ErrInvalidConfig, co.priority, bus.MaxPriorities-1)
	}
	if co.tenant != "" {
		if err := bus.ValidateName("tenant", co.tenant); err != nil {
			return fmt.Errorf("producer: %w", err)
		}
	}
	return nil
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

// checkPayload reports a payload of n bytes over max (Config.MaxPayload),
// wrapping bus.ErrPayloadTooLarge.
func checkPayload(n, max int) error {
	if n > max {
		return fmt.Errorf("producer: %w: %d bytes, max %d", bus.ErrPayloadTooLarge, n, max)
	}
	return nil
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
	if err := p.reader.remove(ctx); err != nil {
		p.closeErr = fmt.Errorf("producer: close: delete reply stream (it expires after %v): %w", p.cfg.ReplyTTL, err)
	}
	return p.closeErr
}
