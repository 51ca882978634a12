package consumer

import (
	"context"
	"sync"
	"time"
)

// deferredSet is the entries this Run leaves pending on purpose, to be
// delivered again after ClaimIdle (a failed event, a request failed with
// bus.ErrRetryLater, a retry Redis would not schedule): handBack leaves
// them to that reclaim. Entries older than ClaimIdle are dropped once the
// set grows (another worker has reclaimed them, or will at once).
type deferredSet struct {
	mu    sync.Mutex
	m     map[deferredKey]time.Time
	prune int // the size at which add next drops old entries
}

// deferredKey is an entry by its stream's key (a part is made again by each
// Run of a Consumer; its key stays).
type deferredKey struct {
	key, id string
}

// deferredPrune is the least size at which add drops entries older than
// ClaimIdle; after a pass the next comes at twice the size left, so a
// burst of failures costs amortised O(1) per entry.
const deferredPrune = 4096

func (d *deferredSet) add(pt *part, id string, claimIdle time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[deferredKey]time.Time{}
	}
	now := time.Now()
	if len(d.m) >= max(d.prune, deferredPrune) {
		for k, at := range d.m {
			if now.Sub(at) > claimIdle {
				delete(d.m, k)
			}
		}
		d.prune = 2 * len(d.m)
	}
	d.m[deferredKey{pt.key, id}] = now
}

func (d *deferredSet) has(pt *part, id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.m[deferredKey{pt.key, id}]
	return ok
}

// handBack runs as Run stops, once the handlers are done and the acker
// flushed: the entries this consumer still holds that no handler will
// finish are made due at once in their part's retry set (and every worker
// woken), for any worker of the group to take now instead of after
// ClaimIdle. They are the entries of a read that was in flight when Run's
// ctx ended (Redis delivered them; their reply never reached a handler),
// those read beyond the free slots that ctx's end left without one, and
// those whose handler the shutdown timeout cancelled. Watermill's suite
// found the first kind: a subscription stopped with a read in flight, and
// the next subscription of its group waited ClaimIdle for its entry.
// Entries left pending on purpose (deferred) and waiting retries stay as
// they are. Best effort (2 s): what is not handed back is reclaimed after
// ClaimIdle as before.
func (dl *delayer) handBack(ctx context.Context, parts []*part) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	var last int64
	n := 0
	for _, pt := range parts {
		k, due, err := dl.handBackPart(ctx, pt)
		n += k
		last = max(last, due)
		if err != nil {
			dl.log.Debug().Err(err).Str("stream", pt.key).Msg("stopping: could not hand entries back (they are reclaimed after ClaimIdle)")
			if ctx.Err() != nil {
				break // Redis does not answer: stop within the 2 s
			}
		}
	}
	if n == 0 {
		return
	}
	dl.stats.handedBack.Add(uint64(n))
	dl.wakeAt(ctx, last)
	dl.log.Info().Int("entries", n).Str("topic", dl.cfg.Topic).Msg("stopping: handed back entries read and not handled (due at once for any worker of the group)")
}

// handBackPage is how many of its pending entries handBack lists at a time.
const handBackPage = 512

// handBackPart hands back pt's entries (see handBack), listing this
// consumer's pending entries page by page (waiting retries and deferred
// entries can fill a page); each is first given back the delivery it
// never had (redisx.Uncount), then made due now. It returns how many it
// handed back and the latest due time.
func (dl *delayer) handBackPart(ctx context.Context, pt *part) (int, int64, error) {
	n, last, start := 0, int64(0), "-"
	for {
		pend, err := dl.port.PendingOf(ctx, pt.key, dl.cfg.Group, start, "+", handBackPage, dl.cfg.Name)
		if err != nil {
			return n, last, err
		}
		back := pend[:0:0]
		for _, p := range pend {
			if !dl.deferred.has(pt, p.ID) && !dl.waiting.hasKey(pt.key, p.ID) {
				back = append(back, p)
			}
		}
		if err := dl.port.Uncount(ctx, pt.key, dl.cfg.Group, dl.cfg.Name, back); err != nil {
			return n, last, err
		}
		for _, p := range back {
			due, err := dl.port.ScheduleRetry(ctx, pt.retryKey, p.ID, 0)
			if err != nil {
				return n, last, err
			}
			last = max(last, due)
			n++
		}
		if len(pend) < handBackPage {
			return n, last, nil
		}
		start = "(" + pend[len(pend)-1].ID
	}
}
