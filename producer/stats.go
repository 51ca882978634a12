package producer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/egos/mycelium/bus"
)

// counters are the producer's statistics, shared by its components (each
// adds to its own); Stats reads them.
type counters struct {
	published, requests, replies, late, timeouts, remoteErrors, malformed atomic.Uint64
	writeErrors, breakerRejected, noResponders                            atomic.Uint64
	writes, replyReads                                                    atomic.Uint64
	hitsLocal, hitsShared, cacheMisses, coalescedLocal, coalescedRemote   atomic.Uint64
	cacheCorrupt, takeovers, localEvicted                                 atomic.Uint64
	forged                                                                atomic.Uint64
	cancelled, cancelErrors, streams, chunks, streamsBroken, delayed      atomic.Uint64
	duplicates                                                            atomic.Uint64
	backlogWaits, backlogFull, backlogDropped                             atomic.Uint64
}

// Stats is a snapshot of a Producer's counters. Each field's help tag
// describes it (and is its Prometheus help text); its json tag names it in
// /stats, bus-bench and /metrics (mycelium_producer_<name>[_total]).
//
// Batching: (Published+Requests)/Writes entries go per write and
// Replies/ReplyReads replies come per read. Few per batch under load means a
// round trip, a write and thread wake-ups spent on each.
type Stats struct {
	Published       uint64 `json:"published" help:"Events accepted by Redis."`
	Requests        uint64 `json:"requests" help:"Requests accepted by Redis."`
	Replies         uint64 `json:"replies" help:"Replies delivered to a waiting caller."`
	Late            uint64 `json:"late" help:"Replies dropped because no caller waited any more."`
	Timeouts        uint64 `json:"timeouts" help:"Requests that ended with a timeout (bus.ErrTimeout)."`
	RemoteErrors    uint64 `json:"remote_errors" help:"Replies carrying a handler error."`
	Malformed       uint64 `json:"malformed" help:"Undecodable entries on the reply stream (skipped)."`
	InFlight        int    `json:"in_flight" help:"Requests waiting for a reply now."`
	WriteErrors     uint64 `json:"write_errors" help:"Writes that failed: Redis refused them or did not answer (bus.ErrUnavailable)."`
	BreakerRejected uint64 `json:"breaker_rejected" help:"Calls refused at once by an open circuit breaker (bus.ErrBreakerOpen)."`
	NoResponders    uint64 `json:"no_responders" help:"Requests refused at once because no worker served their topic (bus.ErrNoResponders)."`
	Writes          uint64 `json:"writes" help:"Pipelined XADD writes, each one round trip ((published + requests) / writes = entries per write)."`
	ReplyReads      uint64 `json:"reply_reads" help:"Reply-stream reads that returned entries (replies / reply_reads = replies per read)."`
	Forged          uint64 `json:"forged" help:"Replies dropped because they answered a request entry this producer did not write with that correlation id (someone else wrote it)."`
	Cancelled       uint64 `json:"cancelled" help:"Cancel notices sent for requests their callers gave up (ctx cancelled, stream closed early, or abandoned by Close)."`
	CancelErrors    uint64 `json:"cancel_errors" help:"Cancel notices Redis did not take (those handlers run until their deadline)."`
	Streams         uint64 `json:"streams" help:"Streamed requests written (Stream)."`
	Chunks          uint64 `json:"chunks" help:"Chunks of streamed replies handed to callers."`
	StreamsBroken   uint64 `json:"streams_broken" help:"Streams that ended with bus.ErrStreamBroken (a redelivery after chunks were read, a missing chunk, or a caller reading too slowly)."`
	Delayed         uint64 `json:"delayed" help:"Events published with a delay (After, At), held until due."`
	Duplicates      uint64 `json:"duplicates" help:"Idempotent publishes (IdempotencyKey) that found an earlier one within the topic's window: nothing written, the first id returned."`
	BacklogWaits    uint64 `json:"backlog_waits" help:"Writes that waited for room in their topic's backlog (Backpressure Block)."`
	BacklogFull     uint64 `json:"backlog_full" help:"Writes refused because their topic's backlog was full (bus.ErrBacklogFull: Reject, or Block past its wait)."`
	BacklogDropped  uint64 `json:"backlog_dropped" help:"Entries estimated trimmed before any worker finished them (Backpressure DropOldest: writes past StreamMaxLen)."`

	// Response cache (cached topics only).
	CacheHitsLocal    uint64 `json:"cache_hits_local" help:"Cached requests answered from this process's memory (the local tier)."`
	CacheHitsShared   uint64 `json:"cache_hits_shared" help:"Cached requests answered from Redis (the shared tier)."`
	CacheMisses       uint64 `json:"cache_misses" help:"Cached requests written for a worker to answer (no stored answer, none in flight)."`
	CoalescedLocal    uint64 `json:"coalesced_local" help:"Cached requests that waited for an identical request of this process already in flight."`
	CoalescedRemote   uint64 `json:"coalesced_remote" help:"Cached requests that joined an identical request of another producer in flight (one handler call answers both)."`
	CacheTakeovers    uint64 `json:"cache_takeovers" help:"Joined requests asked again because the request they waited for gave up (its deadline passed)."`
	CacheCorrupt      uint64 `json:"cache_corrupt" help:"Stored answers that could not be decoded: deleted and treated as misses."`
	CacheEvictions    uint64 `json:"cache_evictions" help:"Answers evicted from the local tier to stay within LocalCacheBytes."`
	CacheLocalBytes   int64  `json:"cache_local_bytes" help:"Bytes held by the local tier now (payloads and bookkeeping)."`
	CacheLocalEntries int    `json:"cache_local_entries" help:"Answers held by the local tier now."`
}

// ctxErr is the error of a request that gave up for err (its ctx's error,
// or context.DeadlineExceeded when Config.RequestTimeout passed), counting
// a timeout.
func (c *counters) ctxErr(err error, during string) error {
	if errors.Is(err, context.DeadlineExceeded) {
		c.timeouts.Add(1)
		return fmt.Errorf("producer: %w %s: %w", bus.ErrTimeout, during, err)
	}
	return fmt.Errorf("producer: request cancelled %s: %w", during, err)
}

// answer counts a request's result r (a reply, a remote error; a failed
// write is counted by the sender) and returns it as the caller gets it.
func (c *counters) answer(r *result) ([]byte, error) {
	if r.err != nil {
		if !r.writeErr {
			c.remoteErrors.Add(1)
		}
		return nil, r.err
	}
	c.replies.Add(1)
	return r.payload, nil
}
