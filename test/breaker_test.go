package test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestBreakerWhileRedisPaused pauses Redis (SIGSTOP) under request load:
// callers first time out at their deadline, then the breaker opens and they
// fail fast without touching Redis; after SIGCONT the breaker half-opens
// and closes again. It logs the latencies it measured.
func TestBreakerWhileRedisPaused(t *testing.T) {
	srv := redistest.Start(t)
	work, prod := srv.Client(t), srv.Client(t)
	runConsumer(t, work, consumer.Config{Topic: "paused", Block: 200 * time.Millisecond}, echo)
	const openTimeout = time.Second
	p := newProducer(t, prod, producer.Config{Breaker: breaker.Config{MinCalls: 5, OpenTimeout: openTimeout, HalfOpenProbes: 2}})
	ctx := context.Background()
	for range 10 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := p.Request(rctx, "paused", []byte("warm")); err != nil {
			t.Fatal(err)
		}
		cancel()
	}

	type sample struct {
		at   time.Duration
		took time.Duration
		err  error
	}
	var mu sync.Mutex
	var samples []sample
	start := time.Now()
	srv.Signal(syscall.SIGSTOP)
	var resumed time.Duration
	stop := make(chan struct{})
	wait := redistest.Load(4, stop, func() {
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := p.Request(rctx, "paused", []byte("x"))
		cancel()
		mu.Lock()
		samples = append(samples, sample{at: t0.Sub(start), took: time.Since(t0), err: err})
		mu.Unlock()
		if errors.Is(err, bus.ErrBreakerOpen) {
			time.Sleep(time.Millisecond) // pace fast failures; this is load, not synchronisation
		}
	})
	waitFor(t, 10*time.Second, "the breaker to open", func() bool { st, _ := p.BreakerState("paused"); return st == breaker.Open })
	time.Sleep(1500 * time.Millisecond) // stay paused across an open period and a failed probe round
	resumed = time.Since(start)
	srv.Signal(syscall.SIGCONT)
	var recovered time.Duration
	waitFor(t, 30*time.Second, "a successful request after SIGCONT", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range samples {
			if s.err == nil && s.at > resumed {
				recovered = s.at + s.took - resumed
				return true
			}
		}
		return false
	})
	close(stop)
	wait()

	var timeouts, open []time.Duration
	for _, s := range samples {
		switch {
		case s.at > resumed:
		case errors.Is(s.err, bus.ErrBreakerOpen):
			open = append(open, s.took)
		case errors.Is(s.err, bus.ErrTimeout):
			timeouts = append(timeouts, s.took)
		}
	}
	if len(timeouts) == 0 || len(open) == 0 {
		t.Fatalf("while paused: %d timeouts and %d fast failures; want both", len(timeouts), len(open))
	}
	p99 := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)*99/100]
	}
	t.Logf("Redis paused %.1fs: %d requests timed out (p99 %v, deadline 200ms), then %d failed fast with ErrBreakerOpen (p99 %v); first success %v after SIGCONT (open timeout %v)",
		resumed.Seconds(), len(timeouts), p99(timeouts), len(open), p99(open), recovered.Round(time.Millisecond), openTimeout)
	if p99(open) >= 200*time.Millisecond {
		t.Fatalf("fast failures took up to %v: the breaker did not short-cut the timeout", p99(open))
	}
	if st, _ := p.BreakerState("paused"); st == breaker.Open {
		t.Fatalf("breaker still open after recovery")
	}
}
