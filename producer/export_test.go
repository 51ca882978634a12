package producer

import (
	"github.com/egos/mycelium/internal/faults"
	"github.com/egos/mycelium/internal/redisx"
)

// WithFaults makes the producer reach Redis through f (its port wraps the
// client with f's faults): the tests' seam for Redis's failures.
func WithFaults(f *faults.Faults) Option {
	return func(p *Producer) {
		p.portFor = func(c client) port { return redisx.NewPort(f.Wrap(c.Redis())) }
	}
}
