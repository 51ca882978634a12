package combine

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Combiner queues items of type T and flushes them in batches with at most
// Flushers flushes running at once. Safe for concurrent use.
type Combiner[T any] struct {
	flush    func([]T)
	flushers int
	maxBatch int
	rounds   int // batches an inline flusher writes before handing over

	mu      sync.Mutex
	queue   []T
	active  int
	closed  bool
	helpers sync.WaitGroup
	batches sync.Pool

	// Kept helpers (KeepHelpers): a helper whose queue ran dry parks on
	// wake for the next flush instead of exiting. idle counts the parked
	// ones; a token on wake is a flusher slot handed to one of them.
	keep    bool
	idle    int
	wake    chan struct{}
	spawned int // helper goroutines started (tests)

	// shared: the last batch taken held more than one item; busy (Busy)
	// says others are about to add. Either makes a new flusher yield
	// before its first batch.
	shared atomic.Bool
	busy   func() bool
}

// New returns a Combiner that calls flush with batches of at most maxBatch
// items, with at most flushers calls running at once. An inline flusher
// (Add with inline set) writes at most rounds batches before it hands the
// rest to a helper goroutine. flush must not call Add.
func New[T any](flush func([]T), flushers, maxBatch, rounds int) *Combiner[T] {
	c := &Combiner[T]{flush: flush, flushers: flushers, maxBatch: maxBatch, rounds: rounds}
	c.batches.New = func() any {
		b := make([]T, 0, 64)
		return &b
	}
	return c
}

// KeepHelpers makes helper goroutines stay once the queue is drained,
// parked until the next flush, instead of exiting; Close stops them (Wait
// then returns once they have). A new goroutine per flush costs its
// creation, a wake-up of an idle thread to run it, and the growth of its
// stack, copied as the flush descends into the Redis client: 12 µs of CPU
// per flush at one caller on the 2-vCPU VMs, about 4% of a request
// (docs/performance.md, "One caller"). A parked helper is woken through a
// channel instead. Call it before the first Add; it returns c.
func (c *Combiner[T]) KeepHelpers() *Combiner[T] {
	c.keep = true
	c.wake = make(chan struct{}, c.flushers)
	return c
}

// Busy sets what tells a new flusher that other callers are about to
// add, so that it yields before its first batch even though the last
// batch held one item (see loop): the producer's requests in flight, a
// worker's entries. Call it before the first Add; it returns c.
func (c *Combiner[T]) Busy(f func() bool) *Combiner[T] {
	c.busy = f
	return c
}

// Add queues item. If a flusher slot is free, it flushes: on the caller's
// goroutine when inline (the caller then waits for the flushes it does),
// else on a tracked helper goroutine. It reports false, and does not queue
// item, once Close was called.
func (c *Combiner[T]) Add(item T, inline bool) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.queue = append(c.queue, item)
	if c.active >= c.flushers {
		c.mu.Unlock()
		return true
	}
	c.active++
	if inline {
		c.mu.Unlock()
		c.loop(c.rounds, false)
		return true
	}
	c.handOff()
	c.mu.Unlock()
	return true
}

// handOff gives a flusher slot, already counted in active, to a helper: a
// parked one when there is one, else a new goroutine. Called with mu held.
func (c *Combiner[T]) handOff() {
	if c.idle > 0 && !c.closed {
		c.idle--
		c.wake <- struct{}{} // never blocks: at most flushers tokens, one per parked helper
		return
	}
	c.spawned++
	c.helpers.Add(1)
	go c.helper()
}

// helper flushes with the slot it was handed, then, when kept, parks for
// the next one until Close.
func (c *Combiner[T]) helper() {
	defer c.helpers.Done()
	for c.loop(0, true) {
		if _, ok := <-c.wake; !ok {
			return
		}
	}
}

// loop flushes queued batches while there are any, holding one flusher
// slot, released only when the queue is seen empty under the lock, so no
// item is ever left queued without a flusher. rounds > 0 bounds the batches
// written before the rest goes to a helper.
//
// A flusher yields once before its first batch. Callers often arrive
// together: a batch of replies or entries readies a dozen goroutines at
// once, and the first to Add starts a flusher that would otherwise run
// next (a new goroutine, or the caller itself) and flush that one item
// alone, while the others queue behind its round trip. Yielding lets the
// goroutines already runnable queue their items first, so they share the
// first round trip. It costs one trip through the scheduler, and with one
// caller more than that: what else is runnable then is the process's next
// blocking read, whose write runs first (~30 µs on the 2-vCPU VMs, twice a
// request: the sender's and the acker's). So it yields only when others
// may add: the last batch held more than one item, or the owner's Busy
// says so (with a few callers, batches of one alternate with batches of
// several, and yielding on every flush still paid).
// docs/performance.md ("Decisions in the code") has what each gained.
func (c *Combiner[T]) loop(rounds int, helper bool) (parked bool) {
	if c.yields() {
		runtime.Gosched()
	}
	for i := 0; ; i++ {
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.active--
			parked = helper && c.keep && !c.closed
			if parked {
				c.idle++
			}
			c.mu.Unlock()
			return parked
		}
		if rounds > 0 && i == rounds {
			c.handOff() // the slot passes to a helper
			c.mu.Unlock()
			return false
		}
		bp := c.batches.Get().(*[]T)
		n := min(len(c.queue), c.maxBatch)
		c.shared.Store(n > 1)
		batch := (*bp)[:0]
		batch = append(batch, c.queue[:n]...)
		rest := copy(c.queue, c.queue[n:])
		clear(c.queue[rest:])
		c.queue = c.queue[:rest]
		c.mu.Unlock()

		c.flush(batch)
		clear(batch)
		*bp = batch[:0]
		c.batches.Put(bp)
	}
}

// yields reports whether a new flusher yields before its first batch (see
// loop).
func (c *Combiner[T]) yields() bool { return c.shared.Load() || c.busy != nil && c.busy() }

// Close makes later Adds fail. Items already queued are still flushed.
// Parked helpers (KeepHelpers) exit.
func (c *Combiner[T]) Close() {
	c.mu.Lock()
	if !c.closed && c.keep {
		close(c.wake) // parked helpers take the tokens sent before, then exit
	}
	c.closed = true
	c.mu.Unlock()
}

// Wait returns once every helper goroutine has finished. Call it after the
// last Add returned (inline flushers finish within their Add), and after
// Close when helpers are kept: Wait closes a combiner that keeps its
// helpers itself, rather than wait forever for helpers parked until Close.
func (c *Combiner[T]) Wait() {
	if c.keep {
		c.Close()
	}
	c.helpers.Wait()
}
