package redisx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// MaxPartitions bounds a topic's partition count (bus.MaxPartitions).
const MaxPartitions = 1024

// PartitionMeta is what a topic's metadata hash (bus.Keys.Meta of the
// topic, in partition 0's hash slot) says about its partitions.
type PartitionMeta struct {
	// N is the number of partitions producers write to: 1 for a topic
	// never partitioned.
	N int
	// Drain is the number of partitions workers read: at least N; the
	// partitions in [N, Drain) were removed and are being drained.
	Drain int
	// Lowered is when (by Redis's clock) N was last lowered; zero if never.
	Lowered time.Time
	// Set reports whether the topic was ever given a partition count.
	Set bool
}

// Draining reports whether removed partitions are still read.
func (m PartitionMeta) Draining() bool { return m.Drain > m.N }

// Partitions reads a topic's partition metadata. Missing fields mean one
// partition; a field that is not a count in range is an error (the hash
// is written by operators' tools, but anyone with write access to the key
// could have changed it).
func Partitions(ctx context.Context, c rueidis.Client, meta string) (PartitionMeta, error) {
	vals, err := c.Do(ctx, c.B().Hmget().Key(meta).Field("partitions", "drain", "lowered").Build()).ToArray()
	if isWrongType(err) {
		return PartitionMeta{}, fmt.Errorf("%w: %s is not a hash (someone replaced it): fix it with bus-worker topic set-partitions, or delete it", ErrCorruptMeta, meta)
	}
	if err != nil {
		return PartitionMeta{}, err
	}
	if len(vals) != 3 {
		return PartitionMeta{}, fmt.Errorf("redis: HMGET %s: %d values for 3 fields", meta, len(vals))
	}
	var fields [3]*string
	for i := range vals {
		if vals[i].IsNil() {
			continue
		}
		s, err := vals[i].ToString()
		if err != nil {
			return PartitionMeta{}, fmt.Errorf("%w: %s: %w", ErrCorruptMeta, meta, err)
		}
		fields[i] = &s
	}
	return parsePartitions(meta, fields)
}

// parsePartitions reads the partitions, drain and lowered fields (nil:
// missing) of a topic's metadata.
func parsePartitions(meta string, vals [3]*string) (PartitionMeta, error) {
	m := PartitionMeta{N: 1}
	field := func(i int, name string, lo, hi int64) (int64, bool, error) {
		if vals[i] == nil {
			return 0, false, nil
		}
		s := *vals[i]
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < lo || v > hi {
			return 0, false, fmt.Errorf("%w: %s field %s is %q: want an integer in [%d, %d]", ErrCorruptMeta, meta, name, clipValue(s), lo, hi)
		}
		return v, true, nil
	}
	n, ok, err := field(0, "partitions", 1, MaxPartitions)
	if err != nil {
		return m, err
	}
	if ok {
		m.N, m.Set = int(n), true
	}
	m.Drain = m.N
	d, ok, err := field(1, "drain", 1, MaxPartitions)
	if err != nil {
		return m, err
	}
	if ok && int(d) > m.N {
		m.Drain = int(d)
	}
	l, ok, err := field(2, "lowered", 0, 1<<53)
	if err != nil {
		return m, err
	}
	if ok && l > 0 {
		m.Lowered = time.UnixMilli(l)
	}
	return m, nil
}

// ErrCorruptMeta is returned when a topic's metadata hash holds a value the
// bus never writes.
var ErrCorruptMeta = errors.New("mycelium: malformed topic metadata")

func clipValue(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// setPartitionsScript sets the partition count (ARGV[1]) and widens the
// drain range to cover every partition that held entries: a lowered count
// keeps the removed partitions read until they are drained (and records
// Redis's time of the lowering).
var setPartitionsScript = newScript("set_partitions", `local cur = tonumber(redis.call('HGET', KEYS[1], 'partitions') or '1') or 1
local drain = tonumber(redis.call('HGET', KEYS[1], 'drain') or '0') or 0
local n = tonumber(ARGV[1])
drain = math.max(drain, cur, n)
if n < cur then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'lowered', tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
end
redis.call('HSET', KEYS[1], 'partitions', tostring(n), 'drain', tostring(drain))
return {n, drain}`)

// SetPartitions sets a topic's partition count to n (1..MaxPartitions) and
// returns the metadata after the change.
func SetPartitions(ctx context.Context, c rueidis.Client, meta string, n int) (PartitionMeta, error) {
	if n < 1 || n > MaxPartitions {
		return PartitionMeta{}, fmt.Errorf("redisx: partition count %d out of [1, %d]", n, MaxPartitions)
	}
	if err := setPartitionsScript.Exec(ctx, c, []string{meta}, []string{strconv.Itoa(n)}).Error(); err != nil {
		return PartitionMeta{}, err
	}
	return Partitions(ctx, c, meta)
}

// forgetScript lowers the drain bound from ARGV[2] to ARGV[3] if the
// metadata still says ARGV[1] partitions and drain ARGV[2], and the count
// was lowered at least ARGV[4] ms ago by Redis's clock.
var forgetScript = newScript("forget", `local p = tonumber(redis.call('HGET', KEYS[1], 'partitions') or '1') or 1
local d = tonumber(redis.call('HGET', KEYS[1], 'drain') or '0') or 0
if p ~= tonumber(ARGV[1]) or d ~= tonumber(ARGV[2]) then return 0 end
local lowered = tonumber(redis.call('HGET', KEYS[1], 'lowered') or '0') or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - lowered < tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'drain', ARGV[3])
return 1`)

// ForgetPartitions lowers the drain bound of a topic whose metadata still
// reads m, to drain (m.N <= drain < m.Drain), once the count was lowered at
// least grace ago. It reports whether it did.
func ForgetPartitions(ctx context.Context, c rueidis.Client, meta string, m PartitionMeta, drain int, grace time.Duration) (bool, error) {
	if drain < m.N || drain >= m.Drain {
		return false, fmt.Errorf("redisx: drain bound %d out of [%d, %d)", drain, m.N, m.Drain)
	}
	n, err := forgetScript.Exec(ctx, c, []string{meta}, []string{strconv.Itoa(m.N), strconv.Itoa(m.Drain),
		strconv.Itoa(drain), strconv.FormatInt(grace.Milliseconds(), 10)}).AsInt64()
	return n == 1, err
}

// Drained reports whether the stream key holds nothing left to do for the
// given groups (the groups of the topic's partition 0): it is missing or
// empty, or each of those groups exists on it with nothing pending and
// every entry delivered. It also requires the dead-letter stream dlq (same
// hash slot) to be empty: dead letters are replayed into their partition, so
// a partition is forgotten only once they are replayed or purged.
func Drained(ctx context.Context, c rueidis.Client, key, dlq string, sets, groups []string) (bool, error) {
	si, err := Info(ctx, c, key, dlq, sets...)
	if err != nil {
		return false, err
	}
	if si.DeadLetters > 0 || si.Delayed > 0 {
		return false, nil
	}
	if si.Length == 0 {
		return true, nil
	}
	have := make(map[string]GroupInfo, len(si.Groups))
	for _, g := range si.Groups {
		have[g.Name] = g
	}
	for _, name := range groups {
		g, ok := have[name]
		if !ok || g.Pending > 0 || CompareIDs(g.LastDeliveredID, si.LastID) < 0 {
			return false, nil
		}
	}
	return true, nil
}

// CompareIDs orders two stream ids ("ms-seq"); a malformed id sorts first.
func CompareIDs(a, b string) int {
	am, as, aok := splitID(a)
	bm, bs, bok := splitID(b)
	switch {
	case !aok && !bok:
		return 0
	case !aok:
		return -1
	case !bok:
		return 1
	case am != bm:
		if am < bm {
			return -1
		}
		return 1
	case as != bs:
		if as < bs {
			return -1
		}
		return 1
	}
	return 0
}

func splitID(id string) (ms, seq uint64, ok bool) {
	for i := 0; i < len(id); i++ {
		if id[i] == '-' {
			m, err1 := strconv.ParseUint(id[:i], 10, 64)
			s, err2 := strconv.ParseUint(id[i+1:], 10, 64)
			return m, s, err1 == nil && err2 == nil
		}
	}
	m, err := strconv.ParseUint(id, 10, 64)
	return m, 0, err == nil
}

// ForgetPartitionCount removes the partition fields of a topic's metadata
// (the topic then has one partition); its cache generation stays, so
// answers stored before are never served again.
func ForgetPartitionCount(ctx context.Context, c rueidis.Client, meta string) error {
	return c.Do(ctx, c.B().Hdel().Key(meta).Field("partitions", "drain", "lowered").Build()).Error()
}
