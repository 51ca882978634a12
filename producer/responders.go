package producer

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// respondersTTL is how long a topic's answer to "does a worker serve it?"
// is used before it is checked again: at most one check per topic and
// second, whatever the request rate.
const respondersTTL = time.Second

// respondersTimeout bounds one check made in the background.
const respondersTimeout = 2 * time.Second

// responders caches whether a worker serves a topic (see
// redisx.Responders). While the topic is known to be served, a request
// costs one atomic load and goes ahead at once; a stale answer is refreshed
// in the background, so no request waits for a check. While nobody is known
// to serve it (or nothing is known yet), one caller at a time checks,
// bounded by its ctx.
type responders struct {
	// state is the last answer: its time in unix nanoseconds shifted left
	// by one, with the low bit set when a worker served the topic; 0 until
	// the first answer. One word, so the answer and its age are read
	// together without a lock.
	state      atomic.Int64
	refreshing atomic.Bool
	check      chan struct{} // one caller checks at a time (buffered 1)
}

func newResponders() *responders { return &responders{check: make(chan struct{}, 1)} }

// get returns the last answer and whether it is still fresh at now.
func (r *responders) get(now time.Time) (known, ok, fresh bool) {
	s := r.state.Load()
	return s != 0, s&1 == 1, now.UnixNano()-s>>1 < int64(respondersTTL)
}

func (r *responders) set(ok bool) {
	s := time.Now().UnixNano() << 1
	if ok {
		s |= 1
	}
	r.state.Store(s)
}

// admitCall admits a request to t: the topic's breaker, then whether a
// worker serves it (see admitRequest). A refusal by the latter is reported
// to the breaker; the caller reports the call's outcome otherwise.
func (p *Producer) admitCall(ctx context.Context, t *topic, wait bool, start time.Time) (breaker.Token, error) {
	tok, err := t.admit()
	if err != nil {
		return tok, err
	}
	if err := p.admitRequest(ctx, t, wait, start); err != nil {
		p.report(t, tok, err, start)
		return tok, err
	}
	return tok, nil
}

// admitRequest returns nil when a request to t may be written: a worker
// serves the topic, or the check could not tell (a Redis error: the write
// then fails or succeeds on its own), or the caller opted out. Otherwise it
// returns an error wrapping bus.ErrNoResponders. now is the request's start.
func (p *Producer) admitRequest(ctx context.Context, t *topic, wait bool, now time.Time) error {
	if wait || p.cfg.WaitForResponders {
		return nil
	}
	r := t.resp
	known, ok, fresh := r.get(now)
	switch {
	case known && ok:
		if !fresh && r.refreshing.CompareAndSwap(false, true) && !p.bg.run(func(ctx context.Context) { p.refreshResponders(ctx, t) }) {
			r.refreshing.Store(false) // closing
		}
		return nil
	case known && fresh:
		return p.noResponders(t)
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
		if ok, err = p.served(ctx, t); err != nil {
			return nil // cannot tell: let the write decide
		}
		r.set(ok)
	}
	if !ok {
		return p.noResponders(t)
	}
	return nil
}

// served asks Redis whether a worker serves t now.
func (p *Producer) served(ctx context.Context, t *topic) (bool, error) {
	return redisx.Responders(ctx, p.c.Redis(), t.root().key, t.presence, time.Now(), p.cfg.ResponderIdle)
}

func (p *Producer) noResponders(t *topic) error {
	p.stats.noResponders.Add(1)
	return fmt.Errorf("producer: request to %s: no worker serves the topic (no consumer group, or no consumer seen within %v); WaitForResponders queues it anyway: %w",
		t.name, p.cfg.ResponderIdle, bus.ErrNoResponders)
}

// refreshResponders re-checks t in the background (see background).
func (p *Producer) refreshResponders(ctx context.Context, t *topic) {
	ctx, cancel := context.WithTimeout(ctx, respondersTimeout)
	defer cancel()
	ok, err := p.served(ctx, t)
	if err == nil {
		t.resp.set(ok)
	}
	t.resp.refreshing.Store(false)
}
