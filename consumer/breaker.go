package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
)

// CodeBreakerOpen is the remote error code of a request whose deadline
// passed while the handler's downstream breaker stayed open.
const CodeBreakerOpen = "breaker_open"

// maxBreakerWait caps one wait for an open breaker, so a worker re-checks
// at least this often.
const maxBreakerWait = time.Second

// BreakerMiddleware stops a consumer from hammering a failing downstream
// (for example the HTTP reasoning service behind a worker). Each call goes
// through b; handler errors count as failures except cancellations. While
// b is open the worker holds its entry instead of failing it: the entry
// stays pending (not acknowledged, not dead-lettered), the worker's slot
// stays taken so the consumer reads no more, and the call goes ahead once b
// admits it again. If the message's deadline passes first, the caller gets
// a remote error coded CodeBreakerOpen; if the consumer shuts down, the
// entry stays pending for another consumer.
func BreakerMiddleware(b *breaker.Breaker) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, m *Message) ([]byte, error) {
			for {
				tok, err := b.Allow()
				if err == nil {
					start := time.Now()
					out, herr := next.Handle(ctx, m)
					b.Done(tok, breaker.Classify(herr), time.Since(start))
					return out, herr
				}
				wait := 10 * time.Millisecond // half-open with every probe out
				if until := b.Counts().OpenUntil; !until.IsZero() {
					wait = min(max(time.Until(until), time.Millisecond), maxBreakerWait)
				}
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					if ctx.Err() == context.DeadlineExceeded {
						return nil, &bus.RemoteError{Code: CodeBreakerOpen, Message: fmt.Sprintf("downstream circuit breaker stayed open until the deadline: %v", err)}
					}
					return nil, ctx.Err()
				}
			}
		})
	}
}
