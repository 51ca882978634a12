package consumer

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// beatInterval is how often a consumer announces itself in its topic's
// presence set; presencePrune is how long a member may stay silent before a
// live one removes it (a worker that died without leaving).
const (
	beatInterval  = 5 * time.Second
	presencePrune = time.Hour
)

// membership is the consumer's place in its group and in its topic's
// presence set (bus.Keys.Workers), where producers look for a worker: it
// joins (creating the group if missing), beats while Run runs, and leaves
// when Run ends.
type membership struct {
	*env
	presence string      // the topic's presence set
	member   string      // this consumer in it: "<group> <name>"
	joined   atomic.Bool // joined since Run began: leave at the end
}

// join creates the group on pt (if missing) and joins it: the consumer is
// then listed in the group and in the topic's presence set.
func (m *membership) join(ctx context.Context, pt *part) error {
	if err := m.port.CreateGroup(ctx, pt.key, m.cfg.Group, pt.start); err != nil {
		return err
	}
	m.stats.groupsCreated.Add(1)
	if err := m.port.Join(ctx, pt.key, m.cfg.Group, m.cfg.Name, m.presence, m.member, time.Now(), presencePrune); err != nil {
		if !redisx.IsRedisReply(err) {
			return fmt.Errorf("consumer: join %s on %s: %w", m.cfg.Group, pt.key, err)
		}
		// Refused (an ACL without the presence key): serve all the same;
		// producers then rely on the group's consumers.
		m.log.Warn().Err(err).Str("key", m.presence).Msg("cannot announce this worker; producers may not see it until it has read an entry")
	}
	m.joined.Store(true)
	return nil
}

// run announces the consumer every beatInterval while ctx lives, so
// producers see a worker for the topic (producer.Config.ResponderIdle).
// Unreachable Redis is the reader's to report; a refused write (an ACL
// without the presence key) is logged once until a beat succeeds again.
func (m *membership) run(ctx context.Context) {
	t := time.NewTicker(beatInterval)
	defer t.Stop()
	refused := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := m.port.Beat(ctx, m.presence, m.member, time.Now(), presencePrune)
		switch {
		case err == nil:
			refused = false
		case redisx.IsRefused(err) && !refused:
			refused = true
			m.log.Warn().Err(err).Str("key", m.presence).Msg("Redis refuses this worker's announcements; producers may not see it while it is idle (logged once until it works again)")
		}
	}
}

// leave takes the consumer, if it joined, out of the presence set and,
// from each of the streams keys where it holds no pending entries, out of
// its group: a worker stopped on purpose leaves no ghost in stats and no
// responder that is not there. Bounded to 2 s.
func (m *membership) leave(ctx context.Context, keys []string) {
	if !m.joined.Swap(false) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for _, key := range keys {
		removed, err := m.port.Leave(ctx, key, m.presence, m.cfg.Group, m.cfg.Name, m.member)
		switch {
		case err != nil:
			m.log.Warn().Err(err).Str("stream", key).Msg("could not leave the group; other workers remove this consumer once it is idle and holds nothing")
		case removed:
			m.log.Info().Str("stream", key).Str("group", m.cfg.Group).Str("consumer", m.cfg.Name).Msg("left the group")
		default:
			m.log.Info().Str("stream", key).Str("consumer", m.cfg.Name).Msg("stays in the group: it holds pending entries, for another consumer to reclaim")
		}
	}
}
