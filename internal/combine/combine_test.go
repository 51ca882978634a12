package combine

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEveryItemFlushedOnce hammers Add from many goroutines in both modes
// and checks that every item is flushed exactly once, batches respect the
// size bound and no more than the allowed flushes ever run at once.
func TestEveryItemFlushedOnce(t *testing.T) {
	for _, mode := range []struct{ inline, keep bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		inline := mode.inline
		const items, workers, flushers, maxBatch = 20000, 16, 2, 7
		seen := make([]atomic.Int32, items)
		var running, maxRunning, batches atomic.Int32
		c := New(func(b []int) {
			n := running.Add(1)
			for m := maxRunning.Load(); n > m && !maxRunning.CompareAndSwap(m, n); m = maxRunning.Load() {
			}
			if len(b) == 0 || len(b) > maxBatch {
				t.Errorf("batch of %d items", len(b))
			}
			for _, v := range b {
				seen[v].Add(1)
			}
			batches.Add(1)
			time.Sleep(time.Microsecond) // a flush that takes time, so batches form
			running.Add(-1)
		}, flushers, maxBatch, 3)
		if mode.keep {
			c.KeepHelpers()
		}
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < items; i += workers {
					if !c.Add(i, inline) {
						t.Errorf("Add(%d) refused before Close", i)
					}
				}
			}()
		}
		wg.Wait()
		if mode.keep {
			c.mu.Lock()
			if c.spawned > flushers {
				t.Errorf("inline=%v: %d kept helpers started, want at most %d", inline, c.spawned, flushers)
			}
			c.mu.Unlock()
			c.Close() // the kept helpers stop
		}
		c.Wait()
		for i := range seen {
			if n := seen[i].Load(); n != 1 {
				t.Fatalf("inline=%v: item %d flushed %d times", inline, i, n)
			}
		}
		if maxRunning.Load() > flushers {
			t.Fatalf("inline=%v: %d flushes ran at once, max %d", inline, maxRunning.Load(), flushers)
		}
		if batches.Load() >= items {
			t.Fatalf("inline=%v: %d batches for %d items: nothing was combined", inline, batches.Load(), items)
		}
	}
}

// TestKeptHelperReused flushes one item at a time, each flush finished
// before the next Add: a kept helper parks between them and takes every
// flush, where plain helpers start one goroutine a flush. Close stops it
// (goleak checks, in TestMain, that it did).
func TestKeptHelperReused(t *testing.T) {
	for _, keep := range []bool{false, true} {
		done := make(chan int)
		c := New(func(b []int) {
			for _, v := range b {
				done <- v
			}
		}, 2, 16, 0)
		if keep {
			c.KeepHelpers()
		}
		const n = 100
		for i := range n {
			if !c.Add(i, false) {
				t.Fatal("Add refused before Close")
			}
			if v := <-done; v != i {
				t.Fatalf("flushed %d, want %d", v, i)
			}
		}
		c.mu.Lock()
		spawned := c.spawned
		c.mu.Unlock()
		// A plain helper may still be finishing (its slot held) when the
		// next Add comes, and then takes it: up to one goroutine a flush.
		if keep && spawned > 2 || !keep && spawned < 10 {
			t.Errorf("keep=%v: %d helper goroutines started for %d flushes in turn", keep, spawned, n)
		}
		c.Close()
		if c.Add(n, false) {
			t.Fatal("Add after Close accepted an item")
		}
		c.Wait()
	}
}

// TestWaitClosesKeptHelpers: Wait on a combiner that keeps its helpers,
// without Close, stops them (goleak checks) rather than wait forever.
func TestWaitClosesKeptHelpers(t *testing.T) {
	flushed := make(chan int, 1)
	c := New(func(b []int) { flushed <- b[0] }, 1, 8, 0).KeepHelpers()
	c.Add(1, false)
	<-flushed // the helper is parked, or about to be
	c.Wait()
	if c.Add(2, false) {
		t.Error("Add after Wait accepted an item on a combiner that keeps its helpers")
	}
}

func TestCloseRefusesButFlushesQueued(t *testing.T) {
	for _, keep := range []bool{false, true} {
		release := make(chan struct{})
		var flushed atomic.Int32
		c := New(func(b []int) {
			<-release
			flushed.Add(int32(len(b)))
		}, 1, 100, 0)
		if keep {
			c.KeepHelpers()
		}
		c.Add(1, false) // starts the only flusher, which blocks
		c.Add(2, false) // queued behind it
		c.Close()
		if c.Add(3, false) {
			t.Fatal("Add after Close accepted an item")
		}
		close(release)
		c.Wait()
		if flushed.Load() != 2 {
			t.Fatalf("keep=%v: flushed %d items, want the 2 queued before Close", keep, flushed.Load())
		}
	}
}

// TestYieldsOnlyWhenOthersMayAdd: a flusher yields before its first batch
// when the last batch was shared or the owner says others are busy, not
// when one caller flushes alone.
func TestYieldsOnlyWhenOthersMayAdd(t *testing.T) {
	var busy atomic.Bool
	batches := make(chan int, 1)
	c := New(func(b []int) { batches <- len(b) }, 1, 64, 0).Busy(busy.Load)
	if c.yields() {
		t.Fatal("yields before any batch, with nobody busy")
	}
	busy.Store(true)
	if !c.yields() {
		t.Fatal("does not yield with the owner busy")
	}
	busy.Store(false)
	c.Add(1, true) // flushed inline, alone
	<-batches
	if c.yields() {
		t.Fatal("yields after a batch of one, with nobody busy")
	}
	release, taken := make(chan struct{}), make(chan struct{}, 2)
	c2 := New(func(b []int) {
		taken <- struct{}{}
		<-release
		batches <- len(b)
	}, 1, 64, 0)
	c2.Add(1, false) // the flusher blocks on its batch of one
	<-taken
	c2.Add(2, false) // queued behind it, with the next
	c2.Add(3, false)
	release <- struct{}{}
	<-batches
	close(release)
	if n := <-batches; n != 2 {
		t.Fatalf("second batch of %d items, want 2", n)
	}
	if !c2.yields() {
		t.Fatal("does not yield after a batch of two")
	}
	c.Close()
	c2.Close()
	c.Wait()
	c2.Wait()
}

// TestGoroutinesWokenTogetherShareAFlush readies several goroutines at once
// on one P, as a batch of replies does, and checks that the flush the first
// one starts also carries the items of the others (the flusher yields
// before its first batch). Without the yield the new flusher runs first
// and flushes one item alone. With -race the scheduler randomises run
// order, so only a normal build can tell the two apart; each attempt can
// also lose to the scheduler's periodic global-queue check (1 in 61
// schedules), so it takes three attempts and the best of them. Its owner
// says others are busy (Busy): a lone caller's flusher does not yield.
func TestGoroutinesWokenTogetherShareAFlush(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const callers = 8
	best := 0
	for range 3 {
		var first atomic.Int32
		c := New(func(b []int) { first.CompareAndSwap(0, int32(len(b))) }, 1, 64, 0).Busy(func() bool { return true })
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				c.Add(i, false)
			}()
		}
		close(start)
		wg.Wait()
		c.Wait()
		best = max(best, int(first.Load()))
	}
	if best < 2 {
		t.Errorf("the first flush carried %d item(s); want the items of the goroutines woken with it (up to %d)", best, callers)
	}
}
