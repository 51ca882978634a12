package producer

import (
	"cmp"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// Upper bounds of Config fields: Validate refuses more.
const (
	MaxInFlightCap = 1_000_000
	MaxPayloadCap  = 512 << 20 // Redis's own bulk-string limit (proto-max-bulk-len)
	MaxReplyBatch  = 10_000
)

// Defaults for Config fields left at their zero value.
const (
	DefaultMaxInFlight    = 4096
	DefaultMaxPayload     = 4 << 20
	DefaultStreamMaxLen   = 100_000
	DefaultReplyTTL       = time.Minute
	DefaultReplyBlock     = 2 * time.Second
	DefaultReplyBatch     = 512
	DefaultRequestTimeout = 30 * time.Second
	// DefaultWaitTimeout bounds a WAIT for replicas (Config.WaitReplicas).
	DefaultWaitTimeout   = time.Second
	DefaultTimingSample  = 1000
	DefaultSlowRequest   = 10 * time.Second
	DefaultResponderIdle = 15 * time.Second
)

// Config tunes a Producer. The zero value is ready to use.
type Config struct {
	// ID names this producer instance and its reply stream. Empty means a
	// random id (a new reply stream per process, the normal case).
	ID string
	// Owner names whose reply streams this producer's is:
	// <prefix>:{r.<owner>.<id>}. The producer role of bus-worker acl
	// --role producer --user NAME reads and writes only the reply streams
	// of owner NAME (docs/security.md), so a producer isolated from the
	// others must have its user's name here. Empty means the client's
	// ACL user (bus.Client.User); for the default user, none:
	// <prefix>:{r.<id>}. At most 100 bytes, no '.', braces, spaces or glob
	// characters.
	Owner string
	// MaxInFlight bounds outstanding requests. A Request beyond it waits for
	// a slot, bounded by its ctx. Zero means DefaultMaxInFlight.
	MaxInFlight int
	// MaxPayload is the largest payload accepted, in bytes. Larger ones fail
	// with bus.ErrPayloadTooLarge before touching Redis. Zero means
	// DefaultMaxPayload.
	MaxPayload int
	// Compression compresses the payloads of requests and events of at
	// least CompressMin bytes (0: codec.DefaultCompressMin) when it pays
	// (docs/performance.md, "Large payloads"): codec.CompressS2 (fast) or
	// codec.CompressZstd (smaller). The envelope says so, and workers then
	// compress their replies the same way. Every reader of the topics must
	// know compressed envelopes (this version, Go and Python): opt in once
	// they all do. Zero: none.
	Compression codec.Compression
	CompressMin int
	// StreamMaxLen caps each topic stream (XADD MAXLEN ~). Zero means
	// DefaultStreamMaxLen; negative means no trimming.
	StreamMaxLen int64
	// StreamMaxAge, when positive, trims topic streams by age instead
	// (XADD MINID ~): entries older than this are dropped on write, whether
	// or not a worker handled them. It replaces StreamMaxLen.
	StreamMaxAge time.Duration
	// ReplyTTL is how long the reply stream outlives its producer. The live
	// producer refreshes it every ReplyTTL/3. Zero means DefaultReplyTTL.
	ReplyTTL time.Duration
	// ReplyBlock is how long one blocking reply read waits. Zero means
	// DefaultReplyBlock.
	ReplyBlock time.Duration
	// ReplyBatch is the most replies read at once. Zero means
	// DefaultReplyBatch.
	ReplyBatch int
	// RequestTimeout applies to a Request whose ctx has no deadline. Zero
	// means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// WaitForResponders makes Request write requests to topics that no
	// worker serves now and wait for their deadline, for workers that will
	// come later. By default such a request fails at once with
	// bus.ErrNoResponders and nothing is written.
	WaitForResponders bool
	// ResponderIdle is how recently a worker must have announced itself for
	// its topic to count as served (workers announce themselves every 5 s in
	// the topic's presence set, bus.Keys.Workers; keep this well above that,
	// and above the clock skew between hosts). Zero means
	// DefaultResponderIdle.
	ResponderIdle time.Duration
	// Breaker configures the circuit breaker each topic gets: when it is
	// open, Request and Publish fail at once with bus.ErrBreakerOpen instead
	// of waiting on a Redis or a worker pool that is not answering.
	// Timeouts and Redis errors count as failures; a caller's cancellation
	// does not. The zero value means the breaker package's defaults.
	Breaker breaker.Config
	// NoBreaker turns the circuit breakers off.
	NoBreaker bool

	// TracerProvider, when set, records OpenTelemetry spans following the
	// messaging conventions (docs/tracing.md): "send {topic}" (PRODUCER)
	// for each write, and "request {topic}" (CLIENT) around a request and
	// its reply, for every request verb (Request, each request of a
	// RequestBatch, Stream). Nil records none and costs nothing. Either
	// way, a caller's ctx that carries a span has its trace context
	// injected into the message headers (traceparent, tracestate, baggage)
	// with Propagator (nil: W3C trace context and baggage).
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
	// RemoteErrorsTrip makes handler errors (*bus.RemoteError) count as breaker
	// failures. By default they do not: the bus delivered the answer.
	RemoteErrorsTrip bool
	// TimingSample makes one request in TimingSample log its stage timings
	// at info level (see the README's "Timings and metrics"). Every request logs
	// them at debug level. Zero means DefaultTimingSample; negative turns
	// sampling off.
	TimingSample int
	// SlowRequest makes every request slower than this log its timings at
	// warn level, whatever the sampling. Zero means DefaultSlowRequest;
	// negative turns it off.
	SlowRequest time.Duration
	// Cache turns the response cache and request coalescing on for the
	// topics it names (docs/cache.md): a Request to one of them is answered
	// from this process's memory, from Redis, or by joining an identical
	// request in flight in any process, before a worker is asked. Calls can
	// steer it (NoCache, NoStore, MaxAge, CacheKey, WithCacheInfo). Nil
	// means no topic is cached. The map is copied by New.
	Cache map[string]CacheConfig
	// WaitReplicas, when positive, makes every write of Publish,
	// PublishBatch, Request and RequestBatch wait until that many replicas
	// acknowledged it (WAIT after the write, same connection), for up to
	// WaitTimeout: a write they did not all acknowledge fails with
	// bus.ErrNotReplicated (*bus.NotReplicatedError; the entry was written
	// and may still be handled, or lost in a failover). It narrows, never
	// closes, the window in which a failover loses acknowledged writes;
	// docs/cluster.md measures what it costs. Cached requests (their Lua
	// script) do not wait. Zero means no wait.
	WaitReplicas int
	// WaitTimeout bounds the wait for replicas. Zero means
	// DefaultWaitTimeout.
	WaitTimeout time.Duration
	// LocalCacheBytes bounds the memory of the local tier (answers kept in
	// this process, for every cached topic together). Zero means
	// DefaultLocalCacheBytes; negative means no local tier.
	LocalCacheBytes int64
	// IdempotencyWindow is how long an idempotent publish (IdempotencyKey)
	// is remembered: a second publish with the same key within it writes
	// nothing and gets the first one's id. Zero means
	// DefaultIdempotencyWindow; IdempotencyWindows sets it per topic.
	IdempotencyWindow  time.Duration
	IdempotencyWindows map[string]time.Duration
	// Backpressure is what a write does when its topic's backlog (entries
	// the topic's workers have not finished) is full, before StreamMaxLen's
	// trimming would drop entries nobody has read. The zero value blocks
	// (waits for room) at 3/4 of StreamMaxLen; docs/flow-control.md.
	Backpressure Backpressure
}

// Backpressure holds publishers back when a topic's workers fall behind.
// A producer measures each stream it writes to off its hot path (XLEN and
// XINFO GROUPS, from every few milliseconds near the limit to every second
// far from it) and counts its own writes between measurements; a write
// that would take the backlog past MaxBacklog follows Policy. It applies to
// every write to a topic stream: Publish, PublishBatch, Request,
// RequestBatch, Stream, cached requests, idempotent publishes (delayed
// events are bounded by their set: bus.ErrDelayedFull).
type Backpressure struct {
	// Policy is Block (the default), Reject or DropOldest.
	Policy BackpressurePolicy
	// MaxBacklog is the most unfinished entries a topic stream (each
	// partition's) may hold. Zero means 3/4 of StreamMaxLen (the rest is
	// headroom for other producers' writes between measurements), or no
	// limit when streams are trimmed by age (StreamMaxAge) or not at all;
	// negative means no limit. It must stay below StreamMaxLen.
	MaxBacklog int64
	// MaxWait bounds how long Block waits for room, for calls whose ctx
	// has no deadline (a ctx deadline or a request's RequestTimeout bounds
	// the others): then the call fails with bus.ErrBacklogFull. Zero means
	// DefaultBackpressureMaxWait; negative means the ctx alone.
	MaxWait time.Duration
}

// BackpressurePolicy is what a write does when its topic's backlog is full.
type BackpressurePolicy int

// The policies.
const (
	// Block waits until the backlog has room, bounded by the call's ctx
	// (and Backpressure.MaxWait), then fails with bus.ErrBacklogFull.
	Block BackpressurePolicy = iota
	// Reject fails at once with bus.ErrBacklogFull (a *bus.BacklogError).
	Reject
	// DropOldest writes anyway: the stream's MAXLEN ~ trims its oldest
	// entries, read or not (the behaviour before backpressure). Entries
	// trimmed unread are estimated, counted (Stats.BacklogDropped) and
	// logged.
	DropOldest
)

// DefaultBackpressureMaxWait is Backpressure.MaxWait's default.
const DefaultBackpressureMaxWait = time.Minute

// String returns the policy's name as bus-worker and bus-bench spell it.
func (p BackpressurePolicy) String() string {
	switch p {
	case Block:
		return "block"
	case Reject:
		return "reject"
	case DropOldest:
		return "drop-oldest"
	}
	return fmt.Sprintf("BackpressurePolicy(%d)", int(p))
}

// ParseBackpressurePolicy parses "block", "reject" or "drop-oldest".
func ParseBackpressurePolicy(s string) (BackpressurePolicy, error) {
	for _, p := range []BackpressurePolicy{Block, Reject, DropOldest} {
		if s == p.String() {
			return p, nil
		}
	}
	return 0, fmt.Errorf("%w: backpressure policy %q: want block, reject or drop-oldest", bus.ErrInvalidConfig, s)
}

// backlogLimit returns the backlog a write may not pass (0: none).
func (c *Config) backlogLimit() int64 {
	switch {
	case c.Backpressure.MaxBacklog < 0:
		return 0
	case c.Backpressure.MaxBacklog > 0:
		return c.Backpressure.MaxBacklog
	case c.StreamMaxAge > 0 || c.StreamMaxLen <= 0:
		return 0
	}
	return max(c.StreamMaxLen*3/4, 1)
}

// DefaultIdempotencyWindow is the window of idempotent publishes (as
// JetStream's default duplicate window); MaxIdempotencyWindow bounds it.
const (
	DefaultIdempotencyWindow = 2 * time.Minute
	MaxIdempotencyWindow     = 7 * 24 * time.Hour
)

// window returns topic's idempotency window.
func (c *Config) window(topic string) time.Duration {
	if w, ok := c.IdempotencyWindows[topic]; ok && w > 0 {
		return w
	}
	return c.IdempotencyWindow
}

// Validate reports the first problem with c, wrapping bus.ErrInvalidConfig.
func (c Config) Validate() error {
	if c.ID != "" {
		if err := bus.ValidateName("producer", c.ID); err != nil {
			return err
		}
	}
	if c.Owner != "" {
		if err := redisx.ValidOwner(c.Owner); err != nil {
			return fmt.Errorf("%w: Owner: %w", bus.ErrInvalidConfig, err)
		}
	}
	if c.WaitReplicas < 0 || c.WaitTimeout < 0 {
		return fmt.Errorf("%w: WaitReplicas and WaitTimeout must not be negative", bus.ErrInvalidConfig)
	}
	if c.MaxInFlight > MaxInFlightCap || c.MaxPayload > MaxPayloadCap || c.ReplyBatch > MaxReplyBatch {
		return fmt.Errorf("%w: MaxInFlight, MaxPayload and ReplyBatch: at most %d, %d and %d, got %d, %d and %d",
			bus.ErrInvalidConfig, MaxInFlightCap, MaxPayloadCap, MaxReplyBatch, c.MaxInFlight, c.MaxPayload, c.ReplyBatch)
	}
	if c.Compression > codec.CompressZstd || c.CompressMin < 0 {
		return fmt.Errorf("%w: Compression %v, CompressMin %d: want none, s2 or zstd, and a minimum size not negative", bus.ErrInvalidConfig, c.Compression, c.CompressMin)
	}
	if c.MaxInFlight < 0 || c.MaxPayload < 0 || c.ReplyBatch < 0 {
		return fmt.Errorf("%w: MaxInFlight, MaxPayload and ReplyBatch must not be negative", bus.ErrInvalidConfig)
	}
	if c.ReplyTTL < 0 || c.ReplyBlock < 0 || c.RequestTimeout < 0 || c.StreamMaxAge < 0 || c.ResponderIdle < 0 {
		return fmt.Errorf("%w: ReplyTTL, ReplyBlock, RequestTimeout, StreamMaxAge and ResponderIdle must not be negative", bus.ErrInvalidConfig)
	}
	if !c.NoBreaker {
		if err := c.Breaker.Validate(); err != nil {
			return fmt.Errorf("%w: %w", bus.ErrInvalidConfig, err)
		}
	}
	for topic, cc := range c.Cache {
		if err := cc.validate(topic); err != nil {
			return err
		}
	}
	for topic, w := range c.IdempotencyWindows {
		if err := bus.ValidateName("topic", topic); err != nil {
			return fmt.Errorf("IdempotencyWindows: %w", err)
		}
		if w < time.Millisecond || w > MaxIdempotencyWindow {
			return fmt.Errorf("%w: IdempotencyWindows[%q]: want 1ms to %v, got %v", bus.ErrInvalidConfig, topic, MaxIdempotencyWindow, w)
		}
	}
	if c.IdempotencyWindow < 0 || c.IdempotencyWindow > MaxIdempotencyWindow || (c.IdempotencyWindow > 0 && c.IdempotencyWindow < time.Millisecond) {
		return fmt.Errorf("%w: IdempotencyWindow: want 1ms to %v, got %v", bus.ErrInvalidConfig, MaxIdempotencyWindow, c.IdempotencyWindow)
	}
	if c.Backpressure.Policy < Block || c.Backpressure.Policy > DropOldest {
		return fmt.Errorf("%w: Backpressure.Policy: want Block, Reject or DropOldest, got %v", bus.ErrInvalidConfig, c.Backpressure.Policy)
	}
	if mb, ml := c.Backpressure.MaxBacklog, cmp.Or(c.StreamMaxLen, DefaultStreamMaxLen); mb > 0 && ml > 0 && c.StreamMaxAge == 0 && mb >= ml {
		return fmt.Errorf("%w: Backpressure.MaxBacklog (%d) must be below StreamMaxLen (%d): MAXLEN ~ trims what passes it", bus.ErrInvalidConfig, mb, ml)
	}
	if c.ReplyTTL > 0 && c.ReplyTTL < 3*time.Second {
		return fmt.Errorf("%w: ReplyTTL must be at least 3s, got %v", bus.ErrInvalidConfig, c.ReplyTTL)
	}
	return nil
}

func (c Config) withDefaults() Config {
	c.MaxInFlight = cmp.Or(c.MaxInFlight, DefaultMaxInFlight)
	c.MaxPayload = cmp.Or(c.MaxPayload, DefaultMaxPayload)
	c.ReplyBatch = cmp.Or(c.ReplyBatch, DefaultReplyBatch)
	c.StreamMaxLen = cmp.Or(c.StreamMaxLen, DefaultStreamMaxLen)
	c.ReplyTTL = cmp.Or(c.ReplyTTL, DefaultReplyTTL)
	c.ReplyBlock = cmp.Or(c.ReplyBlock, DefaultReplyBlock)
	if c.ReplyBlock > c.ReplyTTL/3 {
		c.ReplyBlock = c.ReplyTTL / 3
	}
	c.RequestTimeout = cmp.Or(c.RequestTimeout, DefaultRequestTimeout)
	c.ResponderIdle = cmp.Or(c.ResponderIdle, DefaultResponderIdle)
	c.TimingSample = cmp.Or(c.TimingSample, DefaultTimingSample)
	c.SlowRequest = cmp.Or(c.SlowRequest, DefaultSlowRequest)
	c.LocalCacheBytes = cmp.Or(c.LocalCacheBytes, DefaultLocalCacheBytes)
	c.WaitTimeout = cmp.Or(c.WaitTimeout, DefaultWaitTimeout)
	c.IdempotencyWindow = cmp.Or(c.IdempotencyWindow, DefaultIdempotencyWindow)
	c.Backpressure.MaxWait = cmp.Or(c.Backpressure.MaxWait, DefaultBackpressureMaxWait)
	if c.Cache != nil {
		m := make(map[string]CacheConfig, len(c.Cache))
		for topic, cc := range c.Cache {
			m[topic] = cc.withDefaults()
		}
		c.Cache = m
	}
	return c
}
