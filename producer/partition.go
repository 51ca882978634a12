package producer

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// A topic's partition count lives in Redis (its metadata hash, see
// inspect.SetPartitions). A producer reads it on a topic's first use and
// re-reads it in the background once partRefresh old: while Redis answers,
// a worker forgets a removed partition only well after producers stopped
// writing to it (consumer's forgetGrace, 15 s), so no entry lands in a
// partition nobody reads.
const partRefresh = time.Second

// partView is a topic's partition count as last read.
type partView struct {
	n    int
	read int64 // unix nanoseconds when it was read
}

// parts is what a topic keeps about its partitions.
type parts struct {
	view       atomic.Pointer[partView]
	refreshing atomic.Bool
	rr         atomic.Uint64 // round robin over partitions
	mu         sync.Mutex    // serialises synchronous reads and subs growth
	subs       atomic.Pointer[[]*topic]
}

// PartitionKey makes Publish, PublishBatch, Request and RequestBatch write
// to the partition of key (a stable hash of it modulo the topic's partition
// count): entries with one key land in one partition, in the order they
// were written, as long as the count does not change. Without it, a
// partitioned topic's entries go round robin over its partitions (and a
// cached request to the partition of its cache key). It has no effect on a
// topic of one partition.
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

// partitions returns t's partition count: read from Redis on first use,
// then re-read in the background whenever the last reading is partRefresh
// old (one read at a time per topic). While Redis answers, a count is thus
// never older than about partRefresh plus a round trip; when the metadata's
// node does not answer (failing over, say), the old count is used: a
// worker forgets a removed partition only through that same metadata, so
// it cannot do so meanwhile either. Nothing blocks a call but the first.
func (p *Producer) partitions(ctx context.Context, t *topic, now int64) (int, error) {
	if v := t.parts.view.Load(); v != nil {
		if now-v.read >= int64(partRefresh) {
			p.refreshPartitions(t)
		}
		return v.n, nil
	}
	t.parts.mu.Lock()
	defer t.parts.mu.Unlock()
	if v := t.parts.view.Load(); v != nil {
		return v.n, nil // another caller read it meanwhile
	}
	// The caller's deadline must not reach rueidis: on an idle connection a
	// command with a deadline runs synchronously and, when the deadline
	// passes, closes the connection, and every caller then waits for a
	// reconnection (seen with Redis paused: 2 s calls with 300 ms
	// deadlines). A ctx that is only cancelled abandons the wait instead.
	rctx, cancel := redisx.Detach(ctx)
	defer cancel()
	v, err := p.readPartitions(rctx, t)
	if err != nil {
		if ctx.Err() != nil {
			return 0, p.stats.ctxErr(ctx.Err(), "reading the partition count of "+t.name)
		}
		return 0, err
	}
	return v.n, nil
}

// refreshPartitions re-reads t's partition count on a background goroutine
// (one at a time per topic).
func (p *Producer) refreshPartitions(t *topic) {
	if !t.parts.refreshing.CompareAndSwap(false, true) {
		return
	}
	if !p.bg.run(func(ctx context.Context) {
		defer t.parts.refreshing.Store(false)
		ctx, cancel := context.WithTimeout(ctx, respondersTimeout)
		defer cancel()
		// Not under t.parts.mu: sub() takes it on a call's path, and a
		// slow Redis must not hold that call (the view is atomic; the
		// refreshing flag keeps refreshes one at a time).
		if _, err := p.readPartitions(ctx, t); err != nil {
			p.log.Debug().Err(err).Str("topic", t.name).Msg("partition count refresh failed; using the last one read")
		}
	}) {
		t.parts.refreshing.Store(false)
	}
}

// readPartitions reads t's partition count and stores it as t's view.
func (p *Producer) readPartitions(ctx context.Context, t *topic) (*partView, error) {
	m, err := redisx.Partitions(ctx, p.c.Redis(), p.keys.Meta(t.name))
	if err != nil {
		return nil, fmt.Errorf("producer: partition count of %s: %w", t.name, redisx.Unavailable(err))
	}
	v := &partView{n: m.N, read: time.Now().UnixNano()}
	t.parts.view.Store(v)
	return v, nil
}

// partition returns the partition of t a call writes to: t itself for
// partition 0, else the partition's own topic value (its stream key and
// cache state), made once.
func (p *Producer) partition(ctx context.Context, t *topic, co *callOptions, cacheHash *bus.CacheDigest, now int64) (*topic, error) {
	n, err := p.partitions(ctx, t, now)
	if err != nil || n <= 1 {
		return t, err
	}
	var i int
	switch {
	case co.hasPartKey:
		i = PartitionOf(co.partKey, n)
	case cacheHash != nil:
		// One cache entry, one partition: its flight marker and answer
		// live under the partition's hash tag.
		i = int(uint32(cacheHash[0])<<24|uint32(cacheHash[1])<<16|uint32(cacheHash[2])<<8|uint32(cacheHash[3])) % n
	default:
		// Round robin, past partitions whose breaker is open (their node
		// failing, say): the others take the load meanwhile.
		i = int(t.parts.rr.Add(1) % uint64(n))
		if t.br != nil {
			for k := range n {
				j := (i + k) % n
				if st := t.sub(p, j); st.br == nil || st.br.State() != breaker.Open {
					i = j
					break
				}
			}
		}
	}
	return t.sub(p, i), nil
}

// sub returns partition i of t (i > 0) as a topic of its own: its stream,
// its breaker (partitions fail apart: their nodes do), and for a cached
// topic its cache metadata; responders and presence are t's.
func (t *topic) sub(p *Producer, i int) *topic {
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
	br, err := p.newBreaker(name)
	if err != nil {
		br = t.br // the configuration was valid for t: not reached
	}
	st := &topic{name: name, key: p.keys.Topic(name), presence: t.presence, br: br, rejected: t.rejected, resp: t.resp, parent: t, idx: i}
	if t.cache != nil {
		st.cache = &topicCache{cfg: t.cache.cfg, meta: p.keys.Meta(name)}
	}
	grown[i] = st
	t.parts.subs.Store(&grown)
	return st
}

// index returns t's partition number (0 for a topic itself).
func (t *topic) index() int { return t.idx }

// root returns the topic a partition belongs to (t itself for a topic).
func (t *topic) root() *topic {
	if t.parent != nil {
		return t.parent
	}
	return t
}
