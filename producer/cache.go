package producer

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// Response cache defaults (see Config.Cache and docs/cache.md).
const (
	DefaultCacheTTL        = 5 * time.Minute
	DefaultLocalTTL        = time.Minute
	DefaultLocalCacheBytes = 64 << 20
)

const (
	// maxFlightWaiters bounds the callers of other processes that join one
	// flight in Redis; more are sent to the workers uncoalesced.
	maxFlightWaiters = redisx.MaxFlightWaiters
	// takeoverGrace is how long after a flight leader's deadline its joined
	// callers wait for the answer before one of them asks again itself.
	takeoverGrace = 100 * time.Millisecond
	// metaRefresh is how often a topic's cache epoch is checked while its
	// answers are served from this process's memory: a flush reaches every
	// producer's local tier within about this long.
	metaRefresh = time.Second
)

// CacheConfig turns the response cache on for one topic (Config.Cache).
type CacheConfig struct {
	// TTL is how long an answer is stored in Redis (the shared tier), unless
	// the worker or its handler allows less. Zero means DefaultCacheTTL.
	TTL time.Duration
	// LocalTTL is how long this process keeps an answer in its own memory
	// (the local tier), never longer than the shared entry lives. Zero means
	// min(TTL, DefaultLocalTTL); negative means no local tier for the topic.
	LocalTTL time.Duration
}

func (c CacheConfig) withDefaults() CacheConfig {
	if c.TTL == 0 {
		c.TTL = DefaultCacheTTL
	}
	if c.LocalTTL == 0 {
		c.LocalTTL = min(c.TTL, DefaultLocalTTL)
	}
	c.LocalTTL = min(c.LocalTTL, c.TTL)
	return c
}

func (c CacheConfig) validate(topic string) error {
	if err := bus.ValidateName("topic", topic); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if c.TTL < 0 || (c.TTL > 0 && c.TTL < time.Millisecond) {
		return fmt.Errorf("%w: cache TTL of %s must be at least 1ms, got %v", bus.ErrInvalidConfig, topic, c.TTL)
	}
	return nil
}

// CacheSource says where a Request's answer came from (see WithCacheInfo).
type CacheSource uint8

// Cache sources.
const (
	// SourceNone: the request did not use the cache (its topic has none,
	// or the call said NoCache and NoStore).
	SourceNone CacheSource = iota
	// SourceHandler: a handler computed the answer for this call.
	SourceHandler
	// SourceLocal: this process's memory (the local tier).
	SourceLocal
	// SourceShared: Redis (the shared tier), stored by an earlier call.
	SourceShared
	// SourceCoalescedLocal: an identical call of this process was in
	// flight; both got its answer.
	SourceCoalescedLocal
	// SourceCoalescedRemote: an identical call of another producer was in
	// flight; one handler call answered both.
	SourceCoalescedRemote
)

// String returns the source's name, as in timing logs and bus-worker.
func (s CacheSource) String() string {
	switch s {
	case SourceNone:
		return "none"
	case SourceHandler:
		return "handler"
	case SourceLocal:
		return "local"
	case SourceShared:
		return "shared"
	case SourceCoalescedLocal:
		return "coalesced_local"
	case SourceCoalescedRemote:
		return "coalesced_remote"
	}
	return fmt.Sprintf("source(%d)", uint8(s))
}

// CacheInfo is filled by a Request given WithCacheInfo.
type CacheInfo struct {
	// Source says where the answer came from.
	Source CacheSource
	// Age is how long ago the answer was computed (0 for a fresh one).
	Age time.Duration
	// Entry is the cache entry's id within the topic, "<generation>:<hash>"
	// (bus.CacheEntryID); empty when the request did not use the cache.
	Entry string
}

// NoCache makes a Request on a cached topic ask a worker even if an answer
// is stored (bypass: the new answer is stored, unless NoStore).
func NoCache() CacheOption { return func(co *callOptions) { co.noCache = true } }

// NoStore makes a Request on a cached topic leave its answer unstored (a
// stored answer is still served, unless NoCache).
func NoStore() CacheOption { return func(co *callOptions) { co.noStore = true } }

// MaxAge makes a Request on a cached topic accept a stored answer only if it
// was computed at most d ago; an older one is replaced by a fresh answer.
func MaxAge(d time.Duration) CacheOption { return func(co *callOptions) { co.maxAge = d } }

// CacheKey makes a Request on a cached topic identify "the same request" by
// key instead of by its payload: a canonical prompt, the model id and its
// parameters, a tenant. The match is exact (bus.HashKey).
func CacheKey(key string) CacheOption {
	return func(co *callOptions) { co.key, co.hasKey = key, true }
}

// WithCacheInfo makes a Request fill info with where its answer came from.
func WithCacheInfo(info *CacheInfo) CacheOption { return func(co *callOptions) { co.info = info } }

// localKey names an answer in the local tier. The epoch is the topic's
// invalidation epoch when the answer was kept: an invalidation bumps it, and
// older copies are never looked up again (they age out or are evicted).
type localKey struct {
	topic string
	epoch uint64
	hash  bus.CacheDigest
}

// localEntry is one answer kept in the local tier.
type localEntry struct {
	payload []byte
	made    time.Time // when the answer was computed (this host's clock)
	ttl     time.Duration
	entry   string
}

// localWeight is what one entry costs the byte budget: its payload, its key
// and the bookkeeping around them.
func localWeight(k localKey, v *localEntry) uint32 {
	n := len(v.payload) + len(k.topic) + len(v.entry) + 176
	if n > 1<<31 {
		return 1 << 31
	}
	return uint32(n)
}

func newLocalTier(bytes int64, evicted *atomic.Uint64) (*otter.Cache[localKey, *localEntry], error) {
	return otter.New(&otter.Options[localKey, *localEntry]{
		MaximumWeight: uint64(bytes),
		Weigher:       localWeight,
		ExpiryCalculator: otter.ExpiryCreatingFunc(func(e otter.Entry[localKey, *localEntry]) time.Duration {
			return e.Value.ttl
		}),
		OnDeletion: func(e otter.DeletionEvent[localKey, *localEntry]) {
			if e.Cause == otter.CauseOverflow {
				evicted.Add(1)
			}
		},
	})
}
