package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// reclaimer takes over entries other consumers left pending longer than
// ClaimIdle (XAUTOCLAIM, cursor carried forward) and hands them to the
// router like new ones; past MaxDeliveries they go to the dead-letter
// stream. One runs per partition. Between passes the janitor tidies the
// partition.
type reclaimer struct {
	*env
	route   *router
	jan     *janitor
	waiting *waitingSet // delayed retries wait there for their due time
}

// run reclaims pt's abandoned entries every Reclaim.Interval while ctx
// lives. It claims at most as many entries as handler slots are free, and
// each claimed entry waits for a slot like a read one.
func (rc *reclaimer) run(ctx context.Context, pt *part, p *pipe) {
	t := time.NewTicker(rc.cfg.Reclaim.Interval)
	defer t.Stop()
	cursor := "0-0"
	out := redisx.Outage{Log: rc.log, What: "reclaimer " + pt.key}
	var lastCleanup time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rc.jan.tidy(ctx, pt, &lastCleanup)
		for ctx.Err() == nil { // keep going while full batches come back
			// The reader may hold the free slots while it blocks, so size
			// the claim by what is in flight rather than by free tokens.
			n := min(rc.cfg.held()-int(rc.inFlight.Load()), rc.cfg.Reclaim.Batch)
			if n <= 0 {
				break
			}
			// Reclaimed entries start handlers too: they take permits of
			// the topic's limits, as reads do.
			g := rc.lim.grant(ctx, n)
			if g.n == 0 {
				break
			}
			n = g.n
			got, next, err := rc.once(ctx, pt, cursor, n, p)
			g.got = got
			rc.lim.filled(g)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, bus.ErrNoGroup) && !rc.fail(err, "XAUTOCLAIM "+pt.key) { // the reader recreates a lost group
					out.Failed(err)
				}
				break
			}
			out.OK()
			cursor = next
			if got < n || cursor == "0-0" {
				break
			}
		}
	}
}

// once claims up to n entries from cursor and routes each once it has a
// handler slot; it returns how many it claimed and the next cursor.
// Claimed entries it cannot route before ctx ends stay pending (ours), and
// are reclaimed again after ClaimIdle.
func (rc *reclaimer) once(ctx context.Context, pt *part, cursor string, n int, p *pipe) (int, string, error) {
	next, entries, deleted, err := rc.port.AutoClaim(ctx, pt.key, rc.cfg.Group, rc.cfg.Name, rc.cfg.Reclaim.ClaimIdle, cursor, int64(n))
	if err != nil {
		return 0, cursor, err
	}
	if len(deleted) > 0 {
		// Trimmed while pending: Redis dropped them from the pending list
		// as it reported them; nothing is left to handle or retry.
		rc.stats.deletedPending.Add(uint64(len(deleted)))
		rc.log.Warn().Int("entries", len(deleted)).Str("stream", pt.key).Msg("pending entries were trimmed before anyone handled them")
	}
	if len(entries) == 0 {
		return 0, next, nil
	}
	// Delayed retries of a consumer that died: they wait for their due
	// time here (a pass of the delayer claims them then).
	due, err := rc.port.RetryDue(ctx, pt.retryKey, idsOf(entries))
	if err != nil {
		return len(entries), next, fmt.Errorf("retry due times: %w", err)
	}
	now := time.Now().UnixMilli()
	ready := entries[:0]
	for i := range entries {
		if due[i] > now+50 { // not yet (Redis's clock may run a little ahead)
			rc.waiting.add(pt, entries[i].ID)
			continue
		}
		ready = append(ready, entries[i])
	}
	return len(entries), next, rc.route.claimed(ctx, pt, ready, p)
}
