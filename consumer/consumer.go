package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Consumer runs a Handler over one topic as a member of a consumer group.
// Create it with New and start it with Run. It is a composition of
// components (see env.go for the list), wired here.
type Consumer struct {
	e       *env
	running atomic.Bool

	topo    *topology
	members *membership
	route   *router
	read    *reader
	proc    *processor
	reclaim *reclaimer
	jan     *janitor
	beat    *heartbeat
	control *controller
	delay   *delayer
	cancels cancelSet // requests their callers cancelled (control.go)
	// share, when this consumer serves one topic of a Router, is the
	// handler slots the Router's topics share (topic shareIdx of them);
	// nil on its own.
	share    *share
	shareIdx int
}

// Stats is a snapshot of a Consumer's counters. Each field's help tag
// describes it (and is its Prometheus help text); its json tag names it in
// /stats, bus-bench and /metrics (mycelium_consumer_<name>[_total]).
//
// Batching: Received/Reads entries come per read, Acked/Flushes per write of
// replies and acknowledgements. Few per batch under load means a round trip,
// a write and thread wake-ups spent on each.
type Stats struct {
	Received          uint64  `json:"received" help:"Entries read from the stream (new and reclaimed)."`
	Handled           uint64  `json:"handled" help:"Handler calls that returned."`
	Failed            uint64  `json:"failed" help:"Handler calls that returned an error or panicked."`
	Replied           uint64  `json:"replied" help:"Replies written to a live reply stream."`
	ReplyDropped      uint64  `json:"reply_dropped" help:"Replies not written because the requester's reply stream is gone."`
	Acked             uint64  `json:"acked" help:"Entries acknowledged."`
	Expired           uint64  `json:"expired" help:"Requests acknowledged unprocessed because their caller's deadline had passed on arrival."`
	DeadLettered      uint64  `json:"dead_lettered" help:"Entries moved to the dead-letter stream."`
	Panics            uint64  `json:"panics" help:"Handler panics recovered."`
	GroupsCreated     uint64  `json:"groups_created" help:"Times the consumer group was created or recreated."`
	Retried           uint64  `json:"retried" help:"Failed entries left pending for another delivery."`
	Reclaimed         uint64  `json:"reclaimed" help:"Entries taken over after ClaimIdle (from dead or slow consumers, or retries)."`
	DeletedPending    uint64  `json:"deleted_pending" help:"Pending entries trimmed from the stream before they were handled (reported by XAUTOCLAIM)."`
	Heartbeats        uint64  `json:"heartbeats" help:"Idle-time resets of long-running entries."`
	Trimmed           uint64  `json:"trimmed" help:"Entries removed by the consumer's retention."`
	LagRepaired       uint64  `json:"lag_repaired" help:"Times the group's lag was put right after entries had been trimmed before it read them (Redis 7 overcounts it; producers' backpressure reads it)."`
	ConsumersRemoved  uint64  `json:"consumers_removed" help:"Idle consumers without pending entries removed from the group."`
	HandedBack        uint64  `json:"handed_back" help:"Entries read and never handled (a read in flight at stop, entries left without a slot, handlers the shutdown timeout cancelled) made due at once for any worker as the consumer stopped."`
	InFlight          int64   `json:"in_flight" help:"Entries held now: read and not yet acknowledged."`
	Reads             uint64  `json:"reads" help:"XREADGROUP calls that returned entries (received / reads = entries per read)."`
	Flushes           uint64  `json:"flushes" help:"Pipelined writes of replies and acknowledgements (acked / flushes = entries per write)."`
	CacheStores       uint64  `json:"cache_stores" help:"Answers stored in the shared cache."`
	CoalescedReplies  uint64  `json:"coalesced_replies" help:"Replies written to requests that joined an identical request in flight (one handler call, several callers)."`
	CacheErrors       uint64  `json:"cache_errors" help:"Answers whose storing or coalesced delivery Redis refused (their callers ask again once the request's deadline passed)."`
	CacheStale        uint64  `json:"cache_stale" help:"Answers deleted right after storing: their request named another cache generation than the topic's (a flush raced it, or a request planting an answer for a generation to come)."`
	Chunks            uint64  `json:"chunks" help:"Chunks of streamed replies written."`
	Cancelled         uint64  `json:"cancelled" help:"Requests their callers cancelled: handlers cancelled while running, and requests acknowledged unhandled at pick-up."`
	DelayedRetries    uint64  `json:"delayed_retries" help:"Entries left pending for a delayed retry (RetryAfter)."`
	Waiting           int     `json:"waiting" help:"Delayed retries this consumer holds now, waiting for their due time."`
	Promoted          uint64  `json:"promoted" help:"Delayed events this consumer moved to their stream when due."`
	ControlMalformed  uint64  `json:"control_malformed" help:"Malformed notices skipped on the topic's control stream."`
	PermitsGranted    uint64  `json:"permits_granted" help:"Permits granted by the topic's fleet-wide limits (one per entry read while a limit is set)."`
	PermitWaits       uint64  `json:"permit_waits" help:"Times a read waited for permits: a limit (rate, tokens, concurrency) held, or the topic was paused."`
	PermitWaitSeconds float64 `json:"permit_wait_seconds" help:"Seconds spent waiting for permits (summed over the reader and the reclaimers)."`
	Pauses            uint64  `json:"pauses" help:"Times a handler paused the topic for the fleet (PauseTopic, or RetryAfter with Retry.PauseOnRetryAfter)."`
	// ReadsByLevel counts the entries read per priority level (level 0
	// first), on a topic with priority levels (docs/scheduling.md).
	ReadsByLevel []uint64 `json:"reads_by_level,omitempty" help:"Entries read, by priority level (a topic with priority levels; level 0 the most urgent)." label:"level"`
}

// Option configures optional collaborators of a Consumer.
type Option func(*Consumer)

// WithLogger sets the logger (default: none).
func WithLogger(l zerolog.Logger) Option { return func(c *Consumer) { c.e.log = l } }

// New returns a Consumer of cfg.Topic, under c's key prefix, running h. It
// neither dials nor starts goroutines. The caller keeps ownership of c and
// closes it after Run returned.
func New(c *bus.Client, cfg Config, h Handler, opts ...Option) (*Consumer, error) {
	if c == nil || h == nil {
		return nil, fmt.Errorf("consumer: %w: nil client or handler", bus.ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("consumer: random name: %w", err)
	}
	cfg = cfg.withDefaults(hex.EncodeToString(rnd[:]))
	keys := c.Keys()
	e := &env{c: c, port: redisx.PortOf(c), cfg: cfg, log: zerolog.Nop(), keys: keys, key: keys.Topic(cfg.Topic)}
	e.tr = newTracing(&e.cfg)
	e.lim = newLimiter(e)
	co := &Consumer{e: e}
	co.topo = newTopology(e)
	co.members = &membership{env: e, presence: keys.Workers(cfg.Topic), member: cfg.Group + " " + cfg.Name}
	co.route = &router{env: e, cancels: &co.cancels}
	co.read = &reader{env: e, topo: co.topo, members: co.members, route: co.route}
	co.delay = &delayer{env: e, topo: co.topo, route: co.route}
	co.proc = &processor{env: e, h: h, cancels: &co.cancels, delay: co.delay}
	co.jan = &janitor{env: e}
	co.reclaim = &reclaimer{env: e, route: co.route, jan: co.jan, waiting: &co.delay.waiting}
	co.beat = &heartbeat{env: e, waiting: &co.delay.waiting}
	co.control = &controller{env: e, cancels: &co.cancels}
	for _, o := range opts {
		o(co)
	}
	return co, nil
}

// Name returns the consumer's name in its group.
func (c *Consumer) Name() string { return c.e.cfg.Name }

// Config returns the effective configuration (defaults applied).
func (c *Consumer) Config() Config { return c.e.cfg }

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (c *Consumer) Stats() Stats {
	s := &c.e.stats
	var byLevel []uint64
	if levels, _, _ := c.topo.sched(); levels > 1 {
		byLevel = make([]uint64, levels)
		for l := range byLevel {
			byLevel[l] = s.levelReads[l].Load()
		}
	}
	return Stats{
		Received: s.received.Load(), Handled: s.handled.Load(), Failed: s.failed.Load(),
		Replied: s.replied.Load(), ReplyDropped: s.replyDropped.Load(), Acked: s.acked.Load(),
		Expired: s.expired.Load(), DeadLettered: s.deadLettered.Load(), Panics: s.panics.Load(),
		GroupsCreated: s.groupsCreated.Load(), InFlight: c.e.inFlight.Load(),
		Retried: s.retried.Load(), Reclaimed: s.reclaimed.Load(), DeletedPending: s.deletedPending.Load(),
		Heartbeats: s.heartbeats.Load(), Trimmed: s.trimmed.Load(), LagRepaired: s.lagRepaired.Load(), ConsumersRemoved: s.consumersRemoved.Load(), HandedBack: s.handedBack.Load(),
		Reads: s.reads.Load(), Flushes: s.flushes.Load(),
		CacheStores: s.cacheStores.Load(), CoalescedReplies: s.coalescedReplies.Load(), CacheErrors: s.cacheSettleErrors.Load(), CacheStale: s.cacheStale.Load(),
		Chunks: s.chunks.Load(), Cancelled: s.cancelled.Load(), DelayedRetries: s.delayedRetries.Load(), Waiting: c.delay.waiting.len(),
		Promoted: s.promoted.Load(), ControlMalformed: s.badControl.Load(),
		PermitsGranted: s.permitsGranted.Load(), PermitWaits: s.permitWaits.Load(), PermitWaitSeconds: float64(s.permitWaitNanos.Load()) / 1e9, Pauses: s.pauses.Load(),
		ReadsByLevel: byLevel,
	}
}

// Timings returns a snapshot of the stages this consumer recorded (see
// package metrics): QueueWait (or RetryWait) and Handler for every handled
// entry, ReplyWrite for every reply written. Safe for concurrent use.
func (c *Consumer) Timings() *metrics.Snapshot { return c.e.timings.Snapshot() }

// Serving returns a channel that Run closes once the consumer has joined its
// group and announced itself, so that producers find a worker for the topic
// (a Request sent before then may fail with bus.ErrNoResponders), or when
// Run returns without having joined. It never closes if Run is never
// called.
func (c *Consumer) Serving() <-chan struct{} { return c.topo.serving }

// Ready reports whether the consumer serves (see Serving), Redis answers and
// the group exists. Use it for readiness probes.
func (c *Consumer) Ready(ctx context.Context) error {
	if err := c.e.fatal(); err != nil {
		return err
	}
	select {
	case <-c.topo.serving:
	default:
		return bus.ErrNotServing
	}
	for _, key := range c.topo.streams() {
		ok, err := c.e.port.GroupExists(ctx, key, c.e.cfg.Group)
		if err != nil {
			return fmt.Errorf("consumer: redis: %w", err)
		}
		if !ok {
			return fmt.Errorf("consumer: %w: %s on %s", bus.ErrNoGroup, c.e.cfg.Group, key)
		}
	}
	return nil
}

// Run consumes until ctx is done, then shuts down in the documented order
// and returns nil. Redis outages are retried with backoff, not returned. It
// returns an error when the consumer is already running, and, after the
// same orderly shutdown, when Redis refuses one of its commands for good
// (an error wrapping bus.ErrPermission, naming the command: an ACL user
// without a permission it needs, or wrong credentials): retrying would only
// repeat the work it cannot finish (an entry it cannot acknowledge would be
// handled and dead-lettered again and again).
//
// It starts, in this order: the workers (Concurrency goroutines running the
// processor) and the acker; the heartbeat; membership's presence beats,
// the controller and the delayer; then, once the controller caught up with
// the cancel notices, the topology, which starts a reclaimer per partition
// and the reader (one multi-stream read on a single server, one read per
// partition on a cluster). When ctx ends it stops them in reverse: the
// reader, reclaimers, topology, delayer, controller and presence first (no
// entry is read or claimed after), then it waits up to ShutdownTimeout for
// the workers and the acker's last flush (after that it cancels handlers
// and flushes: their entries stay pending), stops the heartbeat, and leaves
// the group.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return bus.ErrRunning
	}
	defer c.running.Store(false)
	ctx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	c.e.begin(stopRun)
	defer c.topo.serve() // never left open once Run returned

	w := c.startWorkers(ctx)
	defer w.cancel()
	hbctx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHeartbeat()
	heartbeatDone := make(chan struct{})
	go func() {
		defer close(heartbeatDone)
		c.beat.run(hbctx, w.running, w.pipe.q) // outlives ctx until the workers are done
	}()
	defer func() { stopHeartbeat(); <-heartbeatDone }()
	limiterDone := make(chan struct{})
	go func() {
		defer close(limiterDone)
		c.e.lim.run(hbctx) // gives back leases once the workers are done
	}()
	defer func() { stopHeartbeat(); <-limiterDone }()

	var loops sync.WaitGroup
	wake := make(chan int64, 64)
	caughtUp := make(chan struct{})
	loops.Go(func() { c.members.run(ctx) })
	loops.Go(func() { c.control.run(ctx, wake, caughtUp) })
	loops.Go(func() { c.delay.run(ctx, wake, w.pipe) })
	select { // requests cancelled before this worker started are skipped
	case <-caughtUp:
	case <-ctx.Done():
	}
	c.readAndReclaim(ctx, w.pipe) // returns once every reader and reclaimer did
	loops.Wait()                  // no more sends on jobs

	w.stop(c.e)
	c.delay.handBack(ctx, c.topo.current())
	c.members.leave(context.WithoutCancel(ctx), c.topo.streams())
	c.topo.parts.Store(nil)
	return c.e.fatal()
}

// readAndReclaim runs the topology until ctx ends: a reclaimer for every
// partition, and the reader (one loop over every partition on a single
// server, one per partition on a cluster).
func (c *Consumer) readAndReclaim(ctx context.Context, p *pipe) {
	perPartition := c.e.c.Mode() == "cluster"
	var all sync.WaitGroup
	if !perPartition {
		all.Go(func() { c.read.readAll(ctx, p, -1) })
	}
	c.topo.run(ctx, func(pctx context.Context, pt *part) {
		var rw sync.WaitGroup
		rw.Go(func() { c.reclaim.run(pctx, pt, p) })
		if perPartition && pt.level == 0 { // a partition's levels are read by its level 0's loop
			c.read.readPartition(pctx, pt, p)
		}
		rw.Wait()
	})
	all.Wait()
}

// workers are one Run's handler goroutines, their pipe and the acker.
type workers struct {
	pipe    *pipe
	running []workerSlot // one per worker, for the heartbeat and the controller
	wg      sync.WaitGroup
	cancel  func() // cancels the handlers' contexts and the acker's flushes
	handler context.CancelFunc
	acker   context.CancelFunc
}

// startWorkers starts Concurrency workers. Handlers get contexts that
// survive ctx for the grace period; the acker outlives ctx to flush what
// the handlers finished.
func (c *Consumer) startWorkers(ctx context.Context) *workers {
	n := c.e.cfg.Concurrency
	held := c.e.cfg.held()
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	hvals := context.WithoutCancel(hctx) // values for handler contexts (see deadlineCtx)
	actx, cancelAcker := context.WithCancel(context.WithoutCancel(ctx))
	slots := newSlotPool(held)
	w := &workers{
		pipe:    &pipe{slots: slots, jobs: make(chan *job, held), a: newAcker(actx, c.e, slots), q: newQueuedSet(c.e.cfg.Prefetch)},
		running: make([]workerSlot, n),
		handler: cancelHandlers, acker: cancelAcker,
	}
	w.cancel = func() { cancelHandlers(); cancelAcker() }
	for i := range n {
		w.wg.Go(func() {
			for j := range w.pipe.jobs {
				// Not started when the shutdown timeout has passed (its
				// handler would start with its ctx done), nor, read ahead,
				// once Run's ctx ended: left pending for handBack, which
				// hands it to the group's next reader uncounted.
				if hctx.Err() != nil || (w.pipe.q != nil && ctx.Err() != nil) {
					w.pipe.q.remove(j)
					c.e.lim.charge(-j.msg.estimate)
					c.proc.release(j, w.pipe)
					continue
				}
				if w.pipe.q != nil && !c.pickUp(j, w.pipe) {
					continue
				}
				if !c.admit(hctx, j, &w.running[i], w.pipe) {
					continue
				}
				c.proc.work(hctx, hvals, j, w.pipe, &w.running[i])
				c.share.release()
			}
		})
	}
	return w
}

// pickUp takes j, read ahead (Prefetch), off the queued set; it reports
// false, having dealt with j, when j is not to run any more: its caller
// gave up while it waited (deadline passed or cancelled: acknowledged
// unhandled, as on arrival).
func (c *Consumer) pickUp(j *job, p *pipe) bool {
	p.q.remove(j)
	if c.route.skip(j.p, j.msg.ID, &j.env, time.Now(), p.a) {
		c.e.lim.charge(-j.msg.estimate) // charged as it was routed; no handler runs
		putJob(j)
		return false
	}
	return true
}

// admit waits for a slot of the Router's share (at once on its own) for
// j, which its worker slot shows meanwhile: the heartbeat keeps a waiting
// entry's claim fresh, as a running one's. It reports false, having dealt
// with j, when j is not to run: hctx ended first (j stays pending), or its
// caller gave up while it waited (deadline passed or cancelled: j is
// acknowledged unhandled, as on arrival).
func (c *Consumer) admit(hctx context.Context, j *job, slot *workerSlot, p *pipe) bool {
	if c.share == nil {
		return true
	}
	slot.set(j.p, j.msg.ID, j.readAt)
	if !c.share.acquire(hctx, c.shareIdx) {
		slot.clear()
		c.proc.release(j, p)
		return false
	}
	if c.route.skip(j.p, j.msg.ID, &j.env, time.Now(), p.a) {
		slot.clear()
		c.share.release()
		c.e.lim.charge(-j.msg.estimate) // charged as it was routed; no handler runs
		putJob(j)
		return false
	}
	return true
}

// stop closes the job queue (reading stopped) and lets the workers finish
// (and the acker flush) within the grace period; then it cancels the
// handlers and any flush still retrying, and waits for them.
func (w *workers) stop(e *env) {
	close(w.pipe.jobs)
	finished := make(chan struct{})
	go func() {
		w.wg.Wait()
		w.pipe.a.wait()
		close(finished)
	}()
	grace := time.NewTimer(e.cfg.ShutdownTimeout)
	defer grace.Stop()
	select {
	case <-finished:
	case <-grace.C:
		e.log.Warn().Int64("in_flight", e.inFlight.Load()).Msg("shutdown timeout: cancelling handlers and flushes; their entries stay pending")
		w.handler()
		w.acker()
		<-finished
	}
}
