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
// system clock is open for business (created and not yet Closed). Reading it
// is one atomic load instead of a clock read.
var coarse struct {
	mu    sync.Mutex
	users int
	stop  chan struct{}
	done  chan struct{}
	now   atomic.Int64
}

const coarseTick = time.Millisecond

func coarseAcquire() {
	coarse.mu.Lock()
	defer coarse.mu.Unlock()
	coarse.users++
	if coarse.users > 1 {
		return
	}
	coarse.now.Store(time.Now().UnixNano())
	coarse.stop = make(chan struct{})
	coarse.done = make(chan struct{})
	go func(stop, done chan struct{}) {
		defer close(done)
		t := time.NewTicker(coarseTick)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				coarse.now.Store(now.UnixNano())
			case <-stop:
				return
			}
		}
	}(coarse.stop, coarse.done)
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
