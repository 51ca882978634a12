package combine

import (
	"runtime"
	"sync"
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
		c.loop(c.rounds)
		return true
	}
	c.helpers.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.helpers.Done()
		c.loop(0)
	}()
	return true
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
// first round trip. It costs one trip through the scheduler; at low load
// nothing else is runnable and the flusher resumes at once. In a process
// whose every P is busy it waits its turn behind what is runnable, like
// any goroutine the scheduler readies (the reply to its write would wait
// the same way). docs/performance.md ("Decisions in the code") has what it
// gained.
func (c *Combiner[T]) loop(rounds int) {
	runtime.Gosched()
	for i := 0; ; i++ {
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.active--
			c.mu.Unlock()
			return
		}
		if rounds > 0 && i == rounds {
			c.helpers.Add(1) // the slot passes to the helper
			c.mu.Unlock()
			go func() {
				defer c.helpers.Done()
				c.loop(0)
			}()
			return
		}
		bp := c.batches.Get().(*[]T)
		n := min(len(c.queue), c.maxBatch)
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

// Close makes later Adds fail. Items already queued are still flushed.
func (c *Combiner[T]) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

// Wait returns once every helper goroutine has finished. Call it after the
// last Add returned (inline flushers finish within their Add).
func (c *Combiner[T]) Wait() { c.helpers.Wait() }
