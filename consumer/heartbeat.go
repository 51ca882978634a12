package consumer

import (
	"context"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// heartbeat keeps entries whose handler runs long, and delayed retries
// waiting for their due time, from being reclaimed: every ClaimIdle/3 it
// resets the idle time of this consumer's entries that were read more than
// ClaimIdle/3 ago and are still being handled, and of its waiting retries
// (one round of commands per partition that has such entries). It outlives
// Run's ctx until the workers are done.
type heartbeat struct {
	*env
	waiting *waitingSet
}

// run beats for the workers' slots running while ctx lives.
func (h *heartbeat) run(ctx context.Context, running []workerSlot, queued *queuedSet) {
	every := h.cfg.Reclaim.ClaimIdle / 3
	t := time.NewTicker(every)
	defer t.Stop()
	byPart := map[*part][]string{}
	out := redisx.Outage{Log: h.log, What: "heartbeat " + h.key}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		clear(byPart)
		h.waiting.appendTo(byPart)
		old := time.Now().Add(-every).UnixNano()
		queued.appendTo(byPart, old)
		for i := range running {
			if pt, id, readAt := running[i].get(); id != "" && readAt < old {
				byPart[pt] = append(byPart[pt], id)
			}
		}
		failed := false
		for pt, ids := range byPart {
			if err := h.touch(ctx, pt, ids); err != nil {
				if ctx.Err() == nil && !h.fail(err, "XCLAIM (heartbeat) "+pt.key) {
					out.Failed(err) // long handlers may be reclaimed meanwhile
				}
				failed = true
			}
		}
		if len(byPart) > 0 && !failed {
			out.OK()
		}
	}
}

// touch resets the idle time of those ids of pt this consumer still owns.
func (h *heartbeat) touch(ctx context.Context, pt *part, ids []string) error {
	// Asked id by id: a range read of this consumer's pending entries
	// could miss some (more pending than it asked for: entries read
	// beyond the free slots, claimed ones not yet routed).
	mine, err := h.port.Deliveries(ctx, pt.key, h.cfg.Group, h.cfg.Name, ids)
	if err != nil {
		return err
	}
	keep := ids[:0]
	var gone []string
	for i, id := range ids {
		if mine[i] > 0 {
			keep = append(keep, id)
		} else {
			gone = append(gone, id)
		}
	}
	if gone != nil {
		h.waiting.drop(pt, gone...) // claimed by another worker, or finished
	}
	if err := h.port.Touch(ctx, pt.key, h.cfg.Group, h.cfg.Name, h.cfg.Reclaim.ClaimIdle/6, keep...); err != nil {
		return err
	}
	h.stats.heartbeats.Add(uint64(len(keep)))
	return nil
}
