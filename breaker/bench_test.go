package breaker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
)

var errBench = errors.New("bench failure")

// BenchmarkCompare runs the same workloads through this breaker and
// sony/gobreaker/v2, configured alike (10s rolling window of 1s buckets,
// trip at >= 50% failures over >= 20 calls, 5 probes), so that
//
//	go test -run='^$' -bench Compare -cpu 1,2,8,32 ./breaker/
//
// puts each pair side by side (and benchstat can compare them).
func BenchmarkCompare(b *testing.B) {
	workloads := []struct {
		name  string
		every int // one failure every n calls; 0 = never
	}{{"success", 0}, {"fail1pct", 100}}
	for _, wl := range workloads {
		b.Run(wl.name+"/mycelium", func(b *testing.B) {
			br, err := New(Config{Window: 10 * time.Second, Buckets: 10, MinCalls: 20, FailureRatio: 0.5, HalfOpenProbes: 5})
			if err != nil {
				b.Fatal(err)
			}
			defer br.Close()
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					fail := wl.every > 0 && i%wl.every == 0
					_, _ = Do(ctx, br, func(context.Context) (struct{}, error) {
						if fail {
							return struct{}{}, errBench
						}
						return struct{}{}, nil
					})
				}
			})
			if br.State() != Closed {
				b.Fatalf("breaker tripped: %+v", br.Counts())
			}
		})
		b.Run(wl.name+"/gobreaker", func(b *testing.B) {
			cb := gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
				Name: "bench", MaxRequests: 5, Interval: 10 * time.Second, BucketPeriod: time.Second, Timeout: 5 * time.Second,
				ReadyToTrip: func(c gobreaker.Counts) bool {
					return c.Requests >= 20 && float64(c.TotalFailures) >= 0.5*float64(c.Requests)
				},
			})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					fail := wl.every > 0 && i%wl.every == 0
					_, _ = cb.Execute(func() (struct{}, error) {
						if fail {
							return struct{}{}, errBench
						}
						return struct{}{}, nil
					})
				}
			})
			if cb.State() != gobreaker.StateClosed {
				b.Fatalf("gobreaker tripped")
			}
		})
	}
}

// BenchmarkTwoStep compares the two-step APIs: Allow+Done against
// gobreaker's TwoStepCircuitBreaker Allow+done.
func BenchmarkTwoStep(b *testing.B) {
	b.Run("mycelium", func(b *testing.B) {
		br, _ := New(Config{})
		defer br.Close()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if t, err := br.Allow(); err == nil {
					br.Done(t, Success, 0)
				}
			}
		})
	})
	b.Run("gobreaker", func(b *testing.B) {
		cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{Name: "bench", Interval: 10 * time.Second, BucketPeriod: time.Second})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if done, err := cb.Allow(); err == nil {
					done(nil)
				}
			}
		})
	})
}
