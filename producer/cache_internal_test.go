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

// TestRegistryHoldsEarlyReplies: a reply read before its request's write
// returned waits for the entry id; it is handed over if it answers that
// entry and dropped if it answers another.
func TestRegistryHoldsEarlyReplies(t *testing.T) {
	r := newRegistry()
	for _, tc := range []struct {
		replyEntry, written string
		handed, forged      bool
	}{{"5-1", "5-1", true, false}, {"6-1", "5-1", false, true}} {
		w := &waiter{}
		r.add(1, w)
		res := result{payload: []byte("a"), entry: tc.replyEntry}
		if got, how := r.match(1, &res); got != nil || how != matchHeld {
			t.Fatalf("match before the write = %v, %d; want held", got, how)
		}
		got, early, forged := r.stamp(1, 0, tc.written)
		if (got != nil) != tc.handed || forged != tc.forged || (early != nil) != tc.handed {
			t.Fatalf("stamp(%s) after a reply for %s = %v, %v, %v", tc.written, tc.replyEntry, got, early, forged)
		}
		if tc.forged {
			// The caller still waits: its own reply is taken.
			ok := result{entry: tc.written}
			if got, how := r.match(1, &ok); got != w || how != matchTaken {
				t.Fatalf("the real reply after a forged one = %v, %d", got, how)
			}
		}
	}
	// After the write, a reply for another entry is refused at once.
	w := &waiter{}
	r.add(2, w)
	r.stamp(2, 0, "7-1")
	if _, how := r.match(2, &result{entry: "8-1"}); how != matchForged {
		t.Fatalf("match of another entry = %d, want forged", how)
	}
	if got, how := r.match(2, &result{}); got != w || how != matchTaken {
		t.Fatalf("a reply from an older worker (no entry) = %v, %d; want taken", got, how)
	}
}
