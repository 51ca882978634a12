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
