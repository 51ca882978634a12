package producer

import (
	"bytes"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/egos/mycelium/bus"
)

// TestLocalTierTTL: an answer leaves the local tier when its own TTL ends
// (each entry has its own: the worker may store it for less).
func TestLocalTierTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var evicted atomic.Uint64
		c, err := newLocalTier(1<<20, &evicted)
		if err != nil {
			t.Fatal(err)
		}
		defer c.StopAllGoroutines()
		short := localKey{"t", 0, bus.PayloadDigest([]byte("short"))}
		long := localKey{"t", 0, bus.PayloadDigest([]byte("long"))}
		c.Set(short, &localEntry{payload: []byte("a"), ttl: time.Second})
		c.Set(long, &localEntry{payload: []byte("b"), ttl: time.Minute})
		time.Sleep(2 * time.Second)
		if _, ok := c.GetIfPresent(short); ok {
			t.Fatalf("entry with a 1s TTL still present after 2s")
		}
		if _, ok := c.GetIfPresent(long); !ok {
			t.Fatalf("entry with a 1m TTL gone after 2s")
		}
	})
}

// TestLocalTierByteBound: the local tier stays within its byte budget,
// whatever the number of entries, and counts what it evicted.
func TestLocalTierByteBound(t *testing.T) {
	var evicted atomic.Uint64
	const budget = 64 << 10
	c, err := newLocalTier(budget, &evicted)
	if err != nil {
		t.Fatal(err)
	}
	defer c.StopAllGoroutines()
	payload := bytes.Repeat([]byte("x"), 1024)
	for i := range 1000 {
		k := localKey{"t", 0, bus.PayloadDigest(fmt.Appendf(nil, "%d", i))}
		c.Set(k, &localEntry{payload: payload, ttl: time.Hour})
	}
	c.CleanUp()
	if w := c.WeightedSize(); w > budget {
		t.Fatalf("weighted size %d exceeds the budget %d", w, budget)
	}
	if n := c.EstimatedSize(); n > budget/1024 || n == 0 {
		t.Fatalf("%d entries of 1 KiB kept in a 64 KiB budget", n)
	}
	// Deletion events are delivered on the cache's own goroutines.
	for end := time.Now().Add(5 * time.Second); evicted.Load() < 1000-budget/1024 && time.Now().Before(end); {
		runtime.Gosched()
	}
	if e := evicted.Load(); e < 1000-budget/1024 {
		t.Fatalf("evictions counted = %d, want at least %d", e, 1000-budget/1024)
	}
}
