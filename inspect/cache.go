package inspect

import (
	"context"
	"fmt"

	"github.com/egos/mycelium/bus"
)

// CacheStats is a topic's shared response cache at one moment
// (docs/cache.md).
type CacheStats struct {
	Topic string
	// Generation is the topic's cache generation: entries of older
	// generations are never served again and expire by their TTL.
	Generation uint64
	// Epoch counts invalidations (per topic and per entry); producers drop
	// their local copies when it changes.
	Epoch uint64
	// Entries and Bytes count the stored answers of every generation still
	// in Redis (values only, not Redis's own overhead).
	Entries int
	Bytes   int64
	// InFlight counts requests marked in flight (identical requests join
	// them).
	InFlight int
	// Truncated says the counts stopped at the scan limit.
	Truncated bool
}

// cacheScanLimit bounds the keys one CacheStats call scans per kind.
const cacheScanLimit = 100_000

// CacheStats reads a topic's cache generation and counts its stored
// answers and flights. It scans the keyspace (SCAN MATCH, O(keys in the
// database)), at most cacheScanLimit keys of each kind: an operator's
// command, not something to poll often.
func (i *Inspector) CacheStats(ctx context.Context, topic string) (CacheStats, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return CacheStats{}, fmt.Errorf("inspect: %w", err)
	}
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return CacheStats{}, err
	}
	s := CacheStats{Topic: topic}
	if s.Generation, s.Epoch, err = i.port.CacheMeta(ctx, i.keys.Meta(topic)); err != nil {
		return s, fmt.Errorf("inspect: cache stats of %s: %w", topic, err)
	}
	for _, pn := range ps.names() { // each partition's entries live under its own hash tag
		n, b, trunc1, err := i.port.KeyStats(ctx, i.keys.CachePattern(pn, false), cacheScanLimit)
		if err != nil {
			return s, fmt.Errorf("inspect: cache stats of %s: %w", pn, err)
		}
		f, _, trunc2, err := i.port.KeyStats(ctx, i.keys.CachePattern(pn, true), cacheScanLimit)
		if err != nil {
			return s, fmt.Errorf("inspect: cache stats of %s: %w", pn, err)
		}
		s.Entries, s.Bytes, s.InFlight = s.Entries+n, s.Bytes+b, s.InFlight+f
		s.Truncated = s.Truncated || trunc1 || trunc2
	}
	return s, nil
}

// FlushCache invalidates every cached answer of a topic at once, in O(1):
// it bumps the topic's cache generation (old entries are never served again
// and expire by their TTL). Producers' local copies go within about a
// second. It returns the new generation.
func (i *Inspector) FlushCache(ctx context.Context, topic string) (uint64, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return 0, fmt.Errorf("inspect: %w", err)
	}
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return 0, err
	}
	var first uint64
	for k, pn := range ps.names() { // each partition has its own generation
		g, err := i.port.BumpGeneration(ctx, i.keys.Meta(pn))
		if err != nil {
			return 0, fmt.Errorf("inspect: flush cache of %s: %w", pn, err)
		}
		if k == 0 {
			first = g
		}
	}
	return first, nil
}

// FlushCacheEntry invalidates one cached answer: the one of requests whose
// cache hash is h (bus.HashKey of the caller's cache key, or bus.HashPayload
// of the payload). Producers' local copies go within about a second. It
// reports whether an answer was stored.
func (i *Inspector) FlushCacheEntry(ctx context.Context, topic string, h bus.CacheHash) (bool, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return false, fmt.Errorf("inspect: %w", err)
	}
	if _, _, ok := bus.ParseCacheEntryID(bus.CacheEntryID(0, h)); !ok {
		return false, fmt.Errorf("inspect: %w: cache hash %q is not 32 lower-case hex digits", bus.ErrInvalidConfig, h)
	}
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return false, err
	}
	found := false
	// The entry lives in the partition its hash chose under the count of
	// the time it was stored: drop it from each.
	for _, pn := range ps.names() {
		meta := i.keys.Meta(pn)
		gen, _, err := i.port.CacheMeta(ctx, meta)
		if err != nil {
			return false, fmt.Errorf("inspect: flush cache entry of %s: %w", pn, err)
		}
		ok, err := i.port.DropEntry(ctx, meta, i.keys.Cache(pn, bus.CacheEntryID(gen, h)))
		if err != nil {
			return false, fmt.Errorf("inspect: flush cache entry of %s: %w", pn, err)
		}
		found = found || ok
	}
	return found, nil
}
