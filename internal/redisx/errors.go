package redisx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/redis/rueidis"
)

// Sentinels that package bus exports under the same names (bus.ErrUnavailable,
// bus.ErrNoGroup): they are defined here, where Redis errors are classified,
// because bus imports this package and not the other way round.
var (
	// ErrUnavailable: Redis could not be reached or did not answer
	// (connection refused or lost, write timeout, or a "not now" reply such
	// as LOADING): a write may or may not have been applied.
	ErrUnavailable = errors.New("mycelium: redis unavailable")
	// ErrNoGroup: Redis has no such consumer group (or stream).
	ErrNoGroup = errors.New("mycelium: consumer group missing")
	// ErrPermission: Redis refused a command for good: the ACL user lacks
	// a permission (NOPERM), or the credentials are wrong (WRONGPASS,
	// NOAUTH). Retrying cannot help.
	ErrPermission = errors.New("mycelium: permission denied by Redis")
)

// IsPermission reports whether err is a refusal for good (see
// ErrPermission).
func IsPermission(err error) bool {
	if errors.Is(err, ErrPermission) {
		return true
	}
	re, ok := redisErr(err)
	if !ok {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "NOPERM") || strings.HasPrefix(msg, "WRONGPASS") || strings.HasPrefix(msg, "NOAUTH")
}

// Permission marks err with ErrPermission (when IsPermission), saying what
// was being done; other errors come back unchanged.
func Permission(err error, doing string) error {
	if err == nil || errors.Is(err, ErrPermission) || !IsPermission(err) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", ErrPermission, doing, err)
}

// Classify marks err with the sentinel a caller branches on:
// ErrUnavailable (see Unavailable) or ErrPermission (see Permission, saying
// what was being done); other errors come back unchanged.
func Classify(err error, doing string) error {
	return Permission(Unavailable(err), doing)
}

// Unavailable marks err with ErrUnavailable when it is a connection-level
// failure rather than a Redis error reply, a nil reply or a caller's ctx
// ending.
//
// Error replies that mean "not now" are unavailability too: LOADING (a
// restarted Redis replaying its append-only file), BUSY (a script running),
// TRYAGAIN, MASTERDOWN and CLUSTERDOWN.
func Unavailable(err error) error {
	if err == nil || IsNil(err) || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotReplicated) || errors.Is(err, ErrCorruptMeta) {
		return err // ours: what Redis holds is wrong, Redis is there
	}
	// A network operation that timed out (dial tcp: i/o timeout) also
	// matches context.DeadlineExceeded; it is an unreachable server, not
	// the caller's deadline.
	var op *net.OpError
	if (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) && !errors.As(err, &op) {
		return err
	}
	if re, ok := redisErr(err); ok && !transient(re) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// redisErr finds Redis's error reply in err's chain (rueidis.IsRedisErr
// looks at err itself only, so a wrapped reply read as a connection
// error). The nil reply is not an error reply.
func redisErr(err error) (*rueidis.RedisError, bool) {
	var re *rueidis.RedisError
	if errors.As(err, &re) && re != nil && !re.IsNil() {
		return re, true
	}
	return nil, false
}

func transient(re *rueidis.RedisError) bool {
	if re.IsLoading() || re.IsTryAgain() || re.IsClusterDown() {
		return true
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "BUSY ") || strings.HasPrefix(msg, "MASTERDOWN")
}

// IsRefused reports whether err is Redis refusing a command for what it is
// (NOPERM, WRONGTYPE, an unknown command or script error): an error reply
// that retrying will not change. A reply that says "not now" is not a
// refusal: LOADING, BUSY, TRYAGAIN, MASTERDOWN, CLUSTERDOWN, and what a
// failover answers a client of the node it demoted (MOVED, ASK, READONLY,
// and UNBLOCKED for a blocked read the role change ended).
func IsRefused(err error) bool {
	re, ok := redisErr(err)
	if !ok || transient(re) {
		return false
	}
	_, moved := re.IsMoved()
	_, ask := re.IsAsk()
	msg := re.Error()
	return !moved && !ask && !strings.HasPrefix(msg, "READONLY") && !strings.HasPrefix(msg, "UNBLOCKED")
}

// IsNil reports whether err is Redis's nil reply (for example XADD
// NOMKSTREAM on a missing stream).
func IsNil(err error) bool {
	var re *rueidis.RedisError
	return errors.As(err, &re) && re != nil && re.IsNil()
}

// isWrongType reports whether err is Redis's WRONGTYPE error (a key holding
// another type than the command's).
func isWrongType(err error) bool {
	re, ok := redisErr(err)
	return ok && strings.HasPrefix(re.Error(), "WRONGTYPE")
}

// IsNoGroup reports whether err is Redis's NOGROUP error.
func IsNoGroup(err error) bool {
	re, ok := redisErr(err)
	return ok && strings.HasPrefix(re.Error(), "NOGROUP")
}

// IsRedisReply reports whether err is an error reply from Redis (as opposed
// to a connection, timeout or client-side error, or a nil reply).
func IsRedisReply(err error) bool {
	_, ok := redisErr(err) // false for the nil reply
	return ok
}

// IsConnErr reports whether err is neither nil, nor a Redis reply (error or
// nil), nor a write that replicas did not acknowledge (ErrNotReplicated):
// the command may not have reached Redis, or its reply was lost.
func IsConnErr(err error) bool {
	return err != nil && !IsRedisReply(err) && !IsNil(err) && !errors.Is(err, ErrNotReplicated) && !errors.Is(err, ErrCorruptMeta)
}

// groupErr returns err of a command on group at key, wrapped in ErrNoGroup
// when it is Redis's NOGROUP reply (so callers can recreate the group).
func groupErr(err error, key, group string) error {
	if IsNoGroup(err) {
		return fmt.Errorf("%w: %s on %s: %w", ErrNoGroup, group, key, err)
	}
	return err
}

// isNoSuchKey matches XINFO's missing-stream error: "ERR no such key" on
// Redis, "no such key" on miniredis.
func isNoSuchKey(err error) bool {
	re, ok := redisErr(err)
	return ok && strings.HasPrefix(strings.TrimPrefix(re.Error(), "ERR "), "no such key")
}
