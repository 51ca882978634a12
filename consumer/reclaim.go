package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// workerSlot tells the heartbeat what one worker is running. Each worker
// owns its slot; the heartbeat reads it every ClaimIdle/3.
type workerSlot struct {
	mu     sync.Mutex
	p      *part  // the entry's partition
	id     string // entry id; "" when idle
	readAt int64  // unix nanoseconds when the entry was read

	// A request's cancel token, and what cancels its handler's ctx (see
	// cancelRunning); zero for events.
	token     codec.Token
	dc        *deadlineCtx
	cancel    context.CancelCauseFunc // when dc is nil
	cancelled bool                    // cancelRunning cancelled it
}

// cancelHandler cancels the handler's ctx with cause (under s.mu).
func (s *workerSlot) cancelHandler(cause error) {
	switch {
	case s.dc != nil:
		s.dc.cancel(cause)
	case s.cancel != nil:
		s.cancel(cause)
	}
}

func (s *workerSlot) set(p *part, id string, readAt int64) {
	s.mu.Lock()
	s.p, s.id, s.readAt = p, id, readAt
	s.token, s.dc, s.cancel, s.cancelled = codec.Token{}, nil, nil, false
	s.mu.Unlock()
}

// clear marks the slot idle and reports whether its request was cancelled
// while it ran.
func (s *workerSlot) clear() bool {
	s.mu.Lock()
	cancelled := s.cancelled
	s.p, s.id, s.readAt = nil, "", 0
	s.token, s.dc, s.cancel, s.cancelled = codec.Token{}, nil, nil, false
	s.mu.Unlock()
	return cancelled
}

// setRequest is set for a request whose handler ctx dc (or cancel, when
// dc is nil) cancels.
func (s *workerSlot) setRequest(p *part, id string, readAt int64, token *codec.Token, dc *deadlineCtx, cancel context.CancelCauseFunc) {
	s.mu.Lock()
	s.p, s.id, s.readAt = p, id, readAt
	s.token, s.dc, s.cancel, s.cancelled = *token, dc, cancel, false
	s.mu.Unlock()
}

func (s *workerSlot) get() (*part, string, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p, s.id, s.readAt
}

// reclaimLoop takes over entries other consumers left pending longer than
// ClaimIdle (XAUTOCLAIM, cursor carried forward) and handles them like new
// ones; past MaxDeliveries they go to the dead-letter stream. It claims at
// most as many entries as handler slots are free, and each claimed entry
// waits for a slot like a read one. It returns when ctx ends.
func (c *Consumer) reclaimLoop(ctx context.Context, pt *part, slots chan struct{}, jobs chan<- *job, a *acker) {
	t := time.NewTicker(c.cfg.Reclaim.Interval)
	defer t.Stop()
	cursor := "0-0"
	out := redisx.Outage{Log: c.log, What: "reclaimer " + pt.key}
	var lastCleanup time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.enforceRetention(ctx, pt)
		if c.cfg.Reclaim.ConsumerIdleTimeout > 0 && time.Since(lastCleanup) >= min(c.cfg.Reclaim.ConsumerIdleTimeout/4, time.Minute) {
			lastCleanup = time.Now()
			c.removeIdleConsumers(ctx, pt)
		}
		for ctx.Err() == nil { // keep going while full batches come back
			// The read loop may hold the free slots while it blocks, so size
			// the claim by what is in flight rather than by free tokens.
			n := min(c.cfg.Concurrency-int(c.inFlight.Load()), c.cfg.Reclaim.Batch)
			if n <= 0 {
				break
			}
			got, next, err := c.reclaimOnce(ctx, pt, cursor, n, slots, jobs, a)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, bus.ErrNoGroup) && !c.fail(err, "XAUTOCLAIM "+pt.key) { // the read loop recreates a lost group
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

// removeIdleConsumers deletes other consumers idle longer than
// ConsumerIdleTimeout with nothing pending.
func (c *Consumer) removeIdleConsumers(ctx context.Context, pt *part) {
	list, err := redisx.Consumers(ctx, c.c.Redis(), pt.key, c.cfg.Group)
	if err != nil {
		c.maintenanceFailed(pt, "list consumers", err)
		return
	}
	for _, ci := range list {
		if ci.Name == c.cfg.Name || ci.Pending != 0 || ci.Idle < c.cfg.Reclaim.ConsumerIdleTimeout {
			continue
		}
		n, err := redisx.DeleteConsumer(ctx, c.c.Redis(), pt.key, c.cfg.Group, ci.Name)
		switch {
		case err != nil:
			c.maintenanceFailed(pt, "remove idle consumer "+ci.Name, err)
			return
		case n > 0:
			// It read entries between the listing and the delete: they left
			// the pending list with it. Loud, because it should not happen
			// to a consumer idle for ConsumerIdleTimeout.
			c.log.Error().Str("consumer", ci.Name).Int64("pending", n).Msg("removed an idle consumer that had just read entries")
		default:
			c.stats.consumersRemoved.Add(1)
			c.log.Info().Str("consumer", ci.Name).Dur("idle", ci.Idle).Msg("removed idle consumer")
		}
	}
}

// maintenanceFailed reports a failed housekeeping command. Redis being
// unreachable is left to the reclaimer's outage log; an error reply (a
// refused command, a NOGROUP apart) means a misconfiguration and is logged.
func (c *Consumer) maintenanceFailed(pt *part, what string, err error) {
	if redisx.IsRedisReply(err) && !redisx.IsNoGroup(err) {
		c.log.Warn().Err(err).Str("stream", pt.key).Str("op", what).Msg("housekeeping refused by Redis")
	}
}

// enforceRetention trims the topic to the configured retention, if any.
func (c *Consumer) enforceRetention(ctx context.Context, pt *part) {
	if c.cfg.Retention.MaxLen <= 0 && c.cfg.Retention.MaxAge <= 0 {
		return
	}
	n, err := redisx.Trim(ctx, c.c.Redis(), pt.key, c.cfg.Retention.MaxLen, c.cfg.Retention.MaxAge)
	switch {
	case err != nil:
		c.maintenanceFailed(pt, "retention trim", err)
	case n > 0:
		c.stats.trimmed.Add(uint64(n))
	}
}

// reclaimOnce claims up to n entries from cursor and routes each once it
// has a handler slot; it returns how many it claimed and the next cursor.
// Claimed entries it cannot route before ctx ends stay pending (ours), and
// are reclaimed again after ClaimIdle.
func (c *Consumer) reclaimOnce(ctx context.Context, pt *part, cursor string, n int, slots chan struct{}, jobs chan<- *job, a *acker) (int, string, error) {
	next, entries, deleted, err := redisx.AutoClaim(ctx, c.c.Redis(), pt.key, c.cfg.Group, c.cfg.Name, c.cfg.Reclaim.ClaimIdle, cursor, int64(n))
	if err != nil {
		return 0, cursor, err
	}
	if len(deleted) > 0 {
		// Trimmed while pending: Redis dropped them from the pending list
		// as it reported them; nothing is left to handle or retry.
		c.stats.deletedPending.Add(uint64(len(deleted)))
		c.log.Warn().Int("entries", len(deleted)).Str("stream", pt.key).Msg("pending entries were trimmed before anyone handled them")
	}
	if len(entries) == 0 {
		return 0, next, nil
	}
	// Delayed retries of a consumer that died: they wait for their due
	// time here (a pass of the delay loop claims them then).
	due, err := redisx.RetryDue(ctx, c.c.Redis(), pt.retryKey, idsOf(entries))
	if err != nil {
		return len(entries), next, fmt.Errorf("retry due times: %w", err)
	}
	now := time.Now().UnixMilli()
	ready := entries[:0]
	for i := range entries {
		if due[i] > now+50 { // not yet (Redis's clock may run a little ahead)
			c.waiting.add(pt, entries[i].ID)
			continue
		}
		ready = append(ready, entries[i])
	}
	return len(entries), next, c.handleClaimed(ctx, pt, ready, slots, jobs, a)
}

// handleClaimed routes entries this consumer just claimed (reclaimed, or
// due retries), each once it has a handler slot; past MaxDeliveries they
// go to the dead-letter stream. Entries it cannot route before ctx ends
// stay pending (ours), and are reclaimed again after ClaimIdle.
func (c *Consumer) handleClaimed(ctx context.Context, pt *part, entries []redisx.Entry, slots chan struct{}, jobs chan<- *job, a *acker) error {
	if len(entries) == 0 {
		return nil
	}
	deliveries := map[string]int64{}
	pend, err := redisx.PendingOf(ctx, c.c.Redis(), pt.key, c.cfg.Group, entries[0].ID, entries[len(entries)-1].ID, int64(len(entries)), c.cfg.Name)
	if err != nil {
		return fmt.Errorf("delivery counts: %w", err)
	}
	for _, p := range pend {
		deliveries[p.ID] = p.Deliveries
	}
	for i := range entries {
		if !c.takeSlot(ctx, slots) {
			return nil
		}
		e := &entries[i]
		attempt := int(deliveries[e.ID])
		if attempt == 0 {
			attempt = 1 // not listed: acknowledged meanwhile; handling is harmless
		}
		c.stats.reclaimed.Add(1)
		if attempt > c.cfg.Retry.MaxDeliveries {
			c.stats.received.Add(1)
			c.inFlight.Add(1)
			c.warnEntry(entryWarning{id: e.ID, attempt: attempt, reason: "max_deliveries",
				msg: "not completed after MaxDeliveries deliveries (its workers died or timed out): dead-lettered"})
			a.addAsync(completion{p: pt, id: e.ID, dead: c.deadFields(e, attempt-1, "max_deliveries",
				fmt.Sprintf("not completed after %d deliveries (MaxDeliveries %d)", attempt-1, c.cfg.Retry.MaxDeliveries))})
			continue
		}
		c.route(pt, e, time.Now(), attempt, jobs, a)
	}
	return nil
}

// heartbeatLoop keeps entries whose handler runs long from being reclaimed:
// every ClaimIdle/3 it resets the idle time of this consumer's entries that
// were read more than ClaimIdle/3 ago and are still being handled (one
// round of commands per partition that has such entries).
func (c *Consumer) heartbeatLoop(ctx context.Context, running []workerSlot) {
	every := c.cfg.Reclaim.ClaimIdle / 3
	t := time.NewTicker(every)
	defer t.Stop()
	byPart := map[*part][]string{}
	out := redisx.Outage{Log: c.log, What: "heartbeat " + c.key}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		clear(byPart)
		c.waiting.appendTo(byPart)
		old := time.Now().Add(-every).UnixNano()
		for i := range running {
			if pt, id, readAt := running[i].get(); id != "" && readAt < old {
				byPart[pt] = append(byPart[pt], id)
			}
		}
		failed := false
		for pt, ids := range byPart {
			if err := c.touch(ctx, pt, ids); err != nil {
				if ctx.Err() == nil && !c.fail(err, "XCLAIM (heartbeat) "+pt.key) {
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
func (c *Consumer) touch(ctx context.Context, pt *part, ids []string) error {
	mine, err := redisx.PendingOf(ctx, c.c.Redis(), pt.key, c.cfg.Group, "-", "+", int64(c.cfg.Concurrency)+int64(len(ids)), c.cfg.Name)
	if err != nil {
		return err
	}
	owned := make(map[string]bool, len(mine))
	for _, p := range mine {
		owned[p.ID] = true
	}
	keep := ids[:0]
	var gone []string
	for _, id := range ids {
		if owned[id] {
			keep = append(keep, id)
		} else {
			gone = append(gone, id)
		}
	}
	if gone != nil {
		c.waiting.drop(pt, gone...) // claimed by another worker, or finished
	}
	if err := redisx.Touch(ctx, c.c.Redis(), pt.key, c.cfg.Group, c.cfg.Name, c.cfg.Reclaim.ClaimIdle/6, keep...); err != nil {
		return err
	}
	c.stats.heartbeats.Add(uint64(len(keep)))
	return nil
}
