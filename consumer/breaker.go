package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
)

// maxBreakerWait caps one wait for an open breaker, so a worker re-checks
// at least this often.
const maxBreakerWait = time.Second

// BreakerMiddleware stops a consumer from hammering a failing downstream
// (for example the HTTP reasoning service behind a worker). Each call goes
// through b; handler errors count as failures except cancellations and
// errors that say the message was at fault (bus.ErrCallerFault: a bad request
// says nothing of the downstream's health).
//
// While b is open, a request is refused at once: its caller gets a remote
// error coded CodeBreakerOpen (saying when the breaker will probe again)
// instead of waiting out its deadline, and the entry is acknowledged. An
// event, which nobody waits for, is held instead: it stays pending (not
// acknowledged, not dead-lettered), the worker's slot stays taken so the
// consumer reads no more, and the call goes ahead once b admits it again;
// if the consumer shuts down first, the event stays pending for another
// consumer.
func BreakerMiddleware(b *breaker.Breaker) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, m *Message) ([]byte, error) {
			for {
				tok, err := b.Allow()
				if err == nil {
					start := time.Now()
					out, herr := next.Handle(ctx, m)
					outcome := breaker.Classify(herr)
					if outcome == breaker.Failure && errors.Is(herr, bus.ErrCallerFault) {
						outcome = breaker.Ignored
					}
					b.Done(tok, outcome, time.Since(start))
					return out, herr
				}
				probe := 10 * time.Millisecond // half-open with every probe out
				if until := b.Counts().OpenUntil; !until.IsZero() {
					probe = max(time.Until(until), time.Millisecond)
				}
				if m.Request {
					in := probe.Round(time.Millisecond)
					if probe >= time.Second {
						in = probe.Round(time.Second)
					}
					return nil, &bus.RemoteError{Code: bus.CodeBreakerOpen,
						Message: fmt.Sprintf("the worker's downstream circuit breaker is open (%v); it probes again in about %v", err, in)}
				}
				wait := min(probe, maxBreakerWait)
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return nil, ctx.Err()
				}
			}
		})
	}
}
