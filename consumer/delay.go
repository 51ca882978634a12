package consumer

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// Delays: delayed events (producer.After, producer.At) wait in a sorted set
// per partition until due; handlers' delayed retries (RetryAfter) stay
// pending in the stream, their due time in another sorted set per
// partition. Every worker runs the delayer: it sleeps until the earliest
// due time it knows (from its last pass over the sets, or from a wake
// notice on the control stream that a producer or worker wrote when it
// added an entry) and then, in one script per partition, moves due events
// to the stream and claims due retries for itself (each removed from its
// set first, so one worker gets it). No polling: a pass runs at a due time,
// on a wake-up, or every delayPoll as a safety net for lost wake-ups.

// delayPoll is the longest the delayer sleeps without a known due time.
const delayPoll = 10 * time.Second

// slotWait is how soon the delayer looks again when retries are due
// but every handler slot is taken.
const slotWait = 100 * time.Millisecond

// maxPromote bounds the delayed events one pass moves per partition (a
// full batch runs the next pass at once).
const maxPromote = 512

// waitingSet is the retries this consumer scheduled or reclaimed and still
// owns in Redis (pending, not yet due): the heartbeat keeps them from being
// reclaimed by others before their due time.
type waitingSet struct {
	mu sync.Mutex
	m  map[*part]map[string]struct{}
}

func (w *waitingSet) add(pt *part, id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[*part]map[string]struct{}{}
	}
	if w.m[pt] == nil {
		w.m[pt] = map[string]struct{}{}
	}
	w.m[pt][id] = struct{}{}
}

// drop forgets ids of pt (claimed by a worker, or no longer ours).
func (w *waitingSet) drop(pt *part, ids ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		delete(w.m[pt], id)
	}
	if len(w.m[pt]) == 0 {
		delete(w.m, pt)
	}
}

// appendTo adds the waiting ids to byPart (the heartbeat's list).
func (w *waitingSet) appendTo(byPart map[*part][]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for pt, ids := range w.m {
		for id := range ids {
			byPart[pt] = append(byPart[pt], id)
		}
	}
}

// hasKey reports whether id of the stream key waits (by the key: a part
// is made again by each Run of a Consumer, its waiting retries stay).
func (w *waitingSet) hasKey(key, id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for pt, ids := range w.m {
		if _, ok := ids[id]; ok && pt.key == key {
			return true
		}
	}
	return false
}

func (w *waitingSet) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ids := range w.m {
		n += len(ids)
	}
	return n
}

// delayer runs passes over the partitions' delayed events and retries
// (see above) while Run runs, and schedules the retries handlers ask for.
// Claimed retries go to the router like reclaimed entries, each once it
// has a handler slot.
type delayer struct {
	*env
	topo    *topology
	route   *router
	waiting waitingSet // delayed retries this consumer owns
	// deferred: entries left pending on purpose, for the reclaim after
	// ClaimIdle (handBack leaves them alone)
	deferred deferredSet
}

// retryDelay is the delay of a retry asked with at least d on delivery
// attempt: the larger of d and Retry.Backoff doubled per earlier delivery
// (capped at Retry.BackoffMax), plus up to a twentieth more of jitter (so
// that retries asked for the same moment spread a little, and still come
// within 10% of it).
func (dl *delayer) retryDelay(d time.Duration, attempt int) time.Duration {
	b := dl.cfg.Retry.Backoff
	for i := 1; i < attempt && b < dl.cfg.Retry.BackoffMax; i++ {
		b *= 2
	}
	b = min(b, dl.cfg.Retry.BackoffMax)
	d = max(d, b)
	if j := int64(d / 20); j > 0 {
		d += time.Duration(rand.Int64N(j + 1))
	}
	return d
}

// schedule leaves j's entry pending and records it as due after delay
// (retry set, wake notice); it reports false when Redis refused, in which
// case the entry is still pending and reclaimed after ClaimIdle.
func (dl *delayer) schedule(ctx context.Context, j *job, delay time.Duration) bool {
	pt := j.p
	due, err := dl.port.ScheduleRetry(ctx, pt.retryKey, j.msg.ID, delay)
	if err != nil {
		// Not a reason to stop serving (an ACL from before delayed
		// retries, say): the entry is retried the old way.
		dl.log.Warn().Err(err).Str("entry", j.msg.ID).Msg("cannot schedule the retry: the entry stays pending and is delivered again after ClaimIdle")
		dl.deferred.add(pt, j.msg.ID, dl.cfg.Reclaim.ClaimIdle)
		return false
	}
	dl.waiting.add(pt, j.msg.ID)
	dl.stats.delayedRetries.Add(1)
	dl.wakeAt(ctx, due)
	return true
}

// wakeAt tells every worker of the topic (this one included) that
// something is due at due (unix ms, Redis's clock). Best effort: the
// delayer's poll catches a lost notice.
func (dl *delayer) wakeAt(ctx context.Context, due int64) {
	err := dl.port.AddControl(ctx, dl.keys.Control(dl.cfg.Topic), []redisx.Control{{Op: redisx.OpWake, Until: due}})
	if err != nil && ctx.Err() == nil {
		dl.log.Debug().Err(err).Msg("wake notice not written; workers find the entry on their next pass")
	}
}

// passState is what the delayer keeps between passes.
type passState struct {
	out       redisx.Outage
	refused   bool            // the script was refused (logged once)
	skew      int64           // Redis's clock minus ours (ms), from the last pass
	warnedBad map[string]bool // keys of the wrong type, logged once
}

// run makes passes while ctx lives: at the due time it knows, on a wake
// notice due sooner, or every delayPoll.
func (dl *delayer) run(ctx context.Context, wake <-chan int64, p *pipe) {
	st := passState{out: redisx.Outage{Log: dl.log, What: "delayed entries of " + dl.cfg.Topic}, warnedBad: map[string]bool{}}
	timer := time.NewTimer(0)
	defer timer.Stop()
	var next time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case due := <-wake:
			at := time.UnixMilli(due - st.skew)
			if !at.Before(next) {
				continue // a pass is planned by then
			}
			if d := time.Until(at); d > 0 {
				timer.Reset(d)
				next = at
				continue
			}
		}
		wait, ok := dl.pass(ctx, p, &st)
		if !ok {
			return
		}
		next = time.Now().Add(wait)
		timer.Reset(wait)
	}
}

// pass moves due delayed events to their streams and claims due retries
// (sharing the free handler slots among the partitions) in one script per
// partition, and returns how long to wait for the next pass; false when
// ctx ended.
func (dl *delayer) pass(ctx context.Context, p *pipe, st *passState) (time.Duration, bool) {
	parts := dl.topo.current()
	if len(parts) == 0 {
		return time.Second, true
	}
	keys := make([]redisx.DuePart, len(parts))
	claim := make([]int64, len(parts))
	free := int64(max(0, dl.cfg.held()-int(dl.inFlight.Load())))
	var g grant
	if free > 0 {
		// Due retries start handlers too: they take permits of the
		// topic's limits (none granted: none claimed this pass; due
		// delayed events are moved all the same).
		g, _ = dl.lim.try(ctx, int(free))
		free = int64(g.n)
	}
	for i, pt := range parts {
		keys[i] = redisx.DuePart{Delayed: pt.delayedKey, Stream: pt.key, Retry: pt.retryKey}
		claim[i] = free / int64(len(parts))
		if int64(i) < free%int64(len(parts)) {
			claim[i]++
		}
	}
	res := dl.port.Due(ctx, keys, dl.cfg.Group, dl.cfg.Name, maxPromote, claim, redisx.MaxLen(dl.cfg.Retention.StreamMaxLen))
	defer func() { // after routing: the claimed retries are in flight
		for i := range res {
			g.got += len(res[i].Claimed)
		}
		dl.lim.filled(g)
	}()
	wait := delayPoll
	failed, denied := false, false
	for i, r := range res {
		if r.Err != nil {
			if ctx.Err() != nil {
				return 0, false
			}
			if redisx.IsRefused(r.Err) {
				// Refused (an ACL without the delayed sets or their
				// functions): serve all the same, without delays.
				if !st.refused {
					dl.log.Warn().Err(r.Err).Str("stream", parts[i].key).Msg("Redis refuses the delayed-entries script: delayed events and retries are not delivered by this worker (logged once)")
				}
				st.refused, denied = true, true
				continue
			}
			st.out.Failed(r.Err)
			failed = true
			continue
		}
		wait = min(wait, dl.settle(ctx, parts[i], &r, claim[i], p, st, &failed))
	}
	switch {
	case failed:
		st.out.Backoff(ctx)
		wait = 0
	case denied:
		wait = 30 * time.Second
	default:
		st.out.OK()
		st.refused = false
	}
	return wait, true
}

// settle takes one partition's result of a pass: it counts the promoted
// events, hands the claimed retries to the router, and returns how soon
// the next pass is due for this partition (it sets *failed when routing
// failed).
func (dl *delayer) settle(ctx context.Context, pt *part, r *redisx.DueResult, claim int64, p *pipe, st *passState, failed *bool) time.Duration {
	st.skew = r.Now - time.Now().UnixMilli()
	for _, bad := range []struct {
		is   bool
		key  string
		what string
	}{{r.BadDelayed, pt.delayedKey, "delayed events wait there"}, {r.BadRetry, pt.retryKey, "retried entries wait for ClaimIdle instead"}} {
		if bad.is && !st.warnedBad[bad.key] {
			st.warnedBad[bad.key] = true
			dl.log.Warn().Str("key", bad.key).Msg("not a sorted set (someone replaced it): left alone, " + bad.what + " (logged once)")
		}
	}
	if r.Moved > 0 {
		dl.stats.promoted.Add(uint64(r.Moved))
	}
	wait := delayPoll
	if r.Moved >= maxPromote || (claim > 0 && int64(len(r.Claimed)) >= claim) {
		wait = 0 // more may be due
	}
	if r.Next >= 0 {
		w := time.Duration(max(0, r.Next-r.Now)) * time.Millisecond
		if w == 0 && claim == 0 {
			w = slotWait // due retries, but no free handler slot: look again soon
		}
		wait = min(wait, w)
	}
	if len(r.Claimed) > 0 {
		dl.waiting.drop(pt, idsOf(r.Claimed)...)
		if err := dl.route.claimed(ctx, pt, r.Claimed, p); err != nil && ctx.Err() == nil {
			st.out.Failed(err)
			*failed = true
		}
	}
	return wait
}
