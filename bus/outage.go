package bus

import (
	"time"

	"github.com/rs/zerolog"
)

// Outage turns a loop's stream of errors into two log lines per outage: one
// when the first error arrives, one with the outage's duration when the loop
// works again. It belongs to one goroutine.
type Outage struct {
	Log   zerolog.Logger
	What  string // e.g. "reclaimer"
	since time.Time
}

// Failed records an error; it logs only the first of an outage.
func (o *Outage) Failed(err error) {
	if !o.since.IsZero() {
		return
	}
	o.since = time.Now()
	o.Log.Error().Err(err).Str("loop", o.What).Msg("lost Redis; retrying")
}

// OK records a success; it logs the recovery if an outage was running.
func (o *Outage) OK() {
	if o.since.IsZero() {
		return
	}
	o.Log.Info().Str("loop", o.What).Dur("outage", time.Since(o.since)).Msg("recovered")
	o.since = time.Time{}
}
