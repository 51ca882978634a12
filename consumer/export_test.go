package consumer

import (
	"github.com/egos/mycelium/internal/faults"
	"github.com/egos/mycelium/internal/redisx"
)

// WithFaults makes the consumer reach Redis through f (its port wraps the
// client with f's faults): the tests' seam for Redis's failures.
func WithFaults(f *faults.Faults) Option {
	return func(c *Consumer) { c.e.port = redisx.NewPort(f.Wrap(c.e.c.Redis())) }
}

// ShareWaiting returns how many workers of r's topics wait for a shared
// handler slot (0 before Run).
func ShareWaiting(r *Router) int {
	ts := r.Consumers()
	if len(ts) == 0 || ts[0].share == nil {
		return 0
	}
	s := ts[0].share
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting
}
