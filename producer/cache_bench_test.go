package producer

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/metrics"
)

// The local tier's library, measured against the alternative that also
// bounds a cache by bytes (a cost per entry): dgraph-io/ristretto/v2.
// hashicorp/golang-lru bounds entries by count only, so it cannot keep the
// tier within LocalCacheBytes. Each op is one lookup of a hot set of 10k
// keys (Zipf-free, uniform) in a 64 MiB tier with 1 KiB answers; "mixed"
// adds one write per 10 lookups (new answers arriving). p99-ns is the
// per-lookup latency.

const benchKeys = 10_000

func benchKey(i int) localKey {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return localKey{topic: "llm", hash: bus.PayloadDigest(b[:])}
}

type (
	getFunc func(localKey) (*localEntry, bool)
	setFunc func(localKey, *localEntry)
)

func newOtterTier(b *testing.B) (getFunc, setFunc) {
	var ev atomic.Uint64
	c, err := newLocalTier(64<<20, &ev)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.StopAllGoroutines() })
	return c.GetIfPresent, func(k localKey, v *localEntry) { c.SetIfAbsent(k, v) }
}

// newRistrettoTier keys ristretto by the digest's first 64 bits (its keys
// must be basic types): a head start over otter's full key.
func newRistrettoTier(b *testing.B) (getFunc, setFunc) {
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *localEntry]{
		NumCounters: 10 * benchKeys, MaxCost: 64 << 20, BufferItems: 64,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	key := func(k localKey) uint64 { return binary.LittleEndian.Uint64(k.hash[:8]) }
	return func(k localKey) (*localEntry, bool) { return c.Get(key(k)) }, func(k localKey, v *localEntry) {
		c.SetWithTTL(key(k), v, int64(localWeight(k, v)), time.Hour)
		c.Wait()
	}
}

func BenchmarkLocalTier(b *testing.B) {
	for _, lib := range []struct {
		name string
		mk   func(*testing.B) (getFunc, setFunc)
	}{{"otter", newOtterTier}, {"ristretto", newRistrettoTier}} {
		for _, mixed := range []bool{false, true} {
			name := lib.name + "/lookup"
			if mixed {
				name = lib.name + "/mixed"
			}
			b.Run(name, func(b *testing.B) {
				get, set := lib.mk(b)
				keys := make([]localKey, benchKeys)
				payload := make([]byte, 1024)
				for i := range keys {
					keys[i] = benchKey(i)
					set(keys[i], &localEntry{payload: payload, ttl: time.Hour})
				}
				var h metrics.Histogram
				var misses atomic.Int64
				var next atomic.Int64
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					i := int(next.Add(7919))
					for pb.Next() {
						i++
						k := keys[i%benchKeys]
						if mixed && i%10 == 0 {
							set(benchKey(benchKeys+i), &localEntry{payload: payload, ttl: time.Hour})
							continue
						}
						t0 := time.Now()
						if _, ok := get(k); !ok {
							misses.Add(1)
						}
						h.Record(time.Since(t0))
					}
				})
				b.StopTimer()
				s := h.Snapshot()
				b.ReportMetric(float64(s.Quantile(0.5).Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(s.Quantile(0.99).Nanoseconds()), "p99-ns")
				b.ReportMetric(float64(misses.Load())/float64(max(s.Count, 1)), "miss-ratio")
			})
		}
	}
}
