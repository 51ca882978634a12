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
// the documented default.
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
	// Block is how long one XREADGROUP waits for entries. Zero means
	// DefaultBlock, or ClaimIdle/4 if that is shorter: a read holds free
	// handler slots while it waits, and a reclaimed entry may wait that
	// long for one, which must stay well below ClaimIdle.
	Block time.Duration
	// ReplyMaxLen caps reply streams on write (MAXLEN ~). Keep it above
	// the producers' MaxInFlight. Zero means DefaultReplyMaxLen.
	ReplyMaxLen int64
	// DeadLetterMaxLen caps the topic's dead-letter stream. Zero means
	// DefaultDeadLetterMaxLen.
	DeadLetterMaxLen int64
	// MaxEntrySize is the largest encoded entry handled; larger ones are
	// dead-lettered unread. Zero means DefaultMaxEntrySize.
	MaxEntrySize int
	// StreamMaxLen caps a topic stream when this worker writes to it: the
	// delayed events it moves to the stream when due are written like a
	// producer's (XADD MAXLEN ~). Zero means DefaultStreamMaxLen (the
	// producers' default); negative means no trimming.
	StreamMaxLen int64
	// ShutdownTimeout bounds how long Run waits for in-flight handlers after
	// its ctx is done before cancelling their contexts. Zero means
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// ClaimIdle is how long an entry may stay pending without progress
	// before another consumer takes it over (XAUTOCLAIM): a consumer that
	// died leaves its entries pending, and live ones reclaim them after
	// ClaimIdle. Entries whose handler is still running are kept from being
	// reclaimed by a heartbeat every ClaimIdle/3. Zero means
	// DefaultClaimIdle.
	ClaimIdle time.Duration
	// ReclaimInterval is how often the consumer looks for entries to
	// reclaim. Zero means ClaimIdle/2 (at most 5s).
	ReclaimInterval time.Duration
	// ReclaimBatch is the most entries reclaimed at once (never more than
	// free handler slots). Zero means DefaultReclaimBatch.
	ReclaimBatch int
	// MaxDeliveries is how many times an entry is delivered before it goes
	// to the dead-letter stream instead. Zero means DefaultMaxDeliveries.
	MaxDeliveries int
	// TracerProvider, when set, records a "process {topic}" CONSUMER span
	// around each handler call (docs/tracing.md), linked to the trace
	// context the message carries; with TraceParent also its child (one
	// trace from caller to handler). Nil records none. Either way the
	// handler's ctx carries the message's span context (the process span,
	// or the sender's), so a handler calling an HTTP service through
	// otelhttp continues the trace. Propagator reads the headers (nil: W3C
	// trace context and baggage).
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
	TraceParent    bool

	// RetryBackoff is the least delay of a retry asked with RetryAfter on
	// the first delivery, doubled for each later one up to RetryBackoffMax
	// (a longer delay the handler asks for wins). Zero means
	// DefaultRetryBackoff and DefaultRetryBackoffMax.
	RetryBackoff, RetryBackoffMax time.Duration
	// ConsumerIdleTimeout removes other consumers of the group that have
	// been idle this long with nothing pending (dead workers leave their
	// names behind). Consumers still holding entries are never removed.
	// Zero means DefaultConsumerIdleTimeout; negative disables removal.
	ConsumerIdleTimeout time.Duration
	// RetentionMaxLen, when positive, makes the consumer trim its topic to
	// this many entries (exact XTRIM every ReclaimInterval), whatever the
	// producers' own caps. Entries beyond it are dropped even if no worker
	// handled them: size it well above your backlog.
	RetentionMaxLen int64
	// RetentionMaxAge, when positive, trims entries older than this
	// instead (XTRIM MINID), with the same caveat.
	RetentionMaxAge time.Duration
	// StartID is where a newly created group starts: "0" (default: every
	// entry still in the stream, so nothing published before the first
	// worker started is lost) or "$" (only new entries).
	StartID string
	// TimingSample makes one handled entry in TimingSample log its stage
	// timings (queue wait, handler, reply write) at info level; every entry
	// logs them at debug level. Zero means DefaultTimingSample; negative
	// turns sampling off.
	TimingSample int
	// SlowEntry makes every entry whose queue wait, handler and reply write
	// together exceed this log its timings at warn level. Zero means
	// DefaultSlowEntry; negative turns it off.
	SlowEntry time.Duration
	// CacheTTL caps how long this worker's answers to cached requests are
	// stored in the shared tier (docs/cache.md). Zero means as long as the
	// caller asked (at most DefaultCacheMaxTTL); negative means they are
	// never stored (identical requests in flight still share one answer).
	CacheTTL time.Duration
	// CacheMaxValue is the largest answer (encoded reply, bytes) stored in
	// the shared tier; larger answers are sent but not stored. Zero means
	// DefaultCacheMaxValue.
	CacheMaxValue int
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
	if c.Concurrency < 0 || c.MaxEntrySize < 0 || c.ReplyMaxLen < 0 || c.DeadLetterMaxLen < 0 {
		return fmt.Errorf("%w: Concurrency, MaxEntrySize, ReplyMaxLen and DeadLetterMaxLen must not be negative", bus.ErrInvalidConfig)
	}
	if c.Concurrency > MaxConcurrency {
		return fmt.Errorf("%w: Concurrency %d: at most %d (each slot is a goroutine; run more workers instead)", bus.ErrInvalidConfig, c.Concurrency, MaxConcurrency)
	}
	if c.MaxEntrySize > MaxEntrySizeCap {
		return fmt.Errorf("%w: MaxEntrySize %d: at most %d (Redis's own bulk-string limit)", bus.ErrInvalidConfig, c.MaxEntrySize, MaxEntrySizeCap)
	}
	if c.ReclaimBatch > MaxReclaimBatch {
		return fmt.Errorf("%w: ReclaimBatch %d: at most %d", bus.ErrInvalidConfig, c.ReclaimBatch, MaxReclaimBatch)
	}
	if c.Block < 0 || c.ShutdownTimeout < 0 {
		return fmt.Errorf("%w: Block and ShutdownTimeout must not be negative", bus.ErrInvalidConfig)
	}
	if c.Block > 0 && c.Block < time.Millisecond {
		return fmt.Errorf("%w: Block must be at least 1ms, got %v", bus.ErrInvalidConfig, c.Block)
	}
	if c.RetentionMaxLen < 0 || c.RetentionMaxAge < 0 {
		return fmt.Errorf("%w: RetentionMaxLen and RetentionMaxAge must not be negative", bus.ErrInvalidConfig)
	}
	if c.RetentionMaxLen > 0 && c.RetentionMaxAge > 0 {
		return fmt.Errorf("%w: set RetentionMaxLen or RetentionMaxAge, not both", bus.ErrInvalidConfig)
	}
	if c.ClaimIdle < 0 || c.ReclaimInterval < 0 || c.ReclaimBatch < 0 || c.MaxDeliveries < 0 {
		return fmt.Errorf("%w: ClaimIdle, ReclaimInterval, ReclaimBatch and MaxDeliveries must not be negative", bus.ErrInvalidConfig)
	}
	if c.RetryBackoff < 0 || c.RetryBackoffMax < 0 {
		return fmt.Errorf("%w: RetryBackoff and RetryBackoffMax must not be negative", bus.ErrInvalidConfig)
	}
	if c.ClaimIdle > 0 && c.ClaimIdle < 30*time.Millisecond {
		return fmt.Errorf("%w: ClaimIdle must be at least 30ms, got %v", bus.ErrInvalidConfig, c.ClaimIdle)
	}
	if claim, block := c.withDefaults("x").ClaimIdle, c.withDefaults("x").Block; claim < 2*block {
		return fmt.Errorf("%w: ClaimIdle (%v) must be at least twice Block (%v), or entries waiting for a handler slot get reclaimed", bus.ErrInvalidConfig, claim, block)
	}
	if c.CacheMaxValue < 0 {
		return fmt.Errorf("%w: CacheMaxValue must not be negative", bus.ErrInvalidConfig)
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
	c.ClaimIdle = cmp.Or(c.ClaimIdle, DefaultClaimIdle)
	c.Block = cmp.Or(c.Block, min(DefaultBlock, c.ClaimIdle/4))
	c.ReplyMaxLen = cmp.Or(c.ReplyMaxLen, DefaultReplyMaxLen)
	c.DeadLetterMaxLen = cmp.Or(c.DeadLetterMaxLen, DefaultDeadLetterMaxLen)
	c.MaxEntrySize = cmp.Or(c.MaxEntrySize, DefaultMaxEntrySize)
	c.StreamMaxLen = cmp.Or(c.StreamMaxLen, DefaultStreamMaxLen)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, DefaultShutdownTimeout)
	c.StartID = cmp.Or(c.StartID, "0")
	c.ReclaimInterval = cmp.Or(c.ReclaimInterval, min(c.ClaimIdle/2, 5*time.Second))
	c.ReclaimBatch = cmp.Or(c.ReclaimBatch, DefaultReclaimBatch)
	c.ConsumerIdleTimeout = cmp.Or(c.ConsumerIdleTimeout, DefaultConsumerIdleTimeout)
	c.MaxDeliveries = cmp.Or(c.MaxDeliveries, DefaultMaxDeliveries)
	c.RetryBackoff = cmp.Or(c.RetryBackoff, DefaultRetryBackoff)
	c.RetryBackoffMax = max(cmp.Or(c.RetryBackoffMax, DefaultRetryBackoffMax), c.RetryBackoff)
	c.TimingSample = cmp.Or(c.TimingSample, DefaultTimingSample)
	c.SlowEntry = cmp.Or(c.SlowEntry, DefaultSlowEntry)
	c.CacheMaxValue = cmp.Or(c.CacheMaxValue, DefaultCacheMaxValue)
	return c
}
