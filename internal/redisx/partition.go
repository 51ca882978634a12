package redisx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
	// Levels is the topic's number of priority levels (1: none; at most
	// MaxLevels); Weights their weights, level 0 first (len Levels), and
	// Strict whether levels are served strictly in order (bus.Priorities).
	Levels  int
	Weights []int
	Strict  bool
	// Shards is how many of the topic's partitions each tenant's entries
	// go to (0: tenant fairness off; docs/scheduling.md).
	Shards int
}

// MaxLevels bounds a topic's priority levels (bus.MaxPriorities): levels
// are 0..9, one digit in their keys (bus.Keys.Level).
const MaxLevels = 10

// MaxWeight bounds a priority level's weight.
const MaxWeight = 1000

// DefaultWeights returns the weights of levels priority levels when none
// were set: each level twice the next one's (4:2:1 for three).
func DefaultWeights(levels int) []int {
	w := make([]int, levels)
	for i := range w {
		w[i] = 1 << (levels - 1 - i)
	}
	return w
}

// Draining reports whether removed partitions are still read.
func (m PartitionMeta) Draining() bool { return m.Drain > m.N }

// Partitions reads a topic's partition metadata. Missing fields mean one
// partition; a field that is not a count in range is an error (the hash
// is written by operators' tools, but anyone with write access to the key
// could have changed it).
func Partitions(ctx context.Context, c rueidis.Client, meta string) (PartitionMeta, error) {
	vals, err := c.Do(ctx, c.B().Hmget().Key(meta).Field(metaFields[:]...).Build()).ToArray()
	if isWrongType(err) {
		return PartitionMeta{}, fmt.Errorf("%w: %s is not a hash (someone replaced it): delete it, then bus-worker topic set-partitions and set-scheduling", ErrCorruptMeta, meta)
	}
	if err != nil {
		return PartitionMeta{}, err
	}
	if len(vals) != len(metaFields) {
		return PartitionMeta{}, fmt.Errorf("redis: HMGET %s: %d values for %d fields", meta, len(vals), len(metaFields))
	}
	var fields [len(metaFields)]*string
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

// metaFields are the fields of a topic's metadata that Partitions reads.
var metaFields = [...]string{"partitions", "drain", "lowered", "priorities", "priority_weights", "priority_strict", "fair_shards"}

// parsePartitions reads the metaFields (nil: missing) of a topic's
// metadata.
func parsePartitions(meta string, vals [len(metaFields)]*string) (PartitionMeta, error) {
	m := PartitionMeta{N: 1, Levels: 1}
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
	lv, ok, err := field(3, "priorities", 1, MaxLevels)
	if err != nil {
		return m, err
	}
	if ok {
		m.Levels = int(lv)
	}
	m.Weights = DefaultWeights(m.Levels)
	if vals[4] != nil && m.Levels > 1 {
		w, err := ParseWeights(*vals[4], m.Levels)
		if err != nil {
			return m, fmt.Errorf("%w: %s field priority_weights: %w", ErrCorruptMeta, meta, err)
		}
		m.Weights = w
	}
	st, _, err := field(5, "priority_strict", 0, 1)
	if err != nil {
		return m, err
	}
	m.Strict = st == 1
	sh, ok, err := field(6, "fair_shards", 0, MaxPartitions)
	if err != nil {
		return m, err
	}
	if ok {
		m.Shards = int(sh)
	}
	return m, nil
}

// ParseWeights parses levels comma-separated weights, each 1 to MaxWeight.
func ParseWeights(s string, levels int) ([]int, error) {
	parts := strings.Split(s, ",")
	if len(parts) != levels {
		return nil, fmt.Errorf("%q: want %d weights (one per level), got %d", clipValue(s), levels, len(parts))
	}
	w := make([]int, levels)
	for i, p := range parts {
		v, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || v < 1 || v > MaxWeight {
			return nil, fmt.Errorf("%q: weight %d is %q: want an integer in [1, %d]", clipValue(s), i, clipValue(p), MaxWeight)
		}
		w[i] = v
	}
	return w, nil
}

// FormatWeights is ParseWeights's inverse.
func FormatWeights(w []int) string {
	s := make([]string, len(w))
	for i, v := range w {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

// Scheduling is what SetScheduling sets: priority levels (1: none), their
// weights (nil: DefaultWeights) and strict mode, and the tenant shards
// (0: fairness off).
type Scheduling struct {
	Levels  int
	Weights []int
	Strict  bool
	Shards  int
}

// setSchedulingScript sets a topic's priority levels (ARGV[1]), weights
// (ARGV[2]), strict mode (ARGV[3]) and tenant shards (ARGV[4], 0: off),
// refusing arguments the bus never writes (any role that may call it may
// write the hash, but nothing malformed is written through it) and a
// lower level count than the topic's (entries of the removed levels would
// be stranded; a count that is not one, written by hand, may be replaced):
// returns the level count before (0: malformed), and 0 when it refused.
var setSchedulingScript = newScript("set_scheduling", `local function int(s, lo, hi)
  if type(s) ~= 'string' or not string.match(s, '^%d+$') then return nil end
  local v = tonumber(s)
  if v < lo or v > hi then return nil end
  return v
end
local n = int(ARGV[1], 1, 10)
if not n then return redis.error_reply('ERR set_scheduling: levels must be 1 to 10') end
local count = 0
for w in string.gmatch(ARGV[2], '[^,]+') do
  if not int(w, 1, 1000) then return redis.error_reply('ERR set_scheduling: weights must be 1 to 1000') end
  count = count + 1
end
if count ~= n or string.find(ARGV[2], ',,', 1, true) or string.sub(ARGV[2], 1, 1) == ',' or string.sub(ARGV[2], -1) == ',' then
  return redis.error_reply('ERR set_scheduling: one weight per level')
end
if ARGV[3] ~= '0' and ARGV[3] ~= '1' then return redis.error_reply('ERR set_scheduling: strict must be 0 or 1') end
if not int(ARGV[4], 0, 1024) then return redis.error_reply('ERR set_scheduling: shards must be 0 to 1024') end
local cur = int(redis.call('HGET', KEYS[1], 'priorities') or '1', 1, 10) or 0
if n < cur then return {cur, 0} end
redis.call('HSET', KEYS[1], 'priorities', ARGV[1], 'priority_weights', ARGV[2], 'priority_strict', ARGV[3], 'fair_shards', ARGV[4])
return {cur, 1}`)

// ErrLevelsLowered is returned by SetScheduling for a level count below
// the topic's.
var ErrLevelsLowered = errors.New("priority levels cannot be lowered")

// SetScheduling sets a topic's scheduling (priorities and tenant
// fairness) and returns the metadata after the change.
func SetScheduling(ctx context.Context, c rueidis.Client, meta string, s Scheduling) (PartitionMeta, error) {
	if s.Levels < 1 || s.Levels > MaxLevels {
		return PartitionMeta{}, fmt.Errorf("redisx: priority levels %d out of [1, %d]", s.Levels, MaxLevels)
	}
	w := s.Weights
	if w == nil {
		w = DefaultWeights(s.Levels)
	}
	if _, err := ParseWeights(FormatWeights(w), s.Levels); err != nil {
		return PartitionMeta{}, fmt.Errorf("redisx: priority weights %w", err)
	}
	if s.Shards < 0 || s.Shards > MaxPartitions {
		return PartitionMeta{}, fmt.Errorf("redisx: tenant shards %d out of [0, %d]", s.Shards, MaxPartitions)
	}
	strict := "0"
	if s.Strict {
		strict = "1"
	}
	res, err := setSchedulingScript.Exec(ctx, c, []string{meta}, []string{strconv.Itoa(s.Levels), FormatWeights(w), strict, strconv.Itoa(s.Shards)}).AsIntSlice()
	if err != nil {
		return PartitionMeta{}, err
	}
	if len(res) != 2 {
		return PartitionMeta{}, errors.New("redis: set_scheduling: unexpected reply")
	}
	if res[1] == 0 {
		return PartitionMeta{}, fmt.Errorf("%w: %s has %d levels, not fewer", ErrLevelsLowered, meta, res[0])
	}
	return Partitions(ctx, c, meta)
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

// ForgetPartitionCount removes the partition and scheduling fields of a topic's metadata
// (the topic then has one partition); its cache generation stays, so
// answers stored before are never served again.
func ForgetPartitionCount(ctx context.Context, c rueidis.Client, meta string) error {
	return c.Do(ctx, c.B().Hdel().Key(meta).Field(metaFields[:]...).Build()).Error()
}
