package breaker

import (
	"sync"
	"sync/atomic"
	"time"
)

// Clock tells the time. Inject one with WithClock in tests; the default is
// the system clock, read through a shared coarse clock on the hot path.
type Clock interface {
	Now() time.Time
}

// coarse is the process-wide coarse clock: one goroutine stores the time
// (unix nanoseconds) every coarseTick while at least one breaker using the
// system clock is open for business (created and not yet Closed) and
// somebody reads it. Reading it is an atomic load instead of a clock read.
//
// The goroutine sleeps after coarseIdleTicks ticks without a reader, and
// the next reader wakes it (reading the system clock once itself): a
// producer with no traffic costs no wake-ups: a 1 ms ticker that never
// slept would cost 1,000 thread wake-ups a second in an idle process
// (docs/performance.md, "Decisions in the code").
var coarse struct {
	mu    sync.Mutex
	users int
	stop  chan struct{}
	done  chan struct{}
	wake  chan struct{} // a reader found the clock asleep (buffered 1)

	now    atomic.Int64
	used   atomic.Bool // read since the last tick
	asleep atomic.Bool
}

const (
	coarseTick      = time.Millisecond
	coarseIdleTicks = 4
)

// coarseNow returns the coarse time in unix nanoseconds, waking the clock
// if it sleeps.
func coarseNow() int64 {
	if coarse.asleep.Load() {
		n := coarseAdvance(time.Now().UnixNano()) // before waking, so readers after the wake see it
		if coarse.asleep.CompareAndSwap(true, false) {
			select {
			case coarse.wake <- struct{}{}:
			default:
			}
		}
		return n
	}
	if !coarse.used.Load() { // one write per tick, not one per call
		coarse.used.Store(true)
	}
	return coarse.now.Load()
}

// coarseAdvance stores n unless the clock already shows a later time, so
// readers never see it go back, and returns what the clock shows.
func coarseAdvance(n int64) int64 {
	for {
		cur := coarse.now.Load()
		if n <= cur {
			return cur
		}
		if coarse.now.CompareAndSwap(cur, n) {
			return n
		}
	}
}

func coarseAcquire() {
	coarse.mu.Lock()
	defer coarse.mu.Unlock()
	coarse.users++
	if coarse.users > 1 {
		return
	}
	coarse.now.Store(time.Now().UnixNano())
	coarse.used.Store(true)
	coarse.asleep.Store(false)
	coarse.stop = make(chan struct{})
	coarse.done = make(chan struct{})
	coarse.wake = make(chan struct{}, 1)
	go coarseRun(coarse.stop, coarse.done, coarse.wake)
}

// coarseRun ticks until stop, sleeping while nobody reads the clock.
func coarseRun(stop, done, wake chan struct{}) {
	defer close(done)
	t := time.NewTicker(coarseTick)
	defer t.Stop()
	idle := 0
	for {
		select {
		case now := <-t.C:
			coarseAdvance(now.UnixNano())
			if coarse.used.Swap(false) {
				idle = 0
				continue
			}
			if idle++; idle < coarseIdleTicks {
				continue
			}
			t.Stop()
			coarse.asleep.Store(true)
			select {
			case <-wake:
			case <-stop:
				return
			}
			coarseAdvance(time.Now().UnixNano())
			t.Reset(coarseTick)
			idle = 0
		case <-stop:
			return
		}
	}
}

func coarseRelease() {
	coarse.mu.Lock()
	defer coarse.mu.Unlock()
	coarse.users--
	if coarse.users > 0 {
		return
	}
	close(coarse.stop)
	<-coarse.done
}
