package consumer

import (
	"context"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// janitor tidies a partition between reclaim passes: it trims the topic to
// the configured retention (Config.Retention.MaxLen or MaxAge) and removes
// other consumers idle longer than Reclaim.ConsumerIdleTimeout with
// nothing pending (dead workers leave their names behind).
type janitor struct {
	*env
}

// tidy trims pt and, at most every ConsumerIdleTimeout/4 (and every
// minute) as *last records, removes idle consumers.
func (j *janitor) tidy(ctx context.Context, pt *part, last *time.Time) {
	j.enforceRetention(ctx, pt)
	j.repairLag(ctx, pt)
	if idle := j.cfg.Reclaim.ConsumerIdleTimeout; idle > 0 && time.Since(*last) >= min(idle/4, time.Minute) {
		*last = time.Now()
		j.removeIdleConsumers(ctx, pt)
	}
}

// removeIdleConsumers deletes other consumers idle longer than
// ConsumerIdleTimeout with nothing pending.
func (j *janitor) removeIdleConsumers(ctx context.Context, pt *part) {
	list, err := j.port.Consumers(ctx, pt.key, j.cfg.Group)
	if err != nil {
		j.maintenanceFailed(pt, "list consumers", err)
		return
	}
	for _, ci := range list {
		if ci.Name == j.cfg.Name || ci.Pending != 0 || ci.Idle < j.cfg.Reclaim.ConsumerIdleTimeout {
			continue
		}
		n, err := j.port.DeleteConsumer(ctx, pt.key, j.cfg.Group, ci.Name)
		switch {
		case err != nil:
			j.maintenanceFailed(pt, "remove idle consumer "+ci.Name, err)
			return
		case n > 0:
			// It read entries between the listing and the delete: they left
			// the pending list with it. Loud, because it should not happen
			// to a consumer idle for ConsumerIdleTimeout.
			j.log.Error().Str("consumer", ci.Name).Int64("pending", n).Msg("removed an idle consumer that had just read entries")
		default:
			j.stats.consumersRemoved.Add(1)
			j.log.Info().Str("consumer", ci.Name).Dur("idle", ci.Idle).Msg("removed idle consumer")
		}
	}
}

// maintenanceFailed reports a failed housekeeping command. Redis being
// unreachable is left to the reclaimer's outage log; an error reply (a
// refused command, a NOGROUP apart) means a misconfiguration and is logged.
func (j *janitor) maintenanceFailed(pt *part, what string, err error) {
	if redisx.IsRedisReply(err) && !redisx.IsNoGroup(err) {
		j.log.Warn().Err(err).Str("stream", pt.key).Str("op", what).Msg("housekeeping refused by Redis")
	}
}

// enforceRetention trims the topic to the configured retention, if any.
func (j *janitor) enforceRetention(ctx context.Context, pt *part) {
	if j.cfg.Retention.MaxLen <= 0 && j.cfg.Retention.MaxAge <= 0 {
		return
	}
	n, err := j.port.Trim(ctx, pt.key, j.cfg.Retention.MaxLen, j.cfg.Retention.MaxAge)
	switch {
	case err != nil:
		j.maintenanceFailed(pt, "retention trim", err)
	case n > 0:
		j.stats.trimmed.Add(uint64(n))
	}
}

// repairLag puts the group's lag right when Redis overcounts it (entries
// trimmed before the group read them: Redis 7 then never counts them as
// read, and producers' backpressure would see a backlog that is not
// there). It does so only when the group has read up to the stream's last
// entry (redisx.RepairLag), so a caught-up worker fixes it on its next
// pass.
func (j *janitor) repairLag(ctx context.Context, pt *part) {
	n, err := j.port.RepairLag(ctx, pt.key, j.cfg.Group)
	switch {
	case err != nil:
		j.maintenanceFailed(pt, "repair lag", err)
	case n != 0:
		j.stats.lagRepaired.Add(1)
		j.log.Info().Str("stream", pt.key).Int64("lag", n).Msg("put the group's lag right (entries had been trimmed before it read them)")
	}
}
