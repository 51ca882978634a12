package consumer

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// limiter holds the worker to its topic's fleet-wide limits
// (docs/flow-control.md): rate, token budget, concurrency and pause, kept
// with the topic and shared by every worker of every node. The reader (and
// the reclaimer) asks it for permits before it reads, and reads only as
// many entries as it was granted: while a limit holds, entries wait in the
// stream, read by nobody.
//
// A topic without limits costs one function call a second (to notice a
// limit being set): take answers from memory in between. With limits,
// every read asks Redis first (the permit function on the topic's hash
// tag). Concurrency leases are held per consumer, mirrored here (held);
// whenever the consumer holds more leases than entries in flight (and
// permits a read is filling), the excess goes back to Redis, with unused
// rate permits and token charges, on the limiter's flusher goroutine (one
// call for many releases under load). Leases lapse ClaimIdle after their
// last renewal (the flusher renews them every ClaimIdle/3): a killed
// worker's leases return within ClaimIdle.
type limiter struct {
	*env
	keys     redisx.LimitKeys
	ctl      string // the topic's control stream: pauses are told there
	leaseTTL time.Duration
	paused   atomic.Int64 // unix ms the topic is paused until, as Redis last said (0: not paused)
	hint     atomic.Bool  // a pause notice was heard: read the pause from Redis before routing entries
	noLib    atomic.Bool  // warned that the bus's functions are not loaded
	outage   atomic.Bool  // warned that permits could not be asked (until Redis answers again)

	active    atomic.Bool  // the last answer said limited (or paused)
	checked   atomic.Int64 // unix nanos of the last answer
	held      atomic.Int64 // concurrency leases this consumer holds
	reading   atomic.Int64 // leased permits a read is filling now
	avgCost   atomic.Int64 // moving average of messages' costs (estimates and reports): sizes a token budget's grants
	waitStart atomic.Int64 // unix nanos since when permits were refused (0: they were not)
	poll      atomic.Int64 // the next lease poll (nanoseconds), doubling while refused

	mu      sync.Mutex
	release int64 // leases to give back
	unused  int64 // rate permits granted and not used
	tokens  int64 // tokens to charge (negative: to give back)
	kick    chan struct{}
	freed   chan struct{} // a lease was freed here: a reader waiting for permits asks at once (sleep)
	starved atomic.Bool   // the reader waits for permits (try gave it none)
	// perPermit is the tokens the last grant charged per permit (0: no
	// token budget): a message whose estimate is far above it is charged
	// before it starts (start), not on the next flush.
	perPermit atomic.Int64
}

// start charges a message's estimated cost as it is routed to a handler:
// on the next flush; or, when it is more than twice what its permit
// charged (a large prompt), at once, once the budget has room for it
// (redisx.StartCost): it waits for that here, read and not started, so
// that a dear message arriving with the budget nearly spent does not take
// the provider past its quota, and workers asking meanwhile see its cost.
func (l *limiter) start(ctx context.Context, cost int64) {
	if cost <= 0 || !l.active.Load() {
		return
	}
	l.observe(cost)
	if per := l.perPermit.Load(); per > 0 && cost > 2*per {
		for ctx.Err() == nil {
			wait, err := l.port.StartCost(ctx, l.keys, cost)
			if err != nil {
				break // Redis did not answer: charge it on the next flush
			}
			if wait == 0 {
				return
			}
			sleepCtx(ctx, min(wait, recheck))
		}
	}
	l.charge(cost)
}

// sleep waits d, or until this worker frees a lease (its waiting reader
// then asks at once, giving the lease back and taking it in one call), or
// ctx ends.
func (l *limiter) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-l.freed:
	case <-ctx.Done():
	}
}

// recheck is how long take answers "no limit" from memory.
const recheck = time.Second

// leasePoll is how soon a worker waiting for a lease first asks again (a
// lease frees when another worker's handler ends: nobody tells this one);
// it doubles while it waits, up to leasePollMax (an idle fleet whose
// leases an idle reader holds asks a few times a second, not fifty).
const (
	leasePoll    = 10 * time.Millisecond
	leasePollMax = 100 * time.Millisecond
)

func newLimiter(e *env) *limiter {
	topic := e.cfg.Topic
	return &limiter{env: e, leaseTTL: e.cfg.Reclaim.ClaimIdle, kick: make(chan struct{}, 1), freed: make(chan struct{}, 1), ctl: e.keys.Control(topic),
		keys: redisx.LimitKeys{Meta: e.keys.Meta(topic), Rate: e.keys.LimitRate(topic), Tokens: e.keys.LimitTokens(topic),
			Leases: e.keys.LimitLeases(topic), Expiry: e.keys.LimitExpiry(topic)}}
}

// grant is what a read was granted: n permits (leased: holding
// concurrency leases; timed: spent when granted, so the read must not
// block holding them), of which got were used.
type grant struct {
	n, got        int
	leased, timed bool
	charged       int64 // tokens the permit function charged per permit (given back in filled)
}

// now reports whether the read must use g at once rather than block
// holding it: timed permits are spent when granted, and leases held by a
// waiting read starve other readers and reclaimers.
func (g grant) now() bool { return g.timed || g.leased }

// grant waits for permits (up to want; see try) while ctx lives: for a
// caller that holds no handler slot while it waits (the reclaimer). The
// caller uses at most g.n, sets g.got, and passes g to filled once those
// entries are in flight.
func (l *limiter) grant(ctx context.Context, want int) grant {
	for ctx.Err() == nil {
		g, wait := l.try(ctx, want)
		if g.n > 0 {
			return g
		}
		sleepCtx(ctx, wait)
	}
	return grant{}
}

// notePause is told of a pause notice on the control stream (a pause
// begun or ended). The notice is a hint, never trusted for its time (a
// producer may write the control stream: a forged notice must not stop
// the fleet): the next read asks the permit function, which keeps the
// pause, and entries a read already waiting brings back meanwhile are
// checked against the topic's meta hash first (holdWhilePaused).
func (l *limiter) notePause() {
	l.hint.Store(true)
	l.active.Store(true)
}

// holdWhilePaused waits, before entries just read are routed, until the
// topic's pause is over, or ctx ends; false then. A read that was waiting
// for entries when the pause began brings them back during it: they wait
// here, pending, started by nobody. The pause's end is Redis's (the
// permit function's answers, this worker's own PauseTopic, or the meta
// hash read when a notice was heard), read again every second while it
// waits, so a resume is seen.
func (l *limiter) holdWhilePaused(ctx context.Context) bool {
	var start time.Time
	defer func() {
		if !start.IsZero() {
			l.stats.permitWaitNanos.Add(uint64(time.Since(start)))
		}
	}()
	for {
		if l.hint.Swap(false) || !start.IsZero() {
			if lim, err := l.port.GetLimits(ctx, l.keys.Meta); err == nil {
				l.paused.Store(lim.PausedUntil.UnixMilli())
				if lim.PausedUntil.IsZero() {
					l.paused.Store(0)
				}
			}
		}
		until := l.paused.Load()
		left := time.Until(time.UnixMilli(until))
		if until == 0 || left <= 0 {
			return true
		}
		if start.IsZero() {
			start = time.Now()
			l.stats.permitWaits.Add(1)
		}
		sleepCtx(ctx, min(left, recheck))
		if ctx.Err() != nil {
			return false
		}
	}
}

// try asks once for up to want permits. With some granted it returns them
// (leased: they hold concurrency leases; timed: a rate or token budget
// spent them). With none (a limit holds, or the topic is paused) it
// returns grant{} and when to ask again: the caller waits holding no
// handler slot (a reader holding slots while it waits would keep them
// from the entries this worker's reclaimer got permits for). A topic
// without limits is answered from memory between checks (recheck).
func (l *limiter) try(ctx context.Context, want int) (grant, time.Duration) {
	if !l.active.Load() && time.Now().UnixNano()-l.checked.Load() < int64(recheck) {
		return grant{n: want}, 0
	}
	l.mu.Lock()
	rel := l.release // leases freed here: given back in the same call
	l.release = 0
	l.mu.Unlock()
	p, err := l.port.TakePermits(ctx, l.keys, l.cfg.Name, int64(want), l.leaseTTL, l.avgCost.Load(), rel)
	now := time.Now()
	if err != nil && rel > 0 {
		l.mu.Lock()
		l.release += rel // the flusher gives them back
		l.mu.Unlock()
		l.wake()
	}
	if err != nil && errors.Is(err, redisx.ErrFunctionsNotLoaded) {
		// The operator has not loaded the bus's functions: a topic with
		// no limit and no pause reads on as before (checked again in a
		// second); one with limits cannot keep them and stops Run.
		if lim, gerr := l.port.GetLimits(ctx, l.keys.Meta); gerr == nil && !lim.Set() && time.Until(lim.PausedUntil) <= 0 {
			if !l.noLib.Swap(true) {
				l.log.Warn().Err(err).Str("topic", l.cfg.Topic).Msg("the bus's functions are not loaded: reading without permits while the topic has no limits")
			}
			l.checked.Store(now.UnixNano())
			l.active.Store(false)
			return grant{n: want}, 0
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return grant{}, 0
		}
		if l.fail(err, "FCALL permit (the topic's limits)") {
			return grant{}, 0
		}
		// Redis did not answer: the read will meet the same outage and
		// back off (the reader logs the outage); a limit cannot be kept
		// meanwhile, so none is assumed. Said once per outage, for a
		// topic known to have limits.
		if l.active.Load() && !l.outage.Swap(true) {
			l.log.Warn().Err(err).Str("topic", l.cfg.Topic).Msg("asking for permits failed: reading without them until Redis answers")
		}
		return grant{n: want}, 0
	}
	l.outage.Store(false)
	l.checked.Store(now.UnixNano())
	l.active.Store(p.Limited)
	if !p.PausedUntil.IsZero() {
		l.paused.Store(p.PausedUntil.UnixMilli())
	}
	l.starved.Store(p.Granted == 0)
	if p.Granted > 0 {
		if p.Limited {
			l.stats.permitsGranted.Add(uint64(p.Granted))
		}
		if ws := l.waitStart.Swap(0); ws != 0 {
			l.stats.permitWaitNanos.Add(uint64(now.UnixNano() - ws))
		}
		l.poll.Store(int64(leasePoll))
		if p.Leased {
			// reading first: a settle running between the two adds sees
			// fewer leases in excess, never the new ones.
			l.reading.Add(p.Granted)
			l.held.Add(p.Granted)
		}
		l.perPermit.Store(p.Charged)
		return grant{n: int(p.Granted), leased: p.Leased, timed: p.Timed, charged: p.Charged}, 0
	}
	if l.waitStart.CompareAndSwap(0, now.UnixNano()) {
		l.stats.permitWaits.Add(1)
	}
	d := p.Wait
	if d < 0 {
		poll := time.Duration(l.poll.Load())
		d = max(poll, leasePoll)
		l.poll.Store(int64(min(2*d, leasePollMax)))
	}
	return grant{}, min(d, recheck) // a changed limit or a lifted pause is seen within a second
}

// filled ends a read made with granted permits that brought got entries
// (their in-flight count already taken): unused rate permits go back, and
// so do leases beyond what is in flight (settle).
func (l *limiter) filled(g grant) {
	if !l.active.Load() && !g.leased {
		return
	}
	if g.leased {
		l.reading.Add(-int64(g.n))
	}
	if g.got < g.n || g.charged > 0 {
		l.mu.Lock()
		l.unused += int64(g.n - g.got)
		// The permit function charged the average cost per permit; the
		// entries read charged their own estimates (route): give the
		// average back.
		l.tokens -= int64(g.n) * g.charged
		l.mu.Unlock()
		l.wake()
	}
	l.settle()
}

// settle gives back the leases this consumer holds beyond the entries it
// has in flight and the permits its read is filling. Called wherever the
// in-flight count drops; free when no lease is held.
func (l *limiter) settle() {
	for {
		held := l.held.Load()
		if held <= 0 {
			return
		}
		excess := held - l.inFlight.Load() - l.reading.Load()
		if excess <= 0 {
			return
		}
		if l.held.CompareAndSwap(held, held-excess) {
			l.mu.Lock()
			l.release += excess
			l.mu.Unlock()
			if !l.starved.Load() {
				l.wake() // the flusher gives them back
				return
			}
			select { // the reader waiting for permits asks now, giving these back in its call
			case l.freed <- struct{}{}:
			default:
			}
			return
		}
	}
}

// charge charges n tokens (negative: gives them back) to the topic's budget.
func (l *limiter) charge(n int64) {
	if n == 0 || !l.active.Load() {
		return
	}

	l.mu.Lock()
	l.tokens += n
	l.mu.Unlock()
	l.wake()
}

// observe adds a message's cost to the moving average that sizes a token
// budget's grants (racy but bounded: a size hint, not a count).
func (l *limiter) observe(cost int64) {
	if cost <= 0 || !l.active.Load() {
		return
	}
	a := l.avgCost.Load()
	l.avgCost.Store(max(a-a/8+cost/8, 1))
}

func (l *limiter) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// run flushes releases, unused permits and charges as they come (one call
// for all that gathered meanwhile), renews the consumer's leases every
// leaseTTL/3, and flushes what is left once ctx ends. It outlives Run's
// ctx until the workers are done (like the heartbeat).
func (l *limiter) run(ctx context.Context) {
	renew := time.NewTicker(max(l.leaseTTL/3, 100*time.Millisecond))
	defer renew.Stop()
	out := redisx.Outage{Log: l.log, What: "limiter " + l.cfg.Topic}
	for {
		force := false
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			if l.active.Load() && !l.noLib.Load() {
				// The workers are done: this consumer holds no lease any
				// more, whatever its count says (a permit call cut off by
				// the stop may have taken leases it never heard of): give
				// back every lease it has in Redis.
				l.mu.Lock()
				l.release = redisx.MaxLimit
				l.mu.Unlock()
				l.held.Store(0)
			}
			l.flush(fctx, false, nil)
			cancel()
			return
		case <-l.kick:
		case <-renew.C:
			force = l.held.Load() > 0
		}
		if !l.flush(ctx, force, &out) {
			sleepCtx(ctx, 100*time.Millisecond) // Redis did not answer: gather more, try again
		}
	}
}

// flush sends what gathered (and, with renew, a renewal even when nothing
// did); false when Redis did not take it (kept for the next try).
func (l *limiter) flush(ctx context.Context, renew bool, out *redisx.Outage) bool {
	l.mu.Lock()
	rel, unused, tokens := l.release, l.unused, l.tokens
	l.release, l.unused, l.tokens = 0, 0, 0
	l.mu.Unlock()
	if rel == 0 && unused == 0 && tokens == 0 && !renew {
		return true
	}
	_, err := l.port.PermitsDone(ctx, l.keys, l.cfg.Name, rel, unused, tokens, l.leaseTTL)
	if err != nil {
		l.mu.Lock()
		l.release += rel
		l.unused += unused
		l.tokens += tokens
		l.mu.Unlock()
		if ctx.Err() == nil && !l.fail(err, "FCALL permitdone (the topic's limits)") && out != nil {
			out.Failed(err)
		}
		return false
	}
	if out != nil {
		out.OK()
	}
	return true
}

// pause pauses the topic for every worker for d (PauseTopic), and makes
// this worker ask for permits at its next read (where it meets the pause).
func (l *limiter) pause(ctx context.Context, d time.Duration) {
	until, err := l.port.Pause(ctx, l.keys.Meta, l.ctl, d)
	if err != nil {
		if !l.fail(err, "FCALL pause") {
			l.log.Warn().Err(err).Str("topic", l.cfg.Topic).Msg("could not pause the topic (the message is retried all the same)")
		}
		return
	}
	l.stats.pauses.Add(1)
	l.paused.Store(until.UnixMilli())
	l.active.Store(true)
	l.log.Info().Str("topic", l.cfg.Topic).Time("until", until).Dur("for", d).Msg("paused the topic for every worker (a handler asked: PauseTopic)")
}

// CostHeader is the header carrying a message's estimated cost in tokens
// (producer.Cost sets it): a topic with a token budget charges it when
// the handler starts, then corrects it by what the handler reports
// (Message.ReportCost).
const CostHeader = bus.CostHeader

// estimatedCost returns the cost a message's headers estimate (0 when
// none, or not a count).
func estimatedCost(h map[string]string) int64 {
	s, ok := h[CostHeader]
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > redisx.MaxLimit {
		return 0
	}
	return n
}
