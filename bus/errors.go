package bus

import (
	"errors"
	"strconv"
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// The error catalogue: every sentinel error of the bus, in one place and
// with one prefix ("mycelium: "). Check them with errors.Is; the packages
// wrap them with context (which call, which topic). Each says when it
// happens and what a caller should do. Typed errors carrying data
// (RemoteError, NotReplicatedError, codec.DecodeError,
// consumer.RetryAfterError) wrap them or stand beside them; remote error
// codes are the Code constants below.
//
// The ones defined in internal/redisx or codec are defined there because
// those packages sit below this one (they classify Redis's replies and
// decode envelopes); these names are the public ones.

// Calling: what Publish, Request, Stream and their batches return.
var (
	// ErrClosed: the producer or consumer was closed (or, on a Request,
	// closed while it waited). Do not retry on this instance.
	ErrClosed = errors.New("mycelium: closed")
	// ErrTimeout: the caller's deadline passed before a reply arrived. It is
	// returned together with context.DeadlineExceeded. The request may
	// still be handled: make handlers idempotent, or cancel it.
	ErrTimeout = errors.New("mycelium: timeout")
	// ErrPayloadTooLarge: the payload exceeds the producer's MaxPayload (or
	// the consumer's, for a reply or chunk). Nothing was written: split the
	// payload, or raise the limit on both sides.
	ErrPayloadTooLarge = errors.New("mycelium: payload too large")
	// ErrDelayedFull: a delayed publish (After, At) found the topic's
	// delayed set holding the producer's StreamMaxLen entries: nothing was
	// written. Workers move due entries out; a full set means none runs,
	// or the due times are far ahead. Retry later or raise StreamMaxLen.
	ErrDelayedFull = redisx.ErrDelayedFull
	// ErrBreakerOpen: the topic's circuit breaker is open, so the call
	// failed at once without touching Redis. Errors carrying it also match
	// breaker.ErrOpen. Back off; the breaker probes again by itself.
	ErrBreakerOpen = errors.New("mycelium: circuit breaker open")
	// ErrNoResponders: a request went to a topic that no worker serves (no
	// consumer group, or no consumer holding entries or seen recently), so
	// it failed at once instead of waiting out its deadline. Nothing was
	// written. Start a worker, or pass WaitForResponders to queue anyway.
	ErrNoResponders = errors.New("mycelium: no responders")
	// ErrStreamBroken: a streamed reply cannot go on in order: the request
	// was delivered again after the caller read chunks of the first
	// delivery, a chunk is missing (the reply stream was trimmed), or the
	// caller read too slowly and the buffered chunks overflowed. The
	// handler is cancelled. Start the stream again if that is safe.
	ErrStreamBroken = errors.New("mycelium: stream broken")
	// ErrNotReplicated: a write Redis applied, but fewer replicas than the
	// producer's WaitReplicas acknowledged it in time: a failover now may
	// lose it (docs/cluster.md). The error is a *NotReplicatedError saying
	// how many did. Decide whether to write again (it may then be there
	// twice).
	ErrNotReplicated = redisx.ErrNotReplicated
	// ErrBacklogFull: the topic's backlog (entries its workers have not
	// finished) is at the producer's Backpressure.MaxBacklog, and the policy
	// refused the call (Reject), or the call waited for room longer than
	// Backpressure.MaxWait (Block). Nothing was written. The error is a
	// *BacklogError saying how full. Slow down, or add workers.
	ErrBacklogFull = errors.New("mycelium: topic backlog full")
)

// BacklogError is a call refused because its topic's backlog was full:
// Backlog is the producer's estimate of the entries its workers had not
// finished (the stream of the partition written to), Limit the producer's
// Backpressure.MaxBacklog, Waited how long the call waited for room
// (Block). It wraps ErrBacklogFull.
type BacklogError struct {
	Topic   string
	Backlog int64
	Limit   int64
	Waited  time.Duration
}

func (e *BacklogError) Error() string {
	s := "mycelium: topic backlog full: " + e.Topic + " holds about " + strconv.FormatInt(e.Backlog, 10) +
		" unfinished entries (limit " + strconv.FormatInt(e.Limit, 10) + ")"
	if e.Waited > 0 {
		s += ", waited " + e.Waited.Round(time.Millisecond).String()
	}
	return s
}

// Unwrap returns ErrBacklogFull.
func (e *BacklogError) Unwrap() error { return ErrBacklogFull }

// Redis: what any call that reaches Redis may return.
var (
	// ErrUnavailable: Redis could not be reached or did not answer
	// (connection refused or lost, write timeout, or a "not now" reply
	// such as LOADING after a restart): a write may or may not have been
	// applied. Redis's other error replies are not ErrUnavailable. Retry
	// with backoff; the client reconnects by itself.
	ErrUnavailable = redisx.ErrUnavailable
	// ErrPermission: Redis refused a command for good (NOPERM: the ACL user
	// lacks a permission; WRONGPASS, NOAUTH: bad credentials). Retrying
	// cannot help: fix the user (bus-worker acl prints the roles' rules).
	// A consumer's Run returns it instead of retrying forever.
	ErrPermission = redisx.ErrPermission
	// ErrFunctionsNotLoaded: the bus's Redis functions are not loaded on
	// the server and this user may neither load them nor run scripts (the
	// roles of bus-worker acl). The operator loads them: bus-worker
	// functions load. It wraps ErrPermission.
	ErrFunctionsNotLoaded = redisx.ErrFunctionsNotLoaded
	// ErrNoGroup: Redis has no such consumer group (or stream): a worker
	// recreates its group by itself; inspect reports the topic as not
	// served.
	ErrNoGroup = redisx.ErrNoGroup
	// ErrCorruptMeta: a topic's metadata hash holds a value the bus never
	// writes (someone else wrote the key). The topic is not used until an
	// operator repairs or deletes its meta key (bus-worker stats names it).
	ErrCorruptMeta = redisx.ErrCorruptMeta
	// ErrMalformed: bytes read from Redis are not a Mycelium envelope (a
	// *codec.DecodeError says where). Workers dead-letter such entries;
	// producers skip such replies.
	ErrMalformed = codec.ErrMalformed
)

// Handling: what a consumer's handler returns or sees (wrap them in the
// handler's error with fmt.Errorf's %w; check them with errors.Is).
var (
	// ErrRetryLater: try again later. The entry stays pending and is
	// delivered again after ClaimIdle (up to MaxDeliveries);
	// consumer.RetryAfter chooses the delay instead. A request is retried
	// only if its caller's deadline leaves time for that; otherwise the
	// caller gets the error reply at once.
	ErrRetryLater = errors.New("mycelium: retry later")
	// ErrSkipRetry: the message can never succeed; an event goes to the
	// dead-letter stream at once, a request gets the error reply.
	ErrSkipRetry = errors.New("mycelium: do not retry")
	// ErrCallerFault: the message itself is at fault (a downstream
	// answered that the request was bad: an HTTP 4xx but 408 and 429), not
	// the downstream: consumer.BreakerMiddleware does not count it as a
	// failure, so one caller's bad input never opens the breaker for
	// everyone. Wrap it with the error the caller should see
	// (consumer.CallerFault).
	ErrCallerFault = errors.New("mycelium: the message is at fault, not the downstream")
	// ErrCancelled: a handler's ctx ended because its caller cancelled the
	// request (the caller's ctx was cancelled, or its producer closed).
	// errors.Is(context.Cause(ctx), ErrCancelled) tells it apart from a
	// deadline or a shutdown; the ctx's Err matches context.Canceled. Stop
	// the work: nobody reads its answer.
	ErrCancelled = errors.New("mycelium: cancelled by the caller")
	// ErrNotStreaming: Message.Send on a message whose caller does not
	// read a streamed reply (a plain Request, or an event): return the
	// whole answer instead.
	ErrNotStreaming = errors.New("mycelium: the caller does not read a stream")
	// ErrCallerGone: Message.Send found the caller's reply stream gone (the
	// producer closed or died): nobody reads what the handler sends, so
	// stop.
	ErrCallerGone = errors.New("mycelium: the caller is gone")
)

// Lifecycle and configuration.
var (
	// ErrInvalidConfig is wrapped by every configuration validation error
	// (New, Connect, the options): the message says which field and why.
	ErrInvalidConfig = errors.New("mycelium: invalid configuration")
	// ErrRunning: consumer Run called on a consumer that is already running.
	ErrRunning = errors.New("mycelium: consumer already running")
	// ErrNotServing: consumer Ready before Run joined the group (a
	// readiness probe answers "not yet").
	ErrNotServing = errors.New("mycelium: consumer not serving yet")
)

// Operating: what package inspect returns.
var (
	// ErrTopicExists: CreateTopic for a topic whose partition count is
	// already set to another value: change it with SetPartitions.
	ErrTopicExists = errors.New("mycelium: topic already has a partition count")
	// ErrNotFound: a dead letter id that is not there (replayed or deleted
	// already, or trimmed).
	ErrNotFound = errors.New("mycelium: no such dead letter")
	// ErrNotReplayable: a dead letter without a decodable envelope (a
	// malformed entry): replaying it would only dead-letter it again.
	ErrNotReplayable = errors.New("mycelium: dead letter has no decodable envelope")
)

// NotReplicatedError says how many replicas acknowledged a write within
// the producer's WaitTimeout (Want, Got, Timeout). It wraps
// ErrNotReplicated.
type NotReplicatedError = redisx.NotReplicatedError

// Code is a remote error's code: what a handler's error is called on the
// wire (RemoteError.Code). A handler may choose any code; these are the
// bus's own.
type Code string

// The bus's remote error codes.
const (
	CodeHandler     Code = "handler_error" // the handler returned a plain error
	CodePanic       Code = "panic"         // the handler panicked
	CodeBreakerOpen Code = "breaker_open"  // consumer.BreakerMiddleware refused: the downstream's breaker is open (the message says when it probes again)

	// bus-worker's HTTP backends (docs/http-backends.md); a status the
	// backend answered is CodeHTTPStatus(status), "http_<status>".
	CodeHTTPUnreachable      Code = "http_unreachable"        // the POST did not reach the backend (refused, DNS, TLS, timeout)
	CodeHTTPRead             Code = "http_read"               // the backend's response could not be read to its end
	CodeHTTPResponseTooLarge Code = "http_response_too_large" // the response exceeded the worker's MaxPayload
)

// CodeHTTPStatus is the code of an HTTP backend's answer with status
// (outside 2xx): "http_" and the status, e.g. "http_503".
func CodeHTTPStatus(status int) Code {
	return Code("http_" + strconv.Itoa(status))
}

// RemoteError is a handler's error as the requester sees it: the handler's
// code (CodeHandler unless the handler chose one) and message. A handler
// returns one to choose the code; Request returns one when the handler
// failed.
type RemoteError struct {
	Code    Code
	Message string
}

func (e *RemoteError) Error() string {
	return "mycelium: remote error (" + string(e.Code) + "): " + e.Message
}
