package bus

import (
	"context"
	"errors"
	"fmt"
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
	// ErrUnavailable: Redis could not be reached or did not answer (connection
	// refused or lost, write timeout): the write may or may not have been
	// applied. Redis's own error replies are not ErrUnavailable.
	ErrUnavailable = errors.New("mycelium: redis unavailable")
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

// Unavailable marks err with ErrUnavailable when it is a connection-level
// failure rather than a Redis error reply or a caller's ctx ending.
//
// Error replies that mean "not now" are unavailability too: LOADING (a
// restarted Redis replaying its append-only file), BUSY (a script running),
// TRYAGAIN, MASTERDOWN and CLUSTERDOWN.
func Unavailable(err error) error {
	if err == nil || rueidis.IsRedisNil(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if re, ok := rueidis.IsRedisErr(err); ok && !transient(re) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func transient(re *rueidis.RedisError) bool {
	if re.IsLoading() || re.IsTryAgain() || re.IsClusterDown() {
		return true
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "BUSY ") || strings.HasPrefix(msg, "MASTERDOWN")
}

// IsNoGroup reports whether err is Redis's NOGROUP error.
func IsNoGroup(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(re.Error(), "NOGROUP")
}

// groupErr returns err of a command on group at key, wrapped in ErrNoGroup
// when it is Redis's NOGROUP reply (so callers can recreate the group).
func groupErr(err error, key, group string) error {
	if IsNoGroup(err) {
		return fmt.Errorf("%w: %s on %s: %w", ErrNoGroup, group, key, err)
	}
	return err
}

// IsBusyGroup reports whether err is Redis's BUSYGROUP error (group exists).
func IsBusyGroup(err error) bool { return rueidis.IsRedisBusyGroup(err) }

// IsRedisReply reports whether err is an error reply from Redis (as opposed
// to a connection, timeout or client-side error).
func IsRedisReply(err error) bool {
	_, ok := rueidis.IsRedisErr(err)
	return ok
}
