package producer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// Backpressure (Config.Backpressure, docs/flow-control.md): a write to a
// topic stream first takes room in the stream's backlog (pressure.room).
// What a producer knows of a stream's backlog is its last measurement (the
// most entries any group has not finished, redisx.Backlog.Unfinished)
// plus the entries it reserved since that measurement began: its own
// writes count at once, other producers' at the next measurement. A
// monitor goroutine per stream measures off the hot path, often when the
// backlog nears the limit or grows fast, once a second otherwise, and
// stops when the stream has not been written to for a while.
//
// Between two measurements a producer writes at most slack entries (an
// eighth of the headroom between the limit and the stream's cap): then it
// asks its monitor for a measurement at once and waits for it. Without
// that bound each of several producers, seeing only its own writes, could
// fill the whole room within one interval (two producers passed a cap of
// 2,000 by a few hundred entries in the test that found it).

const (
	// monitorIdle: a monitor stops when its stream was not written to for
	// this long (the next write starts it again, and waits for its first
	// measurement).
	monitorIdle = 5 * time.Second
	// measurementStale: an older measurement is not trusted: the write
	// waits for a fresh one (after a monitor stopped, or measurements
	// failing).
	measurementStale = 2 * time.Second
	// The monitor's interval: at most slowPoll, at least fastPoll, fastPoll
	// while callers wait for room.
	slowPoll = time.Second
	fastPoll = 2 * time.Millisecond
	// measureTimeout bounds one measurement.
	measureTimeout = 2 * time.Second
	// dropWarnEvery rate-limits DropOldest's warning per stream.
	dropWarnEvery = 10 * time.Second
)

// backlog is what a producer knows of one topic stream's backlog (each
// partition has its own).
type backlog struct {
	offset   atomic.Int64 // the last measurement minus reserved when it began
	base     atomic.Int64 // reserved when the last measurement began
	reserved atomic.Int64 // entries this producer reserved on the stream, ever
	measured atomic.Int64 // unix nanos of the last measurement (0: none)
	used     atomic.Int64 // unix nanos of a recent reservation (updated every 100 ms at most)
	running  atomic.Bool  // a monitor runs
	waiting  atomic.Int32 // callers waiting for room
	off      atomic.Bool  // not measurable (the user may not read the stream's groups): no backpressure
	dropWarn atomic.Int64 // unix nanos of the last DropOldest warning

	mu      sync.Mutex
	changed chan struct{} // closed by each measurement (nil: none made yet)
	kick    chan struct{} // asks the monitor for a measurement now (made by kicker)
}

// kicker returns the channel that asks b's monitor to measure now.
func (b *backlog) kicker() chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.kick == nil {
		b.kick = make(chan struct{}, 1)
	}
	return b.kick
}

// measureNow asks b's monitor for a measurement at once.
func (b *backlog) measureNow() {
	select {
	case b.kicker() <- struct{}{}:
	default:
	}
}

// estimate is the stream's backlog as this producer knows it now.
func (b *backlog) estimate() int64 { return b.offset.Load() + b.reserved.Load() }

// wake returns a channel closed by the next measurement.
func (b *backlog) wake() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed == nil {
		b.changed = make(chan struct{})
	}
	return b.changed
}

// broadcast wakes the callers waiting for a measurement.
func (b *backlog) broadcast() {
	b.mu.Lock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	b.mu.Unlock()
}

// pressure is the producer's backpressure: room in each stream's backlog
// before a write, as Config.Backpressure says.
type pressure struct {
	policy  BackpressurePolicy
	limit   int64 // 0: no backpressure
	slack   int64 // most entries written between two measurements
	trimCap int64 // MAXLEN ~ of the producer's writes (0: none): DropOldest counts past it
	maxWait time.Duration
	port    port
	bg      *background
	log     zerolog.Logger
	stats   *counters
	closing <-chan struct{}
}

func newPressure(cfg *Config, port port, bg *background, log zerolog.Logger, stats *counters, closing <-chan struct{}) *pressure {
	bp := &pressure{policy: cfg.Backpressure.Policy, limit: cfg.backlogLimit(), maxWait: cfg.Backpressure.MaxWait,
		port: port, bg: bg, log: log, stats: stats, closing: closing}
	if cfg.StreamMaxAge <= 0 && cfg.StreamMaxLen > 0 {
		bp.trimCap = cfg.StreamMaxLen
	}
	if bp.policy == DropOldest {
		// Nothing waits or fails: measure to count what the trim drops.
		bp.limit = bp.trimCap
	}
	room := bp.limit
	if bp.trimCap > bp.limit {
		room = bp.trimCap - bp.limit
	}
	bp.slack = max(room/8, 1)
	return bp
}

// fresh reports whether b's last measurement may decide a write of n
// entries now: it is recent, and this producer has written fewer than
// slack entries since it began (DropOldest, which only counts, takes any).
func (bp *pressure) fresh(b *backlog, n, now int64) bool {
	m := b.measured.Load()
	if m == 0 || now-m >= int64(measurementStale) {
		return false
	}
	if bp.policy != DropOldest && b.reserved.Load()-b.base.Load()+n > bp.slack && n <= bp.slack {
		b.measureNow()
		return false
	}
	return true
}

// room takes room for n entries in pt's stream before they are written:
// at once while the backlog is below the limit (one atomic add), else as
// the policy says. now is the call's start (unix nanos); expired is a
// request's own deadline timer (nil when ctx has the deadline, or for a
// publish).
func (bp *pressure) room(ctx context.Context, pt *topic, n int64, now int64, expired <-chan time.Time) error {
	if bp.limit == 0 {
		return nil
	}
	b := &pt.bl
	if b.off.Load() {
		return nil
	}
	if now-b.used.Load() > int64(100*time.Millisecond) {
		b.used.Store(now)
	}
	if !b.running.Load() {
		bp.startMonitor(pt)
	}
	if bp.fresh(b, n, now) {
		if done, err := bp.decide(pt, n); done {
			return err
		}
	}
	return bp.wait(ctx, pt, n, expired)
}

// decide takes room for n entries in pt's stream on its fresh estimate, or
// says what the policy does without it: done with err nil (room taken,
// or DropOldest writing on), done with the refusal (Reject), or not done
// (Block: wait).
func (bp *pressure) decide(pt *topic, n int64) (done bool, err error) {
	b := &pt.bl
	est := b.estimate() + n
	switch {
	case est <= bp.limit:
		b.reserved.Add(n)
		return true, nil
	case bp.policy == DropOldest:
		b.reserved.Add(n)
		bp.dropped(pt, min(n, est-bp.limit))
		return true, nil
	case bp.policy == Reject:
		bp.stats.backlogFull.Add(1)
		return true, fmt.Errorf("producer: write to %s: %w", pt.root().name, &bus.BacklogError{Topic: pt.name, Backlog: est - n, Limit: bp.limit})
	}
	return false, nil
}

// wait waits for room for n entries in pt's stream (Block, or any policy
// while the stream has no fresh measurement), bounded by ctx, expired,
// MaxWait (when neither bounds it) and Close.
func (bp *pressure) wait(ctx context.Context, pt *topic, n int64, expired <-chan time.Time) error {
	b := &pt.bl
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	start := time.Now()
	var limit <-chan time.Time
	if _, ok := ctx.Deadline(); !ok && expired == nil && bp.maxWait > 0 {
		t := time.NewTimer(bp.maxWait)
		defer t.Stop()
		limit = t.C
	}
	counted := false
	for {
		ch := b.wake()
		if !b.running.Load() {
			bp.startMonitor(pt)
		}
		if b.off.Load() {
			return nil
		}
		if bp.fresh(b, n, time.Now().UnixNano()) {
			if done, err := bp.decide(pt, n); done {
				return err
			}
			if !counted {
				counted = true
				bp.stats.backlogWaits.Add(1)
			}
		}
		full := func() *bus.BacklogError {
			return &bus.BacklogError{Topic: pt.name, Backlog: b.estimate(), Limit: bp.limit, Waited: time.Since(start)}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			bp.stats.backlogFull.Add(1)
			return fmt.Errorf("producer: write to %s: %w while waiting for room: %w", pt.root().name, ctx.Err(), full())
		case <-expired:
			bp.stats.backlogFull.Add(1)
			bp.stats.timeouts.Add(1)
			return fmt.Errorf("producer: write to %s: %w (%w) while waiting for room: %w", pt.root().name, bus.ErrTimeout, context.DeadlineExceeded, full())
		case <-limit:
			bp.stats.backlogFull.Add(1)
			return fmt.Errorf("producer: write to %s: %w", pt.root().name, full())
		case <-bp.closing:
			return fmt.Errorf("producer: write to %s: %w", pt.root().name, bus.ErrClosed)
		}
	}
}

// dropped counts n entries that DropOldest's write trims unread (an
// estimate: the stream held more unfinished entries than its cap) and
// warns at most every dropWarnEvery per stream.
func (bp *pressure) dropped(pt *topic, n int64) {
	if n <= 0 {
		return
	}
	bp.stats.backlogDropped.Add(uint64(n))
	now := time.Now().UnixNano()
	b := &pt.bl
	if last := b.dropWarn.Load(); now-last >= int64(dropWarnEvery) && b.dropWarn.CompareAndSwap(last, now) {
		bp.log.Warn().Str("stream", pt.key).Int64("backlog", b.estimate()).Int64("max_len", bp.limit).
			Uint64("dropped_total", bp.stats.backlogDropped.Load()).
			Msg("backlog past StreamMaxLen: writes trim entries no worker has finished (Backpressure DropOldest)")
	}
}

// startMonitor starts pt's monitor unless one runs.
func (bp *pressure) startMonitor(pt *topic) {
	if !pt.bl.running.CompareAndSwap(false, true) {
		return
	}
	if !bp.bg.run(func(ctx context.Context) { bp.monitor(ctx, pt) }) {
		pt.bl.running.Store(false) // closing
	}
}

// monitor measures pt's backlog until the stream goes unused for
// monitorIdle with nobody waiting, or the producer closes.
func (bp *pressure) monitor(ctx context.Context, pt *topic) {
	b := &pt.bl
	var prev int64 = -1
	var prevAt time.Time
	for {
		s0 := b.reserved.Load()
		mctx, cancel := context.WithTimeout(ctx, measureTimeout)
		bl, err := bp.port.MeasureBacklog(mctx, pt.key)
		cancel()
		if ctx.Err() != nil {
			b.running.Store(false)
			b.broadcast()
			return
		}
		now := time.Now()
		var interval time.Duration
		switch {
		case redisx.IsPermission(err):
			// A user without XLEN or XINFO GROUPS on the stream (a
			// producer role from before backpressure): writes go on
			// without it, as they did.
			bp.log.Warn().Err(err).Str("stream", pt.key).Msg("cannot measure the topic's backlog: no backpressure for it (grant the producer role of this release: bus-worker acl)")
			b.off.Store(true)
			b.running.Store(false)
			b.broadcast()
			return
		case err != nil:
			// Redis did not answer: the writes will tell their callers.
			// Let them go ahead on the last measurement's estimate.
			b.measured.Store(now.UnixNano())
			interval = 100 * time.Millisecond
		default:
			u := bl.Unfinished()
			b.offset.Store(u - s0)
			b.base.Store(s0)
			b.measured.Store(now.UnixNano())
			interval = bp.next(b, u, prev, now.Sub(prevAt))
			prev, prevAt = u, now
		}
		b.broadcast()
		if b.waiting.Load() > 0 {
			interval = fastPoll
		} else if now.UnixNano()-b.used.Load() > int64(monitorIdle) {
			b.running.Store(false)
			// A write that saw running true after its last check would
			// go unmeasured: take the monitor back if one came.
			if now.UnixNano()-b.used.Load() > int64(monitorIdle) || !b.running.CompareAndSwap(false, true) {
				return
			}
		}
		t := time.NewTimer(interval)
		select {
		case <-t.C:
		case <-b.kicker():
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			b.running.Store(false)
			b.broadcast()
			return
		}
	}
}

// next is the interval to the next measurement of b after one of u
// unfinished entries (prev, dt ago; prev < 0: none): a quarter of the time
// the growth seen since prev would take to fill the headroom left, within
// [fastPoll, slowPoll]; 100 ms past half the limit without growth.
func (bp *pressure) next(b *backlog, u, prev int64, dt time.Duration) time.Duration {
	head := bp.limit - b.estimate()
	if head <= 0 {
		return fastPoll
	}
	if prev >= 0 && u > prev && dt > 0 {
		perSec := float64(u-prev) / dt.Seconds()
		d := time.Duration(float64(head) / perSec / 4 * float64(time.Second))
		return min(max(d, fastPoll), slowPoll)
	}
	if head < bp.limit/2 {
		return 100 * time.Millisecond
	}
	return slowPoll
}
