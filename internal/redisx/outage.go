package redisx

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"
)

// NewBackoff returns the bus's one reconnect policy: jittered exponential
// backoff from 50 ms growing to 2 s, without an elapsed-time limit (set
// MaxElapsedTime on the result to bound it).
func NewBackoff() *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond),
		backoff.WithMaxInterval(2*time.Second),
		backoff.WithMaxElapsedTime(0),
	)
}

// Outage turns a loop's stream of Redis errors into two log lines per
// outage (one when it starts, one with its duration when the loop works
// again) and paces the loop's retries with NewBackoff. It belongs to one
// goroutine; the zero value with Log and What set is ready to use.
type Outage struct {
	Log   zerolog.Logger
	What  string // names the loop in the logs, e.g. "reclaimer myc:{t}"
	since time.Time
	bo    *backoff.ExponentialBackOff
}

// Failed records an error; it logs only the first of an outage. A topic's
// malformed metadata is not a lost Redis, and is logged as what it is.
func (o *Outage) Failed(err error) {
	if !o.since.IsZero() {
		return
	}
	o.since = time.Now()
	if errors.Is(err, ErrCorruptMeta) {
		o.Log.Error().Err(err).Str("loop", o.What).Msg("malformed topic metadata: waiting for an operator to fix it (bus-worker topic set-partitions or set-scheduling), retrying with backoff")
		return
	}
	o.Log.Error().Err(err).Str("loop", o.What).Msg("lost Redis; retrying with backoff")
}

// Backoff waits the next backoff interval, or until ctx ends.
func (o *Outage) Backoff(ctx context.Context) {
	if o.bo == nil {
		o.bo = NewBackoff()
	}
	t := time.NewTimer(o.bo.NextBackOff())
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Active reports whether an outage is running.
func (o *Outage) Active() bool { return !o.since.IsZero() }

// OK records a success; it logs the recovery and resets the backoff if an
// outage was running.
func (o *Outage) OK() {
	if o.since.IsZero() {
		return
	}
	o.Log.Info().Str("loop", o.What).Dur("outage", time.Since(o.since)).Msg("recovered")
	o.since = time.Time{}
	if o.bo != nil {
		o.bo.Reset()
	}
}
