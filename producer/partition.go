package producer

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/internal/topology"
)

// A topic's partition count lives in Redis (its metadata hash, see
// inspect.SetPartitions). The producer follows it through the one watcher
// of partition counts (internal/topology): read on a topic's first use,
// re-read in the background once a second old.

// parts is what a topic keeps about its partitions.
type parts struct {
	count *topology.Topic // its partition count, as the watcher follows it
	rr    atomic.Uint64   // round robin over partitions
	mu    sync.Mutex      // serialises subs growth
	subs  atomic.Pointer[[]*topic]
}

// PartitionKey makes Publish, PublishBatch, Request, RequestBatch and
// Stream write to the partition of key (a stable hash of it modulo the
// topic's partition count): entries with one key land in one partition, in
// the order they were written, as long as the count does not change.
// Without it, a partitioned topic's entries go round robin over its
// partitions (and a cached request to the partition of its cache key). It
// has no effect on a topic of one partition.
func PartitionKey(key string) CallOption {
	return func(co *callOptions) { co.partKey, co.hasPartKey = key, true }
}

// PartitionOf returns the partition a key maps to among n: FNV-1a (32 bit)
// of the key, modulo n. It is part of the wire contract (docs/wire.md):
// clients in other languages compute the same.
func PartitionOf(key string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// partitioner picks the partition each write goes to: the partition of its
// PartitionKey, of its cache key (a cached request: its flight marker and
// answer live under that partition's hash tag), or round robin past
// partitions whose breaker is open (their node failing, say: the others
// take the load meanwhile). Each partition after the first is a topic
// value of its own, made once (sub).
type partitioner struct {
	watch *topology.Watcher
	keys  bus.Keys
	adm   *admission
	stats *counters
}

// newPartitioner returns the producer's partitioner, reading counts with
// port and refreshing them on bg.
func newPartitioner(port port, keys bus.Keys, adm *admission, stats *counters, bg *background) *partitioner {
	pr := &partitioner{keys: keys, adm: adm, stats: stats}
	pr.watch = topology.New(func(ctx context.Context, topic string) (redisx.PartitionMeta, error) {
		return port.Partitions(ctx, keys.Meta(topic))
	}, bg.run, topology.Config{
		Timeout: respondersTimeout,
		RefreshFailed: func(topic string, err error) {
			adm.log.Debug().Err(err).Str("topic", topic).Msg("partition count refresh failed; using the last one read")
		},
	})
	return pr
}

// count returns t's partition count (see topology.Topic.Count). Nothing
// blocks a call but a topic's first.
func (pr *partitioner) count(ctx context.Context, t *topic, now int64) (int, error) {
	n, err := t.parts.count.Count(ctx, now)
	if err != nil {
		if ctx.Err() != nil {
			return 0, pr.stats.ctxErr(ctx.Err(), "reading the partition count of "+t.name)
		}
		return 0, fmt.Errorf("producer: partition count of %s: %w", t.name, redisx.Classify(err, "reading the partition count"))
	}
	return n, nil
}

// pick returns the partition of t a call writes to: t itself for
// partition 0, else the partition's own topic value. cacheHash is a cached
// request's cache key (nil otherwise); now is the call's start (unix ns).
//
// On a topic with priority levels, a call with Priority writes to its
// level's stream of that partition (levelOf).
func (pr *partitioner) pick(ctx context.Context, t *topic, co *callOptions, cacheHash *bus.CacheDigest, now int64) (*topic, error) {
	n, err := pr.count(ctx, t, now)
	if err != nil {
		return t, err
	}
	if n <= 1 {
		return pr.levelOf(t, t, co), nil
	}
	var i int
	switch {
	case co.hasPartKey:
		i = PartitionOf(co.partKey, n)
	case cacheHash != nil:
		// One cache entry, one partition: its flight marker and answer
		// live under the partition's hash tag.
		i = int(uint32(cacheHash[0])<<24|uint32(cacheHash[1])<<16|uint32(cacheHash[2])<<8|uint32(cacheHash[3])) % n
	case co.tenant != "" && pr.shards(t) > 0:
		i = pr.shard(t, co.tenant, n, pr.shards(t), co)
	default:
		// Round robin, past partitions whose breaker is open.
		i = int(t.parts.rr.Add(1) % uint64(n))
		if t.br != nil {
			for k := range n {
				j := (i + k) % n
				if st := pr.sub(t, j); st.br == nil || st.br.State() != breaker.Open {
					i = j
					break
				}
			}
		}
	}
	return pr.levelOf(t, pr.sub(t, i), co), nil
}

// levelOf returns the stream of partition pt a call writes to: its level's
// when the call has a Priority and t has priority levels (a level beyond
// them: the least urgent), else pt itself.
func (pr *partitioner) levelOf(t, pt *topic, co *callOptions) *topic {
	if !co.hasPriority || co.priority <= 0 {
		return pt
	}
	m, ok := t.parts.count.Meta()
	if !ok || m.Levels <= 1 {
		return pt
	}
	l := min(co.priority, m.Levels-1)
	if s := pt.levels.Load(); s != nil && l < len(*s) && (*s)[l] != nil {
		return (*s)[l]
	}
	t.parts.mu.Lock()
	defer t.parts.mu.Unlock()
	var cur []*topic
	if s := pt.levels.Load(); s != nil {
		cur = *s
	}
	if l < len(cur) && cur[l] != nil {
		return cur[l]
	}
	grown := make([]*topic, max(len(cur), l+1))
	copy(grown, cur)
	// Its partition's name, hash tag, breaker, cache state and responders;
	// its own stream, delayed set and backlog.
	lt := &topic{name: pt.name, key: pr.keys.Level(pt.name, l), presence: pt.presence, br: pt.br, resp: pt.resp,
		cache: pt.cache, parent: t, ctl: pt.ctl, idx: pt.idx, level: l, delayed: pr.keys.LevelDelayed(pt.name, l)}
	grown[l] = lt
	pt.levels.Store(&grown)
	return lt
}

// shards returns how many partitions each tenant of t writes to (0:
// fairness off), as the partition watcher last read it.
func (pr *partitioner) shards(t *topic) int {
	m, ok := t.parts.count.Meta()
	if !ok {
		return 0
	}
	return m.Shards
}

// ShardSet returns the partitions of a tenant among n when each tenant has
// m of them (shuffle sharding): m distinct partitions, the k-th (k = 0, 1,
// ...) drawn as shardOf(tenant + "#" + k, n), skipping those taken. It is
// part of the wire contract (docs/wire.md): clients in other languages
// compute the same.
func ShardSet(tenant string, n, m int) []int {
	m = min(max(m, 1), n)
	out := make([]int, 0, m)
	var rank [20]byte
	for k := 0; len(out) < m; k++ {
		j := shardOf(tenant, strconv.AppendInt(append(rank[:0], '#'), int64(k), 10), n)
		if k >= 8*n { // pathological hashes: fill in order
			for j = 0; slices.Contains(out, j); j++ {
			}
		}
		if !slices.Contains(out, j) {
			out = append(out, j)
		}
	}
	return out
}

// shardOf maps a key (tenant, then suffix) to one of n partitions: FNV-1a
// (32 bit) of the key, mixed by MurmurHash3's 32-bit finalizer (FNV-1a's
// low bits depend only on the low bits before the last bytes: without the
// mix, modulo a power of two, a tenant's second shard would follow from
// its first), modulo n. It allocates nothing: it runs on a tenant's every
// write.
func shardOf(tenant string, suffix []byte, n int) int {
	x := uint32(2166136261)
	for i := range len(tenant) {
		x = (x ^ uint32(tenant[i])) * 16777619
	}
	for _, c := range suffix {
		x = (x ^ uint32(c)) * 16777619
	}
	x ^= x >> 16
	x *= 0x85ebca6b
	x ^= x >> 13
	x *= 0xc2b2ae35
	x ^= x >> 16
	return int(x % uint32(n))
}

// shard returns the partition a tenant's call writes to: the least loaded
// of its shard set by the backlog this producer measures (its
// backpressure monitors: the estimate is read, never waited for), ties
// broken in turn.
func (pr *partitioner) shard(t *topic, tenant string, n, m int, co *callOptions) int {
	set := ShardSet(tenant, n, m)
	if len(set) == 1 {
		return set[0]
	}
	start := rand.IntN(len(set)) // ties (unmeasured shards) spread, from every producer
	best, bestLoad := set[start], int64(-1)
	for k := range set {
		j := set[(start+k)%len(set)]
		load := pr.levelOf(t, pr.sub(t, j), co).bl.estimate()
		if bestLoad < 0 || load < bestLoad {
			best, bestLoad = j, load
		}
	}
	return best
}

// sub returns partition i of t (i > 0) as a topic of its own: its stream,
// its breaker (partitions fail apart: their nodes do), and for a cached
// topic its cache metadata; responders and presence are t's.
func (pr *partitioner) sub(t *topic, i int) *topic {
	if i == 0 {
		return t
	}
	if s := t.parts.subs.Load(); s != nil && i < len(*s) && (*s)[i] != nil {
		return (*s)[i]
	}
	t.parts.mu.Lock()
	defer t.parts.mu.Unlock()
	var cur []*topic
	if s := t.parts.subs.Load(); s != nil {
		cur = *s
	}
	if i < len(cur) && cur[i] != nil {
		return cur[i]
	}
	grown := make([]*topic, max(len(cur), i+1))
	copy(grown, cur)
	name := bus.Partition(t.name, i)
	br, err := pr.adm.newBreaker(name)
	if err != nil {
		br = t.br // the configuration was valid for t: not reached
	}
	st := &topic{name: name, key: pr.keys.Topic(name), presence: t.presence, br: br, resp: t.resp, parent: t, idx: i, ctl: t.ctl, delayed: pr.keys.Delayed(name)}
	if t.cache != nil {
		st.cache = &topicCache{cfg: t.cache.cfg, meta: pr.keys.Meta(name)}
	}
	grown[i] = st
	t.parts.subs.Store(&grown)
	return st
}
