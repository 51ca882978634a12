package consumer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// A Consumer is a composition of components, each a type with its own
// fields and its own file, wired by New and started and stopped by Run in
// a documented order (consumer.go):
//
//	topology    partition watch, drain and forget (topology.go)
//	membership  group join, presence beats, leaving (membership.go)
//	reader      reads new entries, one type for both modes (reader.go)
//	router      turns a read or claimed entry into a job (route.go)
//	processor   the steps around the user's handler (work.go)
//	acker       replies, dead letters, XACKs, batched (acker.go)
//	reclaimer   takes over stopped consumers' entries (reclaim.go)
//	janitor     retention trim, idle consumers (janitor.go)
//	heartbeat   keeps long handlers' entries (heartbeat.go)
//	controller  cancel notices and wake-ups (control.go)
//	delayer     delayed events and retries (delay.go)
//	limiter     the topic's fleet-wide limits: permits before reads (limiter.go)
//
// What they all use is the env: the client, the configuration, the
// logger, the counters and timings, and the one refusal that stops Run.

// env is what every component of a Consumer shares. Its fields are set by
// New and not changed after, but for the counters (atomics) and the fatal
// refusal (under fatalMu).
type env struct {
	c    *bus.Client
	port port // Redis, through redisx.Port (port.go)
	cfg  Config
	log  zerolog.Logger
	keys bus.Keys
	key  string // partition 0's stream: the topic's own

	stats     counters
	inFlight  atomic.Int64 // entries held: read and not yet acknowledged
	timings   metrics.Recorder
	sampled   atomic.Uint64 // entries considered for info-level timing logs
	warns     warnLimiter   // warn lines about entries (see warnEntry)
	slowWarns warnLimiter   // warn lines about slow entries (see logTiming)
	tr        tracing       // OpenTelemetry (trace.go)
	lim       *limiter      // the topic's fleet-wide limits (limiter.go)

	// A refusal for good (bus.ErrPermission) stops Run: fatalErr is the
	// first, stopRun cancels Run's loops (both under fatalMu).
	fatalMu  sync.Mutex
	fatalErr error
	stopRun  context.CancelCauseFunc
}

type counters struct {
	received, handled, failed, replied, replyDropped, acked, expired, deadLettered, panics, groupsCreated atomic.Uint64
	retried, reclaimed, deletedPending, heartbeats, trimmed, consumersRemoved, lagRepaired                atomic.Uint64
	reads, flushes                                                                                        atomic.Uint64
	permitsGranted, permitWaits, permitWaitNanos, pauses                                                  atomic.Uint64
	cacheStores, coalescedReplies, cacheSettleErrors, cacheStale                                          atomic.Uint64
	chunks, cancelled, badControl, delayedRetries, promoted, handedBack                                   atomic.Uint64
	levelReads                                                                                            [maxLevels]atomic.Uint64 // entries read per priority level
}

// maxLevels is bus.MaxPriorities.
const maxLevels = bus.MaxPriorities

// begin clears the refusal of an earlier Run and sets what stops this one.
func (e *env) begin(stopRun context.CancelCauseFunc) {
	e.fatalMu.Lock()
	e.fatalErr, e.stopRun = nil, stopRun
	e.fatalMu.Unlock()
}

// fail stops Run for good when err is a refusal for good (see Run) and
// reports whether it was; doing names the command refused.
func (e *env) fail(err error, doing string) bool {
	if !redisx.IsPermission(err) {
		return false
	}
	err = fmt.Errorf("consumer: %w", redisx.Permission(err, doing))
	e.fatalMu.Lock()
	defer e.fatalMu.Unlock()
	if e.fatalErr == nil {
		e.fatalErr = err
		e.log.Error().Err(err).Msg("Redis refuses a command this worker needs: stopping (grant the permission, or fix the credentials)")
		if e.stopRun != nil {
			e.stopRun(err)
		}
	}
	return true
}

// fatal returns the refusal that stopped Run, if any.
func (e *env) fatal() error {
	e.fatalMu.Lock()
	defer e.fatalMu.Unlock()
	return e.fatalErr
}
