package consumer

import (
	"context"
	"errors"
	"time"
)

// Message is one entry handed to a Handler. It is valid only during the
// Handle call; copy what you keep.
type Message struct {
	// ID is the stream entry id.
	ID string
	// Topic the entry was read from.
	Topic string
	// Partition is the topic's partition the entry was read from (0 for a
	// topic of one partition). ID is unique within a partition only.
	Partition int
	// Payload is the sender's payload; the handler may modify it.
	Payload []byte
	// Headers are the sender's headers (nil when none).
	Headers map[string]string
	// Attempt counts deliveries of this entry to the group, starting at 1.
	Attempt int
	// Deadline is when the requester gives up; zero when there is none. The
	// handler's ctx carries it too.
	Deadline time.Time
	// Request is true for requests (the result is sent back), false for events.
	Request bool
	// Sent is when the producer encoded the message.
	Sent time.Time
	// CacheTTL is, for a request on a cached topic, how long its answer will
	// be stored in the shared cache (docs/cache.md); zero otherwise. The
	// handler may lower it, or set it to zero when its answer must not be
	// served again (a non-deterministic or personal answer); raising it has
	// no effect. Errors are never stored.
	CacheTTL time.Duration
}

// Retry control: a handler wraps one of these in its error (fmt.Errorf
// with %w) to say what should happen next; check them with errors.Is.
var (
	// ErrSkipRetry: the message can never succeed; an event goes to the
	// dead-letter stream at once, a request gets the error reply.
	ErrSkipRetry = errors.New("consumer: do not retry")
	// ErrRetryLater: try again later. The entry stays pending and is
	// delivered again after ClaimIdle (up to MaxDeliveries). A request is
	// retried only if its caller's deadline leaves time for that; otherwise
	// the caller gets the error reply at once.
	ErrRetryLater = errors.New("consumer: retry later")
)

// Handler processes messages. For a request, the returned bytes are the
// reply payload and a non-nil error becomes a remote error for the caller
// (return a *bus.RemoteError to choose its code), sent at once unless the
// error wraps ErrRetryLater and the deadline allows a retry. For an event
// the bytes are ignored and an error means a retry after ClaimIdle, up to
// MaxDeliveries, then the dead-letter stream (at once if it wraps
// ErrSkipRetry). Handle is called from Concurrency goroutines at once.
type Handler interface {
	Handle(ctx context.Context, m *Message) ([]byte, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, m *Message) ([]byte, error)

// Handle calls f(ctx, m).
func (f HandlerFunc) Handle(ctx context.Context, m *Message) ([]byte, error) { return f(ctx, m) }

// Middleware wraps a Handler, as net/http middleware wraps an http.Handler.
type Middleware func(Handler) Handler

// Chain wraps h in mw, the first middleware outermost.
func Chain(h Handler, mw ...Middleware) Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}
