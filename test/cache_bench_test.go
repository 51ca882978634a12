package test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
)

// cachedBench starts a redis-server, an echo consumer and a producer that
// caches topic "bench" (local tier on or off).
func cachedBench(b *testing.B, local bool) *producer.Producer {
	b.Helper()
	srv := redistest.Start(b)
	runConsumer(b, srv.Client(b), consumer.Config{Topic: "bench", Concurrency: 128}, echo)
	cc := producer.CacheConfig{}
	if !local {
		cc.LocalTTL = -1
	}
	return newProducer(b, srv.Client(b), producer.Config{Cache: map[string]producer.CacheConfig{"bench": cc}})
}

// reportQuantiles adds the p50 and p99 of h as benchmark metrics.
func reportQuantiles(b *testing.B, h *metrics.Histogram) {
	s := h.Snapshot()
	b.ReportMetric(float64(s.Quantile(0.5).Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(s.Quantile(0.99).Nanoseconds()), "p99-ns")
}

// BenchmarkCachedRequest measures a cached topic's request with a 1 KiB
// payload: answered by the local tier (identified by its payload, or by a
// short cache key), by the shared tier (one round trip), and a miss (a fresh
// payload every time: the handler answers; compare with
// BenchmarkRequest/serial, the same request uncached). p50-ns and p99-ns
// are per-request latencies. hash_copy_floor is what any local hit of a
// 1 KiB payload costs at least (its SHA-256 and the copy handed to the
// caller) on this machine, timed the same way: its p99 is the machine's.
func BenchmarkCachedRequest(b *testing.B) {
	payload := make([]byte, 1024)
	ctx := context.Background()
	b.Run("hash_copy_floor", func(b *testing.B) {
		var h metrics.Histogram
		b.ReportAllocs()
		var sink []byte
		for b.Loop() {
			t0 := time.Now()
			d := bus.PayloadDigest(payload)
			sink = append(sink[:0:0], payload...)
			sink[0] = d[0]
			h.Record(time.Since(t0))
		}
		b.StopTimer()
		reportQuantiles(b, &h)
	})
	for _, tc := range []struct {
		name  string
		local bool
		fresh bool
		key   bool
	}{{"local_hit", true, false, false}, {"local_hit_key", true, false, true}, {"shared_hit", false, false, false}, {"miss", true, true, false}} {
		b.Run(tc.name, func(b *testing.B) {
			p := cachedBench(b, tc.local)
			var opts []producer.RequestOption
			if tc.key {
				opts = append(opts, producer.CacheKey("model=m1 prompt=42"))
			}
			if _, err := p.Request(ctx, "bench", payload, opts...); err != nil { // stores the answer
				b.Fatal(err)
			}
			var h metrics.Histogram
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.ResetTimer()
			var seq uint64
			for b.Loop() {
				if tc.fresh {
					seq++
					binary.LittleEndian.PutUint64(payload, seq)
				}
				t0 := time.Now()
				if _, err := p.Request(ctx, "bench", payload, opts...); err != nil {
					b.Fatal(err)
				}
				h.Record(time.Since(t0))
			}
			b.StopTimer()
			reportQuantiles(b, &h)
		})
	}
}

// BenchmarkRequestBatch100 compares one RequestBatch of 100 requests with
// 100 concurrent Requests (one op = 100 requests answered either way).
func BenchmarkRequestBatch100(b *testing.B) {
	srv := redistest.Start(b)
	runConsumer(b, srv.Client(b), consumer.Config{Topic: "bench", Concurrency: 128}, echo)
	p := newProducer(b, srv.Client(b), producer.Config{})
	payloads := make([][]byte, 100)
	for i := range payloads {
		payloads[i] = make([]byte, 1024)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.Run("batch", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out, err := p.RequestBatch(ctx, "bench", payloads)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range out {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		}
	})
	b.Run("concurrent", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var wg sync.WaitGroup
			for _, pl := range payloads {
				wg.Go(func() {
					if _, err := p.Request(ctx, "bench", pl); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
		}
	})
}
