package producer

import (
	"context"
	"sync"
)

// background runs the producer's background work (refreshes of responders,
// partition counts and cache epochs) on goroutines it owns: stop cancels
// their ctx and waits for them. Close calls stop before it waits for the
// reply reader, so no refresh outlives the producer.
type background struct {
	// ctx is every goroutine's, cancelled by stop: the one context kept in
	// a struct, because the goroutines outlive the calls that start them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex // guards closed against wg.Go racing stop's wg.Wait
	closed bool
}

func newBackground() *background {
	b := &background{}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b
}

// run runs fn on a goroutine of b with b's ctx and reports true, or
// reports false once stop has begun (fn then does not run).
func (b *background) run(fn func(ctx context.Context)) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.wg.Go(func() { fn(b.ctx) })
	return true
}

// stop cancels the background goroutines and waits for them.
func (b *background) stop() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
}
