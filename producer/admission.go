package producer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
)

// admission decides whether a call goes ahead, before anything is
// written: the circuit breaker of the partition it writes to (each topic
// and each partition has its own: partitions fail apart, their nodes do),
// and for a request whether a worker serves the topic (responders). It
// learns every admitted call's outcome (report) for the breaker. It also
// holds the limit of requests in flight (Config.MaxInFlight): a request
// takes a slot before its write (acquire) and gives it back at its end.
type admission struct {
	cfg     *Config // Breaker, NoBreaker, RemoteErrorsTrip, WaitForResponders, ResponderIdle
	port    port
	log     zerolog.Logger
	stats   *counters
	bg      *background
	slots   chan struct{}   // one per request in flight
	closing <-chan struct{} // closed by Close
}

// newBreaker returns the breaker of a topic or partition (nil when breakers
// are off).
func (a *admission) newBreaker(name string) (*breaker.Breaker, error) {
	if a.cfg.NoBreaker {
		return nil, nil
	}
	br, err := breaker.New(a.cfg.Breaker, breaker.WithStateChange(func(from, to breaker.State) {
		lvl := zerolog.WarnLevel
		if to == breaker.Closed {
			lvl = zerolog.InfoLevel
		}
		a.log.WithLevel(lvl).Str("topic", name).Str("from", from.String()).Str("to", to.String()).Msg("circuit breaker")
	}))
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	return br, nil
}

// breaker asks pt's breaker for a call (a publish; requests go through
// request).
func (a *admission) breaker(pt *topic) (breaker.Token, error) {
	if pt.br == nil {
		return breaker.Token{}, nil
	}
	tok, err := pt.br.Allow()
	if err != nil {
		a.stats.breakerRejected.Add(1)
		return tok, fmt.Errorf("producer: %s: %w: %w", pt.name, bus.ErrBreakerOpen, err)
	}
	return tok, nil
}

// request admits a request to pt: its breaker, then whether a worker
// serves the topic (see responders). A refusal by the latter is reported
// to the breaker; the caller reports the call's outcome otherwise.
func (a *admission) request(ctx context.Context, pt *topic, wait bool, start time.Time) (breaker.Token, error) {
	tok, err := a.breaker(pt)
	if err != nil {
		return tok, err
	}
	if err := a.responders(ctx, pt, wait, start); err != nil {
		a.report(pt, tok, err, start)
		return tok, err
	}
	return tok, nil
}

// report reports a call's error to pt's breaker.
func (a *admission) report(pt *topic, tok breaker.Token, err error, start time.Time) {
	if pt.br == nil {
		return
	}
	var d time.Duration
	if a.cfg.Breaker.SlowCall > 0 {
		d = time.Since(start)
	}
	pt.br.Done(tok, a.outcome(err), d)
}

// outcome classifies a call's error for the breaker: the bus failed on
// timeouts and Redis errors; callers cancelling, closing the producer or
// waiting for a local slot say nothing about Redis or the workers.
func (a *admission) outcome(err error) breaker.Outcome {
	if err == nil { // first, so the common case allocates nothing for errors.As
		return breaker.Success
	}
	var re *bus.RemoteError
	switch {
	case errors.As(err, &re):
		if a.cfg.RemoteErrorsTrip {
			return breaker.Failure
		}
		return breaker.Success
	case errors.Is(err, context.Canceled), errors.Is(err, bus.ErrClosed), errors.Is(err, errSlotWait), errors.Is(err, bus.ErrNoResponders),
		errors.Is(err, bus.ErrBacklogFull):
		return breaker.Ignored
	}
	return breaker.Failure
}

// acquire takes an in-flight slot, waiting for one bounded by ctx, expired
// (the request's own deadline timer, nil when ctx has the deadline) and
// Close. A timeout while waiting wraps errSlotWait: the breaker ignores it.
func (a *admission) acquire(ctx context.Context, expired <-chan time.Time, verb string) error {
	// A free slot, the common case: a send that locks the slots channel
	// alone (the select below locks all four of its channels, the timer's
	// among them: 27% of the requests' select time at 256 callers).
	select {
	case a.slots <- struct{}{}:
		return nil
	default:
	}
	select {
	case a.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", errSlotWait, a.stats.ctxErr(ctx.Err(), "waiting for an in-flight slot"))
	case <-expired:
		return fmt.Errorf("%w: %w", errSlotWait, a.stats.ctxErr(context.DeadlineExceeded, "waiting for an in-flight slot"))
	case <-a.closing:
		return fmt.Errorf("producer: %s: %w", verb, bus.ErrClosed)
	}
}

// release gives an in-flight slot back.
func (a *admission) release() { <-a.slots }

// inFlight returns how many requests hold a slot now.
func (a *admission) inFlight() int { return len(a.slots) }

// errSlotWait marks a timeout spent waiting for a local in-flight slot.
var errSlotWait = errors.New("waiting for an in-flight slot")

// responders returns nil when a request to t may be written: a worker
// serves the topic, or the check could not tell (a Redis error: the write
// then fails or succeeds on its own), or the caller opted out. Otherwise it
// returns an error wrapping bus.ErrNoResponders. now is the request's start.
func (a *admission) responders(ctx context.Context, t *topic, wait bool, now time.Time) error {
	if wait || a.cfg.WaitForResponders {
		return nil
	}
	r := t.resp
	known, ok, fresh := r.get(now)
	switch {
	case known && ok:
		if !fresh && r.refreshing.CompareAndSwap(false, true) && !a.bg.run(func(ctx context.Context) { a.refreshResponders(ctx, t) }) {
			r.refreshing.Store(false) // closing
		}
		return nil
	case known && fresh:
		return a.noResponders(t)
	}
	// Unknown, or "nobody" gone stale: check now, one caller at a time.
	select {
	case r.check <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("producer: request to %s: waiting to check for workers: %w", t.name, ctx.Err())
	}
	defer func() { <-r.check }()
	if known, ok, fresh = r.get(time.Now()); !known || !fresh { // nobody checked while this caller waited
		var err error
		if ok, err = a.served(ctx, t); err != nil {
			return nil // cannot tell: let the write decide
		}
		r.set(ok)
	}
	if !ok {
		return a.noResponders(t)
	}
	return nil
}

// served asks Redis whether a worker serves t now.
func (a *admission) served(ctx context.Context, t *topic) (bool, error) {
	return a.port.Responders(ctx, t.root().key, t.presence, time.Now(), a.cfg.ResponderIdle)
}

func (a *admission) noResponders(t *topic) error {
	a.stats.noResponders.Add(1)
	return fmt.Errorf("producer: request to %s: no worker serves the topic (no consumer group, or no consumer seen within %v); WaitForResponders queues it anyway: %w",
		t.name, a.cfg.ResponderIdle, bus.ErrNoResponders)
}

// refreshResponders re-checks t in the background.
func (a *admission) refreshResponders(ctx context.Context, t *topic) {
	ctx, cancel := context.WithTimeout(ctx, respondersTimeout)
	defer cancel()
	ok, err := a.served(ctx, t)
	if err == nil {
		t.resp.set(ok)
	}
	t.resp.refreshing.Store(false)
}
