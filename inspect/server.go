package inspect

import (
	"context"
	"fmt"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// Server is what the Redis server says about itself.
type Server struct {
	Version string // "" when it does not say (an embedded miniredis)
	// CPU is the CPU time the server used since it started (user + system),
	// valid when CPUOK: compare two readings to get the CPU a run cost.
	CPU   time.Duration
	CPUOK bool
}

// Server reads the server's version and CPU time in one round trip.
func (i *Inspector) Server(ctx context.Context) (Server, error) {
	s, err := redisx.ServerInfo(ctx, i.c.Redis())
	if err != nil {
		return Server{}, fmt.Errorf("inspect: server info: %w", redisx.Unavailable(err))
	}
	return Server{Version: s.Version, CPU: s.CPU, CPUOK: s.CPUOK}, nil
}

// DeleteTopic deletes a topic's stream, with every entry, consumer group and
// pending entry in it, its dead letters and its workers' presence set, in
// one command. Entries not
// yet handled are lost: it is for tests, benchmarks and retiring a topic,
// not for a topic that workers still serve (they recreate the group and
// start over on new entries).
func (i *Inspector) DeleteTopic(ctx context.Context, topic string) error {
	if err := bus.ValidateName("topic", topic); err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return err
	}
	for _, pn := range ps.names()[1:] {
		if _, err := redisx.Delete(ctx, i.c.Redis(), i.keys.Topic(pn), i.keys.DeadLetter(pn)); err != nil {
			return fmt.Errorf("inspect: delete topic %s: %w", pn, redisx.Unavailable(err))
		}
	}
	if _, err := redisx.Delete(ctx, i.c.Redis(), i.keys.Topic(topic), i.keys.DeadLetter(topic), i.keys.Workers(topic)); err != nil {
		return fmt.Errorf("inspect: delete topic %s: %w", topic, redisx.Unavailable(err))
	}
	if err := redisx.ForgetPartitionCount(ctx, i.c.Redis(), i.keys.Meta(topic)); err != nil {
		return fmt.Errorf("inspect: delete topic %s: %w", topic, redisx.Unavailable(err))
	}
	return nil
}
