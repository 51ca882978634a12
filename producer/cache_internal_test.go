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

// TestRegistryHoldsEarlyReplies: replies read before their request's
// write returned wait for the entry id; the one that answers that entry is
// handed over, whatever came before it, and the others are dropped.
func TestRegistryHoldsEarlyReplies(t *testing.T) {
	r := newRegistry()
	for _, tc := range []struct {
		replies []string // entries the early replies answer, in arrival order
		written string
		handed  bool
		forged  int
	}{
		{[]string{"5-1"}, "5-1", true, 0},
		{[]string{"6-1"}, "5-1", false, 1},
		{[]string{"6-1", "5-1"}, "5-1", true, 1}, // a forged reply first does not push out the real one
	} {
		w := &waiter{}
		r.add(1, w)
		for _, e := range tc.replies {
			if got, how := r.match(1, &result{payload: []byte(e), entry: e}, false); got != nil || how != matchHeld {
				t.Fatalf("match before the write = %v, %d; want held", got, how)
			}
		}
		got, early, forged := r.stamp(1, 0, tc.written)
		if (got != nil) != tc.handed || forged != tc.forged || (tc.handed && early.entry != tc.written) {
			t.Fatalf("stamp(%s) after replies for %v = %v, %+v, %d", tc.written, tc.replies, got, early, forged)
		}
		if !tc.handed {
			// The caller still waits: its own reply is taken.
			if got, how := r.match(1, &result{entry: tc.written}, false); got != w || how != matchTaken {
				t.Fatalf("the real reply after a forged one = %v, %d", got, how)
			}
		}
	}
	// At most maxEarly are held.
	w := &waiter{}
	r.add(3, w)
	for i := range maxEarly {
		r.match(3, &result{entry: fmt.Sprint(i)}, false)
	}
	if _, how := r.match(3, &result{entry: "x"}, false); how != matchForged {
		t.Fatalf("match beyond %d held = %d, want forged", maxEarly, how)
	}
	// After the write, a reply for another entry is refused at once.
	w = &waiter{}
	r.add(2, w)
	r.stamp(2, 0, "7-1")
	if _, how := r.match(2, &result{entry: "8-1"}, false); how != matchForged {
		t.Fatalf("match of another entry = %d, want forged", how)
	}
	if got, how := r.match(2, &result{}, false); got != w || how != matchTaken {
		t.Fatalf("a reply from an older worker (no entry) = %v, %d; want taken", got, how)
	}
}
