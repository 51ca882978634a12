package bus

import (
	"errors"

	"github.com/egos/mycelium/internal/redisx"
)

// Sentinel errors shared by the producer and consumer. Check them with
// errors.Is; the roles wrap them with context.
var (
	// ErrClosed: the producer or consumer was closed.
	ErrClosed = errors.New("mycelium: closed")
	// ErrTimeout: the caller's deadline passed before a reply arrived. It is
	// returned together with context.DeadlineExceeded.
	ErrTimeout = errors.New("mycelium: timeout")
	// ErrPayloadTooLarge: the payload exceeds the configured maximum.
	ErrPayloadTooLarge = errors.New("mycelium: payload too large")
	// ErrBreakerOpen: the topic's circuit breaker is open, so the call failed
	// at once without touching Redis. Errors carrying it also match
	// breaker.ErrOpen.
	ErrBreakerOpen = errors.New("mycelium: circuit breaker open")
	// ErrNoResponders: a request went to a topic that no worker serves (no
	// consumer group, or no consumer holding entries or seen recently), so
	// it failed at once instead of waiting out its deadline. Nothing was
	// written.
	ErrNoResponders = errors.New("mycelium: no responders")
	// ErrUnavailable: Redis could not be reached or did not answer (connection
	// refused or lost, write timeout, or a "not now" reply such as LOADING
	// after a restart): a write may or may not have been applied. Redis's
	// other error replies are not ErrUnavailable.
	ErrUnavailable = redisx.ErrUnavailable
	// ErrNoGroup: Redis has no such consumer group (or stream).
	ErrNoGroup = redisx.ErrNoGroup
	// ErrPermission: Redis refused a command for good (NOPERM: the ACL user
	// lacks a permission; WRONGPASS, NOAUTH: bad credentials). A consumer's
	// Run returns it instead of retrying forever.
	ErrPermission = redisx.ErrPermission
	// ErrNotReplicated: a write Redis applied, but fewer replicas than the
	// producer's WaitReplicas acknowledged it in time: a failover now may
	// lose it (docs/cluster.md). The error is a *NotReplicatedError saying
	// how many did.
	ErrNotReplicated = redisx.ErrNotReplicated
	// ErrStreamBroken: a streamed reply cannot go on in order: the request
	// was delivered again after the caller read chunks of the first
	// delivery, a chunk is missing (the reply stream was trimmed), or the
	// caller read too slowly and the buffered chunks overflowed. The
	// handler is cancelled.
	ErrStreamBroken = errors.New("mycelium: stream broken")
	// ErrInvalidConfig is wrapped by every configuration validation error.
	ErrInvalidConfig = errors.New("invalid configuration")
)

// NotReplicatedError says how many replicas acknowledged a write within
// the producer's WaitTimeout (Want, Got, Timeout). It wraps
// ErrNotReplicated.
type NotReplicatedError = redisx.NotReplicatedError

// Remote error codes set by the consumer.
const (
	CodeHandler = "handler_error" // the handler returned a plain error
	CodePanic   = "panic"         // the handler panicked
)

// RemoteError is a handler's error as the requester sees it: the handler's
// code (CodeHandler unless the handler chose one) and message. A handler
// returns one to choose the code; Request returns one when the handler
// failed.
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string {
	return "mycelium: remote error (" + e.Code + "): " + e.Message
}
