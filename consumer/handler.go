package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/egos/mycelium/bus"
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

	// stream writes chunks (Send) when the caller reads a streamed reply.
	stream *chunkStream
	// cost is the message's cost in tokens: the caller's estimate
	// (CostHeader), then what the handler reported (ReportCost);
	// estimate is what was charged when it started.
	cost, estimate int64
}

// ReportCost reports what handling the message actually cost, in the units
// of its topic's token budget (docs/flow-control.md): a model's tokens, say.
// The budget was charged the caller's estimate (the CostHeader header, 0
// without it) when the handler started; it is corrected by the difference
// when the handler returns. Negative costs count as 0. Not safe for
// concurrent use with itself.
func (m *Message) ReportCost(n int64) { m.cost = max(n, 0) }

// Cost returns the message's cost: what the handler reported, else the
// caller's estimate.
func (m *Message) Cost() int64 { return m.cost }

// Streaming reports whether the caller reads this request's reply as a
// stream (producer.Stream): Send then delivers chunks as they are made.
func (m *Message) Streaming() bool { return m.stream != nil }

// Send sends one chunk of a streamed reply to the caller, before the
// handler returns its final reply (which, when not empty, is the last
// chunk the caller gets). It returns once Redis stored the chunk (chunks
// of concurrent handlers share round trips), so chunks reach the caller in
// the order sent. Safe for concurrent use, but chunks sent at once by two
// goroutines go in no particular order.
//
// Errors: bus.ErrNotStreaming when the caller does not read a stream (reply
// with the whole answer instead), bus.ErrCallerGone when the caller's reply
// stream is gone (it closed), bus.ErrPayloadTooLarge for a chunk over
// MaxEntrySize, ctx's error, or Redis's. After an error, or once the
// handler returned, every Send fails.
func (m *Message) Send(ctx context.Context, chunk []byte) error {
	if m.stream == nil {
		return bus.ErrNotStreaming
	}
	return m.stream.send(ctx, chunk)
}

// RetryAfter wraps err to ask for the message to be delivered again after
// at least d (a backend's Retry-After, for example), counted toward
// MaxDeliveries. The delay grows with the attempts (Config.Retry.Backoff
// doubled per delivery, up to Config.Retry.BackoffMax: the larger of that
// and d applies) plus up to a tenth more of jitter. The entry stays pending
// meanwhile, so a worker that dies does not lose it: whoever reclaims it
// waits for the same due time. A request is retried only if its caller's
// deadline leaves time for the delay; otherwise the caller gets err now.
// On the last delivery an event goes to the dead-letter stream and a
// request gets err.
func RetryAfter(err error, d time.Duration) error {
	return &RetryAfterError{Err: err, Delay: max(d, 0)}
}

// PauseTopic is RetryAfter that also pauses the message's topic for every
// worker of the fleet for d (a provider's 429 with Retry-After: the whole
// fleet is over the quota, not this message): no worker starts a handler
// on the topic until then (running handlers finish; entries wait in the
// stream; a longer pause in place is kept). The message is retried after
// d as with RetryAfter. Config.Retry.PauseOnRetryAfter does this for every
// RetryAfter. docs/flow-control.md.
func PauseTopic(err error, d time.Duration) error {
	return &RetryAfterError{Err: err, Delay: max(d, 0), Pause: true}
}

// RetryAfterError is the error RetryAfter and PauseTopic return: Err,
// retried after Delay; Pause: the topic is paused for Delay too. Find it
// with errors.As.
type RetryAfterError struct {
	Err   error
	Delay time.Duration
	Pause bool
}

func (e *RetryAfterError) Error() string {
	if e.Err == nil {
		return "retry after " + e.Delay.String()
	}
	return e.Err.Error() + " (retry after " + e.Delay.String() + ")"
}

// Unwrap returns Err.
func (e *RetryAfterError) Unwrap() error { return e.Err }

// CallerFault marks err as the message's fault (bus.ErrCallerFault), keeping
// err (and the *bus.RemoteError in it, which the caller gets) in the chain.
func CallerFault(err error) error { return fmt.Errorf("%w: %w", bus.ErrCallerFault, err) }

// Handler processes messages. For a request, the returned bytes are the
// reply payload and a non-nil error becomes a remote error for the caller
// (return a *bus.RemoteError to choose its code), sent at once unless the
// error wraps bus.ErrRetryLater and the deadline allows a retry. For an event
// the bytes are ignored and an error means a retry after ClaimIdle, up to
// MaxDeliveries, then the dead-letter stream (at once if it wraps
// bus.ErrSkipRetry). Handle is called from Concurrency goroutines at once.
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
