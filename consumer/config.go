package consumer

import (
	"cmp"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
)

// Upper bounds of Config fields: Validate refuses more (each handler slot
// is a goroutine with its buffers; 1e8 slots once took 24 GB in seconds).
const (
	MaxConcurrency  = 10_000
	MaxEntrySizeCap = 512 << 20 // Redis's own bulk-string limit (proto-max-bulk-len)
	MaxReclaimBatch = 10_000
)

// Defaults for Config fields left at their zero value.
const (
	DefaultGroup               = "workers"
	DefaultConcurrency         = 64
	DefaultBlock               = 2 * time.Second
	DefaultReplyMaxLen         = 10_000
	DefaultDeadLetterMaxLen    = 100_000
	DefaultMaxEntrySize        = 8 << 20
	DefaultStreamMaxLen        = 100_000
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultClaimIdle           = 30 * time.Second
	DefaultMaxDeliveries       = 5
	DefaultRetryBackoff        = 500 * time.Millisecond
	DefaultRetryBackoffMax     = 5 * time.Minute
	DefaultReclaimBatch        = 100
	DefaultConsumerIdleTimeout = time.Hour
	DefaultTimingSample        = 1000
	DefaultSlowEntry           = 10 * time.Second
	DefaultCacheMaxValue       = 1 << 20
	DefaultCacheMaxTTL         = 24 * time.Hour
	maxReadBatch               = 512
)

// Config tunes a Consumer. Topic is required; every other zero value means
// the documented default. The fields past the first few are grouped by
// concern: Reclaim, Retry, Retention, Cache, Tracing, Timing.
type Config struct {
	// Topic to consume. Required.
	Topic string
	// Group is the consumer group. Empty means DefaultGroup.
	Group string
	// Name is this consumer's name in the group; it must be unique among
	// live consumers. Empty means host-pid-random.
	Name string
	// Concurrency is the number of handler workers, and so the most entries
	// held at once. Zero means DefaultConcurrency.
	Concurrency int
	// Prefetch is how many entries a worker may read ahead of its free
	// handlers (0: none, the default). Entries read ahead wait in the order
	// read for a handler, pending in the group and kept from reclaim by the
	// heartbeat; a request cancelled or past its deadline meanwhile is
	// skipped at pick-up. It saves the read's round trip per entry for a
	// worker of few handlers (one handler and Prefetch 16 hands its handler
	// entries in stream order, one after the other, without waiting for a
	// read between them: the Watermill adapter's subscriptions). Entries
	// read ahead are not started once Run's ctx ended: they are handed back
	// (due at once for any worker, their delivery not counted). On a topic
	// with fleet-wide limits a worker reads no more than its free handlers
	// (read-ahead would hold leases and spent permits); on a topic with
	// priority levels an urgent entry arriving meanwhile waits behind those
	// read ahead.
	Prefetch int
	// Block is how long one XREADGROUP waits for entries. Zero means
	// DefaultBlock, or Reclaim.ClaimIdle/4 if that is shorter: a read holds
	// free handler slots while it waits, and a reclaimed entry may wait that
	// long for one, which must stay well below ClaimIdle.
	Block time.Duration
	// MaxEntrySize is the largest encoded entry handled; larger ones are
	// dead-lettered unread. Zero means DefaultMaxEntrySize.
	MaxEntrySize int
	// ShutdownTimeout bounds how long Run waits for in-flight handlers after
	// its ctx is done before cancelling their contexts. Zero means
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// StartID is where a newly created group starts: "0" (default: every
	// entry still in the stream, so nothing published before the first
	// worker started is lost) or "$" (only new entries).
	StartID string

	Reclaim   ReclaimConfig   // taking over the entries of consumers that stopped
	Retry     RetryConfig     // deliveries, retries and dead letters
	Retention RetentionConfig // how long the streams this consumer reads and writes keep entries
	Cache     CacheConfig     // the shared tier of the response cache (docs/cache.md)
	Tracing   TracingConfig   // OpenTelemetry spans (docs/tracing.md)
	Timing    TimingConfig    // stage timing logs
}

// ReclaimConfig says when entries a consumer holds without progress go to
// another consumer, and when consumers that left are forgotten.
type ReclaimConfig struct {
	// ClaimIdle is how long an entry may stay pending without progress
	// before another consumer takes it over (XAUTOCLAIM): a consumer that
	// died leaves its entries pending, and live ones reclaim them after
	// ClaimIdle. Entries whose handler is still running are kept from being
	// reclaimed by a heartbeat every ClaimIdle/3. Zero means
	// DefaultClaimIdle.
	ClaimIdle time.Duration
	// Interval is how often the consumer looks for entries to reclaim
	// (and trims by Retention). Zero means ClaimIdle/2 (at most 5s).
	Interval time.Duration
	// Batch is the most entries reclaimed at once (never more than free
	// handler slots). Zero means DefaultReclaimBatch.
	Batch int
	// ConsumerIdleTimeout removes other consumers of the group that have
	// been idle this long with nothing pending (dead workers leave their
	// names behind). Consumers still holding entries are never removed.
	// Zero means DefaultConsumerIdleTimeout; negative disables removal.
	ConsumerIdleTimeout time.Duration
}

// RetryConfig says how often a message is tried and how long retries wait.
type RetryConfig struct {
	// MaxDeliveries is how many times an entry is delivered before it goes
	// to the dead-letter stream instead. Zero means DefaultMaxDeliveries.
	MaxDeliveries int
	// Backoff is the least delay of a retry asked with RetryAfter on the
	// first delivery, doubled for each later one up to BackoffMax (a
	// longer delay the handler asks for wins). Zero means
	// DefaultRetryBackoff and DefaultRetryBackoffMax.
	Backoff, BackoffMax time.Duration
	// PauseOnRetryAfter makes every RetryAfter also pause the topic for
	// every worker of the fleet for its delay (as PauseTopic does per
	// error): one provider's 429 with Retry-After slows the whole fleet,
	// not only the one message (docs/flow-control.md).
	PauseOnRetryAfter bool
}

// RetentionConfig caps the streams this consumer writes (replies, dead
// letters, promoted delayed events) and, optionally, trims its topic.
type RetentionConfig struct {
	// ReplyMaxLen caps reply streams on write (MAXLEN ~). Keep it above
	// the producers' MaxInFlight. Zero means DefaultReplyMaxLen.
	ReplyMaxLen int64
	// DeadLetterMaxLen caps the topic's dead-letter stream. Zero means
	// DefaultDeadLetterMaxLen.
	DeadLetterMaxLen int64
	// StreamMaxLen caps a topic stream when this worker writes to it: the
	// delayed events it moves to the stream when due are written like a
	// producer's (XADD MAXLEN ~). Zero means DefaultStreamMaxLen (the
	// producers' default); negative means no trimming.
	StreamMaxLen int64
	// MaxLen, when positive, makes the consumer trim its topic to this
	// many entries (exact XTRIM every Reclaim.Interval), whatever the
	// producers' own caps. Entries beyond it are dropped even if no worker
	// handled them: size it well above your backlog.
	MaxLen int64
	// MaxAge, when positive, trims entries older than this instead (XTRIM
	// MINID), with the same caveat.
	MaxAge time.Duration
}

// CacheConfig bounds what this worker stores in the response cache's
// shared tier.
type CacheConfig struct {
	// TTL caps how long this worker's answers to cached requests are
	// stored in the shared tier (docs/cache.md). Zero means as long as the
	// caller asked (at most DefaultCacheMaxTTL); negative means they are
	// never stored (identical requests in flight still share one answer).
	TTL time.Duration
	// MaxValue is the largest answer (encoded reply, bytes) stored in the
	// shared tier; larger answers are sent but not stored. Zero means
	// DefaultCacheMaxValue.
	MaxValue int
}

// TracingConfig turns on OpenTelemetry spans around handler calls.
type TracingConfig struct {
	// Provider, when set, records a "process {topic}" CONSUMER span around
	// each handler call (docs/tracing.md), linked to the trace context the
	// message carries; with Parent also its child (one trace from caller to
	// handler). Nil records none. Either way the handler's ctx carries the
	// message's span context (the process span, or the sender's), so a
	// handler calling an HTTP service through otelhttp continues the trace.
	Provider trace.TracerProvider
	// Propagator reads the headers (nil: W3C trace context and baggage).
	Propagator propagation.TextMapPropagator
	// Parent makes the process span a child of the sender's span, not only
	// linked to it.
	Parent bool
}

// TimingConfig says which handled entries log their stage timings (queue
// or retry wait, handler, reply write).
type TimingConfig struct {
	// Sample makes one handled entry in Sample log its timings at info
	// level; every entry logs them at debug level. Zero means
	// DefaultTimingSample; negative turns sampling off.
	Sample int
	// SlowEntry makes every entry whose wait, handler and reply write
	// together exceed this log its timings at warn level. Zero means
	// DefaultSlowEntry; negative turns it off.
	SlowEntry time.Duration
}

// Validate reports the first problem with c, wrapping bus.ErrInvalidConfig.
func (c Config) Validate() error {
	if err := bus.ValidateName("topic", c.Topic); err != nil {
		return err
	}
	if c.Group != "" {
		if err := bus.ValidateName("group", c.Group); err != nil {
			return err
		}
	}
	if c.Name != "" {
		if err := bus.ValidateName("consumer", c.Name); err != nil {
			return err
		}
	}
	if c.Concurrency < 0 || c.MaxEntrySize < 0 || c.Retention.ReplyMaxLen < 0 || c.Retention.DeadLetterMaxLen < 0 {
		return fmt.Errorf("%w: Concurrency, MaxEntrySize, Retention.ReplyMaxLen and Retention.DeadLetterMaxLen must not be negative", bus.ErrInvalidConfig)
	}
	if c.Prefetch < 0 || c.Prefetch > MaxConcurrency {
		return fmt.Errorf("%w: Prefetch %d: 0 to %d", bus.ErrInvalidConfig, c.Prefetch, MaxConcurrency)
	}
	if c.Concurrency > MaxConcurrency {
		return fmt.Errorf("%w: Concurrency %d: at most %d (each slot is a goroutine; run more workers instead)", bus.ErrInvalidConfig, c.Concurrency, MaxConcurrency)
	}
	if c.MaxEntrySize > MaxEntrySizeCap {
		return fmt.Errorf("%w: MaxEntrySize %d: at most %d (Redis's own bulk-string limit)", bus.ErrInvalidConfig, c.MaxEntrySize, MaxEntrySizeCap)
	}
	if c.Reclaim.Batch > MaxReclaimBatch {
		return fmt.Errorf("%w: Reclaim.Batch %d: at most %d", bus.ErrInvalidConfig, c.Reclaim.Batch, MaxReclaimBatch)
	}
	if c.Block < 0 || c.ShutdownTimeout < 0 {
		return fmt.Errorf("%w: Block and ShutdownTimeout must not be negative", bus.ErrInvalidConfig)
	}
	if c.Block > 0 && c.Block < time.Millisecond {
		return fmt.Errorf("%w: Block must be at least 1ms, got %v", bus.ErrInvalidConfig, c.Block)
	}
	if c.Retention.MaxLen < 0 || c.Retention.MaxAge < 0 {
		return fmt.Errorf("%w: Retention.MaxLen and Retention.MaxAge must not be negative", bus.ErrInvalidConfig)
	}
	if c.Retention.MaxLen > 0 && c.Retention.MaxAge > 0 {
		return fmt.Errorf("%w: set Retention.MaxLen or Retention.MaxAge, not both", bus.ErrInvalidConfig)
	}
	if c.Reclaim.ClaimIdle < 0 || c.Reclaim.Interval < 0 || c.Reclaim.Batch < 0 || c.Retry.MaxDeliveries < 0 {
		return fmt.Errorf("%w: Reclaim.ClaimIdle, Reclaim.Interval, Reclaim.Batch and Retry.MaxDeliveries must not be negative", bus.ErrInvalidConfig)
	}
	if c.Retry.Backoff < 0 || c.Retry.BackoffMax < 0 {
		return fmt.Errorf("%w: Retry.Backoff and Retry.BackoffMax must not be negative", bus.ErrInvalidConfig)
	}
	if c.Reclaim.ClaimIdle > 0 && c.Reclaim.ClaimIdle < 30*time.Millisecond {
		return fmt.Errorf("%w: Reclaim.ClaimIdle must be at least 30ms, got %v", bus.ErrInvalidConfig, c.Reclaim.ClaimIdle)
	}
	if claim, block := c.withDefaults("x").Reclaim.ClaimIdle, c.withDefaults("x").Block; claim < 2*block {
		return fmt.Errorf("%w: Reclaim.ClaimIdle (%v) must be at least twice Block (%v), or entries waiting for a handler slot get reclaimed", bus.ErrInvalidConfig, claim, block)
	}
	if c.Cache.MaxValue < 0 {
		return fmt.Errorf("%w: Cache.MaxValue must not be negative", bus.ErrInvalidConfig)
	}
	if c.StartID != "" && c.StartID != "0" && c.StartID != "$" {
		return fmt.Errorf("%w: StartID must be \"0\" or \"$\", got %q", bus.ErrInvalidConfig, c.StartID)
	}
	return nil
}

func (c Config) withDefaults(rnd string) Config {
	c.Group = cmp.Or(c.Group, DefaultGroup)
	if c.Name == "" {
		host, err := os.Hostname()
		if err != nil || bus.ValidateName("consumer", host) != nil {
			host = "host"
		}
		c.Name = host + "-" + strconv.Itoa(os.Getpid()) + "-" + rnd
	}
	c.Concurrency = cmp.Or(c.Concurrency, DefaultConcurrency)
	c.Reclaim.ClaimIdle = cmp.Or(c.Reclaim.ClaimIdle, DefaultClaimIdle)
	c.Block = cmp.Or(c.Block, min(DefaultBlock, c.Reclaim.ClaimIdle/4))
	c.Retention.ReplyMaxLen = cmp.Or(c.Retention.ReplyMaxLen, DefaultReplyMaxLen)
	c.Retention.DeadLetterMaxLen = cmp.Or(c.Retention.DeadLetterMaxLen, DefaultDeadLetterMaxLen)
	c.MaxEntrySize = cmp.Or(c.MaxEntrySize, DefaultMaxEntrySize)
	c.Retention.StreamMaxLen = cmp.Or(c.Retention.StreamMaxLen, DefaultStreamMaxLen)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, DefaultShutdownTimeout)
	c.StartID = cmp.Or(c.StartID, "0")
	c.Reclaim.Interval = cmp.Or(c.Reclaim.Interval, min(c.Reclaim.ClaimIdle/2, 5*time.Second))
	c.Reclaim.Batch = cmp.Or(c.Reclaim.Batch, DefaultReclaimBatch)
	c.Reclaim.ConsumerIdleTimeout = cmp.Or(c.Reclaim.ConsumerIdleTimeout, DefaultConsumerIdleTimeout)
	c.Retry.MaxDeliveries = cmp.Or(c.Retry.MaxDeliveries, DefaultMaxDeliveries)
	c.Retry.Backoff = cmp.Or(c.Retry.Backoff, DefaultRetryBackoff)
	c.Retry.BackoffMax = max(cmp.Or(c.Retry.BackoffMax, DefaultRetryBackoffMax), c.Retry.Backoff)
	c.Timing.Sample = cmp.Or(c.Timing.Sample, DefaultTimingSample)
	c.Timing.SlowEntry = cmp.Or(c.Timing.SlowEntry, DefaultSlowEntry)
	c.Cache.MaxValue = cmp.Or(c.Cache.MaxValue, DefaultCacheMaxValue)
	return c
}

// held is the most entries a Run holds at once: one per handler, and
// those read ahead (Prefetch).
func (c *Config) held() int { return c.Concurrency + c.Prefetch }
