package consumer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Consumer runs a Handler over one topic as a member of a consumer group.
// Create it with New and start it with Run.
type Consumer struct {
	c        *bus.Client
	cfg      Config
	h        Handler
	log      zerolog.Logger
	keys     bus.Keys
	key      string // partition 0's stream: the topic's own
	replyCap redisx.Cap
	dlqCap   redisx.Cap
	// oneServer: the client reaches one server (not a cluster), so a
	// flush's replies and their requests' XACKs can share a transaction.
	oneServer bool
	presence  string // the topic's presence set (bus.Keys.Workers)
	member    string // this consumer in it: "<group> <name>"
	serving   chan struct{}
	served    sync.Once   // closes serving
	joined    atomic.Bool // createGroup joined since Run began: leave at the end
	running   atomic.Bool
	stats     counters
	inFlight  atomic.Int64
	timings   metrics.Recorder
	sampled   atomic.Uint64 // entries considered for info-level timing logs
	warns     warnLimiter   // warn lines about entries (see warnEntry)

	// A refusal for good (bus.ErrPermission) stops Run: fatalErr is the
	// first, stopRun cancels Run's loops (both under fatalMu).
	fatalMu  sync.Mutex
	fatalErr error
	stopRun  context.CancelCauseFunc

	// parts are the partitions read now (see partition.go); joins counts
	// the first partitions still to join before Serving closes.
	parts atomic.Pointer[[]*part]
	joins atomic.Int32

	cancels cancelSet  // requests their callers cancelled (control.go)
	loan    slotLoan   // the slots a blocked read lends to claimed entries (loan.go)
	waiting waitingSet // delayed retries this consumer owns (delay.go)
	tr      tracing    // OpenTelemetry (trace.go)
}

type counters struct {
	received, handled, failed, replied, replyDropped, acked, expired, deadLettered, panics, groupsCreated atomic.Uint64
	retried, reclaimed, deletedPending, heartbeats, trimmed, consumersRemoved                             atomic.Uint64
	reads, flushes                                                                                        atomic.Uint64
	cacheStores, coalescedReplies, cacheSettleErrors, cacheStale                                          atomic.Uint64
	chunks, cancelled, badControl, delayedRetries, promoted                                               atomic.Uint64
}

// Stats is a snapshot of a Consumer's counters. Each field's help tag
// describes it (and is its Prometheus help text); its json tag names it in
// /stats, bus-bench and /metrics (mycelium_consumer_<name>[_total]).
//
// Batching: Received/Reads entries come per read, Acked/Flushes per write of
// replies and acknowledgements. Few per batch under load means a round trip,
// a write and thread wake-ups spent on each.
type Stats struct {
	Received         uint64 `json:"received" help:"Entries read from the stream (new and reclaimed)."`
	Handled          uint64 `json:"handled" help:"Handler calls that returned."`
	Failed           uint64 `json:"failed" help:"Handler calls that returned an error or panicked."`
	Replied          uint64 `json:"replied" help:"Replies written to a live reply stream."`
	ReplyDropped     uint64 `json:"reply_dropped" help:"Replies not written because the requester's reply stream is gone."`
	Acked            uint64 `json:"acked" help:"Entries acknowledged."`
	Expired          uint64 `json:"expired" help:"Requests acknowledged unprocessed because their caller's deadline had passed on arrival."`
	DeadLettered     uint64 `json:"dead_lettered" help:"Entries moved to the dead-letter stream."`
	Panics           uint64 `json:"panics" help:"Handler panics recovered."`
	GroupsCreated    uint64 `json:"groups_created" help:"Times the consumer group was created or recreated."`
	Retried          uint64 `json:"retried" help:"Failed entries left pending for another delivery."`
	Reclaimed        uint64 `json:"reclaimed" help:"Entries taken over after ClaimIdle (from dead or slow consumers, or retries)."`
	DeletedPending   uint64 `json:"deleted_pending" help:"Pending entries trimmed from the stream before they were handled (reported by XAUTOCLAIM)."`
	Heartbeats       uint64 `json:"heartbeats" help:"Idle-time resets of long-running entries."`
	Trimmed          uint64 `json:"trimmed" help:"Entries removed by the consumer's retention."`
	ConsumersRemoved uint64 `json:"consumers_removed" help:"Idle consumers without pending entries removed from the group."`
	InFlight         int64  `json:"in_flight" help:"Entries held now: read and not yet acknowledged."`
	Reads            uint64 `json:"reads" help:"XREADGROUP calls that returned entries (received / reads = entries per read)."`
	Flushes          uint64 `json:"flushes" help:"Pipelined writes of replies and acknowledgements (acked / flushes = entries per write)."`
	CacheStores      uint64 `json:"cache_stores" help:"Answers stored in the shared cache."`
	CoalescedReplies uint64 `json:"coalesced_replies" help:"Replies written to requests that joined an identical request in flight (one handler call, several callers)."`
	CacheErrors      uint64 `json:"cache_errors" help:"Answers whose storing or coalesced delivery Redis refused (their callers ask again once the request's deadline passed)."`
	CacheStale       uint64 `json:"cache_stale" help:"Answers deleted right after storing: their request named another cache generation than the topic's (a flush raced it, or a request planting an answer for a generation to come)."`
	Chunks           uint64 `json:"chunks" help:"Chunks of streamed replies written."`
	Cancelled        uint64 `json:"cancelled" help:"Requests their callers cancelled: handlers cancelled while running, and requests acknowledged unhandled at pick-up."`
	DelayedRetries   uint64 `json:"delayed_retries" help:"Entries left pending for a delayed retry (RetryAfter)."`
	Waiting          int    `json:"waiting" help:"Delayed retries this consumer holds now, waiting for their due time."`
	Promoted         uint64 `json:"promoted" help:"Delayed events this consumer moved to their stream when due."`
	ControlMalformed uint64 `json:"control_malformed" help:"Malformed notices skipped on the topic's control stream."`
}

// Option configures optional collaborators of a Consumer.
type Option func(*Consumer)

// WithLogger sets the logger (default: none).
func WithLogger(l zerolog.Logger) Option { return func(c *Consumer) { c.log = l } }

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
	co := &Consumer{c: c, cfg: cfg, h: h, log: zerolog.Nop(), keys: keys, key: keys.Topic(cfg.Topic), oneServer: c.Mode() != "cluster",
		replyCap: redisx.MaxLen(cfg.Retention.ReplyMaxLen), dlqCap: redisx.MaxLen(cfg.Retention.DeadLetterMaxLen),
		presence: keys.Workers(cfg.Topic), member: cfg.Group + " " + cfg.Name, serving: make(chan struct{})}
	co.tr = newTracing(&co.cfg)
	for _, o := range opts {
		o(co)
	}
	return co, nil
}

// Name returns the consumer's name in its group.
func (c *Consumer) Name() string { return c.cfg.Name }

// Config returns the effective configuration (defaults applied).
func (c *Consumer) Config() Config { return c.cfg }

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (c *Consumer) Stats() Stats {
	s := &c.stats
	return Stats{
		Received: s.received.Load(), Handled: s.handled.Load(), Failed: s.failed.Load(),
		Replied: s.replied.Load(), ReplyDropped: s.replyDropped.Load(), Acked: s.acked.Load(),
		Expired: s.expired.Load(), DeadLettered: s.deadLettered.Load(), Panics: s.panics.Load(),
		GroupsCreated: s.groupsCreated.Load(), InFlight: c.inFlight.Load(),
		Retried: s.retried.Load(), Reclaimed: s.reclaimed.Load(), DeletedPending: s.deletedPending.Load(),
		Heartbeats: s.heartbeats.Load(), Trimmed: s.trimmed.Load(), ConsumersRemoved: s.consumersRemoved.Load(),
		Reads: s.reads.Load(), Flushes: s.flushes.Load(),
		CacheStores: s.cacheStores.Load(), CoalescedReplies: s.coalescedReplies.Load(), CacheErrors: s.cacheSettleErrors.Load(), CacheStale: s.cacheStale.Load(),
		Chunks: s.chunks.Load(), Cancelled: s.cancelled.Load(), DelayedRetries: s.delayedRetries.Load(), Waiting: c.waiting.len(),
		Promoted: s.promoted.Load(), ControlMalformed: s.badControl.Load(),
	}
}

// Timings returns a snapshot of the stages this consumer recorded (see
// package metrics): QueueWait and Handler for every handled entry,
// ReplyWrite for every reply written. Safe for concurrent use.
func (c *Consumer) Timings() *metrics.Snapshot { return c.timings.Snapshot() }

// Serving returns a channel that Run closes once the consumer has joined its
// group and announced itself, so that producers find a worker for the topic
// (a Request sent before then may fail with bus.ErrNoResponders), or when
// Run returns without having joined. It never closes if Run is never
// called.
func (c *Consumer) Serving() <-chan struct{} { return c.serving }

// Ready reports whether the consumer serves (see Serving), Redis answers and
// the group exists. Use it for readiness probes.
func (c *Consumer) Ready(ctx context.Context) error {
	if err := c.fatal(); err != nil {
		return err
	}
	select {
	case <-c.serving:
	default:
		return bus.ErrNotServing
	}
	keys := []string{c.key}
	if ps := c.parts.Load(); ps != nil {
		keys = keys[:0]
		for _, pt := range *ps {
			keys = append(keys, pt.key)
		}
	}
	for _, key := range keys {
		ok, err := redisx.GroupExists(ctx, c.c.Redis(), key, c.cfg.Group)
		if err != nil {
			return fmt.Errorf("consumer: redis: %w", err)
		}
		if !ok {
			return fmt.Errorf("consumer: %w: %s on %s", bus.ErrNoGroup, c.cfg.Group, key)
		}
	}
	return nil
}

// job is one entry on its way to a worker. Jobs are pooled: a Message is
// valid only during Handle.
type job struct {
	msg Message
	env codec.Envelope
	p   *part // the partition it was read from
	// cache is the entry id of a cached request ("" otherwise) and cacheTTL
	// the most its answer may be stored for (the caller's wish within this
	// worker's limits).
	cache    string
	cacheTTL time.Duration
	readAt   int64         // unix nanoseconds when the entry was read or reclaimed
	queued   time.Duration // QueueWait (RetryWait when msg.Attempt > 1) stage: entry id (or sent time, if later) to readAt
}

var jobPool = sync.Pool{New: func() any { return new(job) }}

func putJob(j *job) {
	*j = job{}
	jobPool.Put(j)
}

// Run consumes until ctx is done, then shuts down in the documented order
// and returns nil. Redis outages are retried with backoff, not returned. It
// returns an error when the consumer is already running, and, after the
// same orderly shutdown, when Redis refuses one of its commands for good
// (an error wrapping bus.ErrPermission, naming the command: an ACL user
// without a permission it needs, or wrong credentials): retrying would only
// repeat the work it cannot finish (an entry it cannot acknowledge would be
// handled and dead-lettered again and again).
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return bus.ErrRunning
	}
	defer c.running.Store(false)
	ctx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	c.fatalMu.Lock()
	c.fatalErr, c.stopRun = nil, stopRun
	c.fatalMu.Unlock()
	defer c.served.Do(func() { close(c.serving) }) // never left open once Run returned

	// Handlers get contexts that survive ctx for the grace period.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	hvals := context.WithoutCancel(hctx) // values for handler contexts (see deadlineCtx)

	slots := make(chan struct{}, c.cfg.Concurrency)
	for range c.cfg.Concurrency {
		slots <- struct{}{}
	}
	// The acker outlives ctx to flush what the handlers finished.
	actx, cancelAcker := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelAcker()
	a := newAcker(actx, c, slots)
	jobs := make(chan *job, c.cfg.Concurrency)
	running := make([]workerSlot, c.cfg.Concurrency)
	var workers sync.WaitGroup
	for i := range c.cfg.Concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range jobs {
				c.work(hctx, hvals, j, a, slots, &running[i])
			}
		}()
	}
	// Each partition's reclaimer feeds the same workers; the heartbeat
	// keeps running entries alive until their handlers finish (it outlives
	// ctx for them).
	var loops sync.WaitGroup
	hbctx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHeartbeat()
	heartbeatDone := make(chan struct{})
	go func() {
		defer close(heartbeatDone)
		c.heartbeatLoop(hbctx, running)
	}()
	loops.Add(1)
	go func() {
		defer loops.Done()
		c.presenceLoop(ctx)
	}()
	// Cancellations and wake-ups (control stream), delayed events and
	// retries.
	wake := make(chan int64, 64)
	caughtUp := make(chan struct{})
	loops.Go(func() { c.controlLoop(ctx, wake, caughtUp) })
	loops.Go(func() { c.delayLoop(ctx, wake, slots, jobs, a) })
	select { // requests cancelled before this worker started are skipped
	case <-caughtUp:
	case <-ctx.Done():
	}
	c.runPartitions(ctx, slots, jobs, a) // returns once every read loop and reclaimer did
	loops.Wait()                         // no more sends on jobs
	defer func() { stopHeartbeat(); <-heartbeatDone }()

	// Shutdown: reading stopped. Let workers finish (and flush) within the
	// grace period; then cancel handlers and any flush still retrying.
	close(jobs)
	finished := make(chan struct{})
	go func() {
		workers.Wait()
		a.wait()
		close(finished)
	}()
	grace := time.NewTimer(c.cfg.ShutdownTimeout)
	defer grace.Stop()
	select {
	case <-finished:
	case <-grace.C:
		c.log.Warn().Int64("in_flight", c.inFlight.Load()).Msg("shutdown timeout: cancelling handlers and flushes; their entries stay pending")
		cancelHandlers()
		cancelAcker()
		<-finished
	}
	if c.joined.Swap(false) {
		c.leave(context.WithoutCancel(ctx))
	}
	c.parts.Store(nil)
	return c.fatal()
}

// fail stops Run for good when err is a refusal for good (see Run) and
// reports whether it was; doing names the command refused.
func (c *Consumer) fail(err error, doing string) bool {
	if !redisx.IsPermission(err) {
		return false
	}
	err = fmt.Errorf("consumer: %w", redisx.Permission(err, doing))
	c.fatalMu.Lock()
	defer c.fatalMu.Unlock()
	if c.fatalErr == nil {
		c.fatalErr = err
		c.log.Error().Err(err).Msg("Redis refuses a command this worker needs: stopping (grant the permission, or fix the credentials)")
		if c.stopRun != nil {
			c.stopRun(err)
		}
	}
	return true
}

// fatal returns the refusal that stopped Run, if any.
func (c *Consumer) fatal() error {
	c.fatalMu.Lock()
	defer c.fatalMu.Unlock()
	return c.fatalErr
}

// readLoop reads pt's entries while ctx lives, never more than free slots.
//
// With one partition, a read takes one slot (waiting for it) and any others
// free right now, and blocks for up to Block. With several, each holds a
// fair share: a read that does not block takes up to Concurrency/partitions
// entries, and only when it finds none does the loop block, holding one
// slot (and for at most fairBlock when slots are fewer than partitions), so
// an idle partition never sits on slots that another partition's entries
// wait for.
func (c *Consumer) readLoop(ctx context.Context, pt *part, slots chan struct{}, jobs chan<- *job, a *acker) {
	out := redisx.Outage{Log: c.log, What: "read loop " + pt.key}
	var rd redisx.ReadDeadline
	defer rd.Stop()
	groupReady := false
	first := true
	for ctx.Err() == nil {
		if !groupReady {
			if err := c.createGroup(ctx, pt); err != nil {
				if c.fail(err, "creating or joining the group on "+pt.key) {
					return
				}
				out.Failed(err)
				out.Backoff(ctx)
				continue
			}
			groupReady = true
			if first {
				first = false
				c.joinedPart(pt)
			}
		}
		// Take one slot (waiting for it), then any others free right now.
		n := 0
		select {
		case <-slots:
			n = 1
		case <-ctx.Done():
			return
		}
		nparts := c.partCount()
		limit := min(c.cfg.Concurrency, maxReadBatch)
		if nparts > 1 {
			limit = max(1, min(limit, (c.cfg.Concurrency+nparts-1)/nparts))
		}
	more:
		for n < limit {
			select {
			case <-slots:
				n++
			default:
				break more
			}
		}
		var entries []redisx.Entry
		var err error
		if nparts > 1 {
			entries, err = redisx.ReadGroupNow(ctx, c.c.Redis(), pt.key, c.cfg.Group, c.cfg.Name, int64(n))
			if err == nil && len(entries) == 0 {
				for ; n > 1; n-- {
					slots <- struct{}{}
				}
				block := c.cfg.Block
				if nparts > c.cfg.Concurrency {
					block = min(block, fairBlock)
				}
				entries, err = redisx.ReadGroup(rd.For(ctx, block), c.c.Redis(), pt.key, c.cfg.Group, c.cfg.Name, ">", 1, block)
			}
		} else {
			// Its slots are on loan while it blocks (see slotLoan).
			lent := c.loan.offer(n)
			entries, err = redisx.ReadGroup(rd.For(ctx, c.cfg.Block), c.c.Redis(), pt.key, c.cfg.Group, c.cfg.Name, ">", int64(n), c.cfg.Block)
			if lent {
				n -= c.loan.withdraw(n)
			}
		}
		for i := len(entries); i < n; i++ {
			slots <- struct{}{}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, bus.ErrNoGroup) {
				if c.forgotten(ctx, pt) {
					return // another worker forgot this drained partition: do not recreate it
				}
				c.log.Warn().Str("stream", pt.key).Str("group", c.cfg.Group).Msg("group missing (Redis restarted or flushed?); recreating it")
				groupReady = false
				continue
			}
			if c.fail(err, "XREADGROUP "+pt.key) {
				return
			}
			out.Failed(err)
			out.Backoff(ctx)
			continue
		}
		out.OK()
		if len(entries) > 0 {
			c.stats.reads.Add(1)
		}
		now := time.Now()
		for i := range entries {
			if i >= n { // more entries than the slots left it (some were lent): wait for one
				if !c.takeSlot(ctx, slots) {
					return // the rest stay pending: reclaimed after ClaimIdle
				}
				now = time.Now()
			}
			c.route(pt, &entries[i], now, 1, jobs, a)
		}
	}
}

// fairBlock bounds a blocking read of one partition when handler slots are
// fewer than partitions: the read holds a slot, so it returns soon to let
// another partition's loop have it.
const fairBlock = 50 * time.Millisecond

// createGroup creates the group on pt (if missing) and joins it: the
// consumer is then listed in the group and in the topic's presence set.
func (c *Consumer) createGroup(ctx context.Context, pt *part) error {
	rc := c.c.Redis()
	if err := redisx.CreateGroup(ctx, rc, pt.key, c.cfg.Group, pt.start); err != nil {
		return err
	}
	c.stats.groupsCreated.Add(1)
	if err := redisx.Join(ctx, rc, pt.key, c.cfg.Group, c.cfg.Name, c.presence, c.member, time.Now(), presencePrune); err != nil {
		if !redisx.IsRedisReply(err) {
			return fmt.Errorf("consumer: join %s on %s: %w", c.cfg.Group, pt.key, err)
		}
		// Refused (an ACL without the presence key): serve all the same;
		// producers then rely on the group's consumers.
		c.log.Warn().Err(err).Str("key", c.presence).Msg("cannot announce this worker; producers may not see it until it has read an entry")
	}
	c.joined.Store(true)
	return nil
}

// route sends one read entry to a worker, or straight to the acker when it
// must not be handled (malformed, deleted, expired). Each entry holds one slot.
func (c *Consumer) route(pt *part, e *redisx.Entry, now time.Time, attempt int, jobs chan<- *job, a *acker) {
	c.stats.received.Add(1)
	c.inFlight.Add(1)
	switch {
	case e.Deleted:
		a.addAsync(completion{p: pt, id: e.ID}) // nothing left to handle or dead-letter
		return
	case !e.HasData:
		c.malformed(pt, e, attempt, fmt.Sprintf("entry has no %q field", redisx.Field), a)
		return
	case len(e.Data) > c.cfg.MaxEntrySize:
		why := fmt.Sprintf("entry of %d bytes exceeds MaxEntrySize %d", len(e.Data), c.cfg.MaxEntrySize)
		c.warnEntry(entryWarning{id: e.ID, attempt: attempt, reason: "malformed", err: why, msg: "oversized entry: dead-lettered (its size and first bytes)"})
		a.addAsync(completion{p: pt, id: e.ID, dead: redisx.DeadLetterOversized(e, c.deadLetter(attempt, "malformed", why))})
		return
	}
	j := jobPool.Get().(*job)
	// The entry's value is ours alone (a fresh bulk string from the client,
	// not read again once decoded): the payload may alias it.
	if err := codec.DecodeEnvelopeOwned(e.Data, &j.env); err != nil {
		putJob(j)
		c.malformed(pt, e, attempt, err.Error(), a)
		return
	}
	if j.env.Kind != codec.KindEvent && j.env.Kind != codec.KindRequest {
		kind := j.env.Kind
		putJob(j)
		c.malformed(pt, e, attempt, "envelope kind "+kind.String()+" on a topic stream", a)
		return
	}
	if j.env.Kind == codec.KindRequest {
		if why := c.checkRequest(&j.env); why != "" {
			putJob(j)
			c.malformed(pt, e, attempt, why, a)
			return
		}
	}
	if j.env.Deadline != 0 && now.UnixNano() >= j.env.Deadline {
		c.tr.expired(c, e.ID, &j.env)
		putJob(j)
		c.stats.expired.Add(1)
		a.addAsync(completion{p: pt, id: e.ID})
		return
	}
	if j.env.Kind == codec.KindRequest && c.cancels.has(&j.env.Token) {
		putJob(j)
		c.stats.cancelled.Add(1)
		a.addAsync(completion{p: pt, id: e.ID})
		return
	}
	j.msg = Message{
		ID: e.ID, Topic: c.cfg.Topic, Partition: pt.idx, Payload: j.env.Payload, Headers: j.env.Headers, Attempt: attempt,
		Request: j.env.Kind == codec.KindRequest, Sent: time.Unix(0, j.env.Sent),
	}
	if j.env.Deadline != 0 {
		j.msg.Deadline = time.Unix(0, j.env.Deadline)
	}
	if j.env.Kind == codec.KindRequest && j.env.CacheKey != "" {
		c.cacheOf(j, e.ID)
	}
	if j.env.Kind == codec.KindRequest && j.env.Flags&codec.FlagStream != 0 {
		j.msg.stream = &chunkStream{a: a, replyTo: j.env.ReplyTo, id: j.env.ID, entry: e.ID, attempt: uint32(min(attempt, 1<<31))}
	}
	j.p = pt
	j.readAt = now.UnixNano()
	j.queued = queueWait(e.ID, j.env.Sent, j.readAt)
	if attempt > 1 {
		c.timings.Record(metrics.RetryWait, j.queued) // earlier deliveries and the waits between them
	} else {
		c.timings.Record(metrics.QueueWait, j.queued)
	}
	jobs <- j // never blocks: at most Concurrency entries are held
}

// maxCorrelationID bounds a request's correlation id (the Go producer's are
// about 15 bytes).
const maxCorrelationID = 128

// checkRequest validates what a request asks the worker to do with its
// answer (the entry comes from the stream: anyone who can write the topic
// wrote it): the reply must go to one of this bus's reply streams, never to
// another key (a worker writes replies with NOMKSTREAM and trims the stream
// it writes), and carry a plausible correlation id. It returns why not, or
// "".
func (c *Consumer) checkRequest(env *codec.Envelope) string {
	if _, ok := c.keys.ParseReply(env.ReplyTo); !ok {
		return fmt.Sprintf("reply_to %q is not a reply stream of this bus (%s)", clip(env.ReplyTo), c.keys.Reply("<producer-id>"))
	}
	if env.ID == "" || len(env.ID) > maxCorrelationID {
		return fmt.Sprintf("request id of %d bytes: want 1 to %d", len(env.ID), maxCorrelationID)
	}
	return ""
}

// clip bounds a string from an entry for logs and dead letters.
func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// warnFailed logs a handler failure and what becomes of its entry.
func (c *Consumer) warnFailed(m *Message, err error, reason, what string) {
	c.warnEntry(entryWarning{id: m.ID, attempt: m.Attempt, reason: reason, handled: true, request: m.Request, err: err.Error(), msg: what})
}

// malformed dead-letters an entry that cannot be handled, at once.
func (c *Consumer) malformed(pt *part, e *redisx.Entry, attempt int, why string, a *acker) {
	c.warnEntry(entryWarning{id: e.ID, attempt: attempt, reason: "malformed", err: why, msg: "malformed entry: dead-lettered"})
	a.addAsync(completion{p: pt, id: e.ID, dead: c.deadFields(e, attempt, "malformed", why)})
}

// work runs the handler for one job and decides what becomes of the entry:
// acknowledged (with a reply for requests), dead-lettered, or left pending
// for another delivery.
func (c *Consumer) work(hctx, hvals context.Context, j *job, a *acker, slots chan<- struct{}, slot *workerSlot) {
	ctx := hctx
	// The message's trace context (and its process span) in the handler's
	// ctx values; nothing when it carries none and no tracer is set.
	vals := hvals
	var span trace.Span
	if c.tr.traced(j.env.Headers) {
		vals, span = c.tr.start(hvals, c, &j.msg, &j.env)
		ctx = valuesCtx{hctx, vals}
	}
	// What cancels a request's handler when its caller gave up: its
	// deadline ctx (no method value: that would allocate per request), or
	// for a request without a deadline, a cancel func.
	var dc *deadlineCtx
	var cancel context.CancelCauseFunc
	if !j.msg.Deadline.IsZero() {
		dc = newDeadlineCtx(hctx, vals, j.msg.Deadline)
		defer dc.cancel(context.Canceled)
		ctx = dc
	} else if j.msg.Request {
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
	}
	early := false // cancelled before the handler started
	if j.msg.Request {
		slot.setRequest(j.p, j.msg.ID, j.readAt, &j.env.Token, dc, cancel)
		// A cancel notice handled between the pick-up and now found no
		// handler to cancel.
		if c.cancels.started(&j.env.Token, slot) {
			early = true
			c.stats.cancelled.Add(1)
		}
	} else {
		slot.set(j.p, j.msg.ID, j.readAt)
	}
	started := time.Now()
	var out []byte
	var err error
	outcome := "" // a span event naming what became of the entry, when not a plain ack
	if !early {
		out, err = c.call(ctx, &j.msg)
	}
	ended := time.Now()
	cancelled := slot.clear() || early
	c.cancels.finished(&j.env.Token) // an event's token is zero: nothing to do
	chunks := uint64(0)
	if j.msg.stream != nil {
		chunks = j.msg.stream.end()
	}
	if span != nil {
		queued := j.queued // j goes back to its pool before the span ends
		defer func() { endProcess(span, queued, err, outcome) }()
	}
	if cancelled {
		outcome = "cancelled"
		// The caller gave up: no reply, nobody reads it.
		c.timings.Record(metrics.Handler, ended.Sub(started))
		c.stats.handled.Add(1)
		done := completion{p: j.p, id: j.msg.ID}
		putJob(j)
		a.add(done)
		return
	}
	c.timings.Record(metrics.Handler, ended.Sub(started))
	c.stats.handled.Add(1)
	if err != nil {
		c.stats.failed.Add(1)
		if hctx.Err() != nil {
			// Shutdown cancelled the handler: leave the entry pending for
			// another consumer rather than reporting a failure we caused.
			c.release(j, slots)
			return
		}
	}
	done := completion{p: j.p, id: j.msg.ID, at: ended, queued: j.queued, retried: j.msg.Attempt > 1, handled: ended.Sub(started), failed: err != nil}
	switch {
	case err != nil && c.retryAfter(hctx, j, err, slots):
		outcome = "retry_after"
		return
	case j.msg.Request:
		if err != nil && errors.Is(err, bus.ErrRetryLater) && j.msg.Attempt < c.cfg.Retry.MaxDeliveries &&
			time.Until(j.msg.Deadline) > c.cfg.Reclaim.ClaimIdle {
			c.stats.retried.Add(1) // the caller can still wait for a retry
			outcome = "retry"
			c.warnFailed(&j.msg, err, "retry", "handler failed: the request is delivered again after ClaimIdle")
			c.release(j, slots)
			return
		}
		if err != nil {
			c.warnFailed(&j.msg, err, "handler_error", "handler failed: the caller gets a remote error")
		}
		reply := codec.Envelope{
			Kind: codec.KindReply, ID: j.env.ID, Sent: ended.UnixNano(), Payload: out,
			QueueWait: int64(j.queued), Handler: int64(ended.Sub(started)),
			RequestEntry: j.msg.ID, // the caller checks it is the entry it wrote
			Attempt:      uint32(min(j.msg.Attempt, 1<<31)), Seq: chunks,
		}
		if err != nil {
			reply.Payload = nil
			reply.ErrCode, reply.ErrMsg = string(bus.CodeHandler), err.Error()
			var re *bus.RemoteError
			if errors.As(err, &re) && re.Code != "" {
				reply.ErrCode, reply.ErrMsg = string(re.Code), re.Message
			}
		}
		done.replyTo = j.env.ReplyTo
		if j.cache != "" {
			done.cache = c.settleOf(j, &reply, err, ended)
		}
		done.reply = codec.Encode(&reply)
	case err == nil:
	case errors.Is(err, bus.ErrSkipRetry):
		outcome = "dead_lettered"
		c.warnFailed(&j.msg, err, "handler_error", "handler failed (do not retry): dead-lettered")
		done.dead = c.deadEnvelope(j.msg.ID, &j.env, j.msg.Attempt, "handler_error", err.Error())
	case j.msg.Attempt >= c.cfg.Retry.MaxDeliveries:
		outcome = "dead_lettered"
		c.warnFailed(&j.msg, err, "max_deliveries", "handler failed on the last delivery: dead-lettered")
		done.dead = c.deadEnvelope(j.msg.ID, &j.env, j.msg.Attempt, "max_deliveries",
			fmt.Sprintf("failed %d times (MaxDeliveries %d); last error: %v", j.msg.Attempt, c.cfg.Retry.MaxDeliveries, err))
	default:
		// A failed event is delivered again after ClaimIdle.
		c.stats.retried.Add(1)
		outcome = "retry"
		c.warnFailed(&j.msg, err, "retry", "handler failed: the event is delivered again after ClaimIdle")
		c.release(j, slots)
		return
	}
	putJob(j) // done holds only strings that alias the entry, not j
	a.add(done)
}

// retryAfter leaves the entry of a handler that returned a RetryAfter
// error pending for a delayed retry, when MaxDeliveries and (for a request)
// the caller's deadline leave room; it reports whether it did (then j is
// released).
func (c *Consumer) retryAfter(ctx context.Context, j *job, err error, slots chan<- struct{}) bool {
	var ra *RetryAfterError
	if !errors.As(err, &ra) || j.msg.Attempt >= c.cfg.Retry.MaxDeliveries {
		return false
	}
	delay := c.retryDelay(ra.Delay, j.msg.Attempt)
	if j.msg.Request && !j.msg.Deadline.IsZero() && time.Until(j.msg.Deadline) <= delay {
		return false // the caller would be gone: it gets the error now
	}
	c.stats.retried.Add(1)
	if c.scheduleRetry(ctx, j, delay) {
		c.warnFailed(&j.msg, err, "retry", "handler asked for a retry: delivered again after "+delay.Round(time.Millisecond).String())
	}
	c.release(j, slots)
	return true
}

// cancelledError is a handler ctx's error when its caller cancelled the
// request: it is context.Canceled and bus.ErrCancelled to errors.Is.
type cancelledError struct{}

func (cancelledError) Error() string { return "context canceled: " + bus.ErrCancelled.Error() }

func (cancelledError) Is(target error) bool {
	return target == context.Canceled || target == bus.ErrCancelled
}

var errCancelled error = cancelledError{}

// queueWait is how long an entry waited in the stream before a worker
// picked it up at readAt (unix nanoseconds). The entry id has millisecond
// resolution and the sender's clock may differ from Redis's; the later of
// the two bounds the time the entry became readable.
func queueWait(id string, sent, readAt int64) time.Duration {
	from := sent
	if t, ok := redisx.IDTime(id); ok && t.UnixNano() > from {
		from = t.UnixNano()
	}
	if from == 0 || readAt < from {
		return 0
	}
	return time.Duration(readAt - from)
}

// release gives up an entry without acknowledging it: it stays pending.
func (c *Consumer) release(j *job, slots chan<- struct{}) {
	putJob(j)
	c.inFlight.Add(-1)
	slots <- struct{}{}
}

// call runs the handler, turning a panic into an error.
func (c *Consumer) call(ctx context.Context, m *Message) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			c.stats.panics.Add(1)
			c.log.Error().Str("entry", m.ID).Interface("panic", r).Msg("handler panicked")
			out, err = nil, &bus.RemoteError{Code: bus.CodePanic, Message: fmt.Sprint(r)}
		}
	}()
	return c.h.Handle(ctx, m)
}

// beatInterval is how often a consumer announces itself in its topic's
// presence set; presencePrune is how long a member may stay silent before a
// live one removes it (a worker that died without leaving).
const (
	beatInterval  = 5 * time.Second
	presencePrune = time.Hour
)

// presenceLoop announces the consumer every beatInterval while ctx lives,
// so producers see a worker for the topic (producer.Config.ResponderIdle).
// Unreachable Redis is the read loop's to report; a refused write (an ACL
// without the presence key) is logged once until a beat succeeds again.
func (c *Consumer) presenceLoop(ctx context.Context) {
	t := time.NewTicker(beatInterval)
	defer t.Stop()
	refused := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := redisx.Beat(ctx, c.c.Redis(), c.presence, c.member, time.Now(), presencePrune)
		switch {
		case err == nil:
			refused = false
		case redisx.IsRefused(err) && !refused:
			refused = true
			c.log.Warn().Err(err).Str("key", c.presence).Msg("Redis refuses this worker's announcements; producers may not see it while it is idle (logged once until it works again)")
		}
	}
}

// leave takes the consumer out of the presence set and, from each
// partition where it holds no pending entries, out of its group: a worker
// stopped on purpose leaves no ghost in stats and no responder that is not
// there. Bounded to 2 s.
func (c *Consumer) leave(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	keys := []string{c.key}
	if ps := c.readParts(); len(ps) > 0 {
		keys = keys[:0]
		for _, pt := range ps {
			keys = append(keys, pt.key)
		}
	}
	for _, key := range keys {
		removed, err := redisx.Leave(ctx, c.c.Redis(), key, c.presence, c.cfg.Group, c.cfg.Name, c.member)
		switch {
		case err != nil:
			c.log.Warn().Err(err).Str("stream", key).Msg("could not leave the group; other workers remove this consumer once it is idle and holds nothing")
		case removed:
			c.log.Info().Str("stream", key).Str("group", c.cfg.Group).Str("consumer", c.cfg.Name).Msg("left the group")
		default:
			c.log.Info().Str("stream", key).Str("consumer", c.cfg.Name).Msg("stays in the group: it holds pending entries, for another consumer to reclaim")
		}
	}
}
