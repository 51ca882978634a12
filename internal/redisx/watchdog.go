package redisx

import (
	"context"
	"time"
)

// blockMargin is added to a blocking read's BLOCK time to form its ctx
// deadline: rueidis sets no timeout on blocked connections, so without it a
// hung server would hold the read forever.
const blockMargin = 2 * time.Second

// ReadDeadline guards consecutive blocking reads of one loop against a hung
// server. rueidis sets no timeout on a blocked connection, so each read
// needs its ctx to end by itself: ReadDeadline hands out one cancelable
// context (no deadline) and a watchdog timer, reset before every read, that
// cancels it BLOCK plus a margin later.
//
// Why a watchdog and not a ctx deadline: rueidis honours cancellation of a
// blocking read only on its queue path, which it takes for a ctx without a
// deadline; there an aborted read closes its connection at once, on the
// caller's goroutine. With a deadline it reads synchronously and ignores
// cancellation until the deadline; with UnblockOnCancel it closes the
// connection on a background goroutine, which raced a client Close into a
// hang here (pipe.Close waiting forever; seen with miniredis, which has no
// CLIENT UNBLOCK).
//
// It is owned by one goroutine; call Stop when the loop ends.
type ReadDeadline struct {
	parent context.Context
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer
}

// For returns the context for the next read of up to block, derived from
// parent, and arms the watchdog.
func (r *ReadDeadline) For(parent context.Context, block time.Duration) context.Context {
	if r.ctx != nil && r.parent == parent && r.ctx.Err() == nil && r.timer.Stop() {
		r.timer.Reset(block + blockMargin)
		return r.ctx
	}
	r.Stop()
	r.parent = parent
	r.ctx, r.cancel = context.WithCancel(context.WithValue(parent, guardedKey{}, true))
	r.timer = time.AfterFunc(block+blockMargin, r.cancel)
	return r.ctx
}

// Stop releases the watchdog and the context.
func (r *ReadDeadline) Stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
	if r.cancel != nil {
		r.cancel()
	}
	r.ctx, r.cancel, r.timer = nil, nil, nil
}

type guardedKey struct{}

// guard gives a blocking read a watchdog unless its ctx has a deadline (which
// bounds it, though rueidis then ignores cancellation before it) or comes
// from ReadDeadline.
func guard(ctx context.Context, block time.Duration) (context.Context, func()) {
	if _, ok := ctx.Deadline(); ok || ctx.Value(guardedKey{}) != nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(block+blockMargin, cancel)
	return ctx, func() { t.Stop(); cancel() }
}
