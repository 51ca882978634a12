package bus

import (
	"errors"
	"strings"

	"github.com/redis/rueidis"
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
	// ErrNoGroup: Redis has no such consumer group (or stream).
	ErrNoGroup = errors.New("mycelium: consumer group missing")
)

// Remote error codes set by the consumer.
const (
	CodeHandler = "handler_error" // the handler returned a plain error
	CodePanic   = "panic"         // the handler panicked
)

// RemoteError is a handler's error as the requester sees it: the handler's
// code (CodeHandler unless the handler chose one) and message.
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string {
	return "mycelium: remote error (" + e.Code + "): " + e.Message
}

// IsNoGroup reports whether err is Redis's NOGROUP error.
func IsNoGroup(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(re.Error(), "NOGROUP")
}

// IsBusyGroup reports whether err is Redis's BUSYGROUP error (group exists).
func IsBusyGroup(err error) bool { return rueidis.IsRedisBusyGroup(err) }

// IsRedisReply reports whether err is an error reply from Redis (as opposed
// to a connection, timeout or client-side error).
func IsRedisReply(err error) bool {
	_, ok := rueidis.IsRedisErr(err)
	return ok
}
