package test

import (
	"context"
	"testing"
	"time"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// BenchmarkRequest measures one request/reply round trip through a real
// redis-server with an in-process echo consumer; allocs/op counts both
// sides. Run with -cpu and -benchtime as needed; parallelism = 64 callers
// per GOMAXPROCS via SetParallelism.
func BenchmarkRequest(b *testing.B) {
	for _, par := range []int{1, 32} {
		b.Run(map[int]string{1: "serial", 32: "parallel"}[par], func(b *testing.B) {
			srv := redistest.Start(b)
			runConsumer(b, srv.Client(b), consumer.Config{Topic: "bench", Concurrency: 128}, echo)
			p := newProducer(b, srv.Client(b), producer.Config{})
			payload := make([]byte, 1024)
			rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
			defer rcancel()
			if _, err := p.Request(rctx, "bench", payload); err != nil { // warm up
				b.Fatal(err)
			}
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.ResetTimer()
			if par == 1 {
				for b.Loop() {
					if _, err := p.Request(rctx, "bench", payload); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := p.Request(rctx, "bench", payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkPublishConsume measures publishing events until each was handled.
func BenchmarkPublishConsume(b *testing.B) {
	srv := redistest.Start(b)
	handled := make(chan struct{}, 1<<16)
	runConsumer(b, srv.Client(b), consumer.Config{Topic: "bench", Concurrency: 128}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		handled <- struct{}{}
		return nil, nil
	}))
	p := newProducer(b, srv.Client(b), producer.Config{})
	payload := make([]byte, 1024)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Publish(context.Background(), "bench", payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
	for range b.N {
		<-handled
	}
}
