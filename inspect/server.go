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
	// Memory is the memory Redis uses (used_memory) and MaxMemory its
	// limit (0: none), in bytes; Clients its connections, Uptime how long
	// it has run, Role master or slave. Zero when it does not say.
	Memory, MaxMemory int64
	Clients           int64
	Uptime            time.Duration
	Role              string
}

func server(s redisx.Server) Server {
	return Server{Version: s.Version, CPU: s.CPU, CPUOK: s.CPUOK, Memory: s.Memory, MaxMemory: s.MaxMemory,
		Clients: s.Clients, Uptime: s.Uptime, Role: s.Role}
}

// Server reads the server's version, CPU time, memory, clients and role
// in one round trip.
func (i *Inspector) Server(ctx context.Context) (Server, error) {
	s, err := i.port.ServerInfo(ctx)
	if err != nil {
		return Server{}, fmt.Errorf("inspect: server info: %w", redisx.Unavailable(err))
	}
	return server(s), nil
}

// NodeServer is one Redis master's facts (see Servers).
type NodeServer struct {
	Addr string // "" on a standalone server
	Server
}

// Servers reads each master's version and CPU time (one entry on a
// standalone server or Sentinel's master; every master of a Redis
// Cluster, in address order).
func (i *Inspector) Servers(ctx context.Context) ([]NodeServer, error) {
	nodes, err := i.port.ServerInfos(ctx)
	if err != nil {
		return nil, fmt.Errorf("inspect: server info: %w", redisx.Unavailable(err))
	}
	out := make([]NodeServer, len(nodes))
	for k, s := range nodes {
		out[k] = NodeServer{Addr: s.Addr, Server: server(s)}
	}
	return out, nil
}

// DeleteTopic deletes a topic's streams (every partition's), with every
// entry, consumer group and pending entry in them, their dead letters and
// its workers' presence set, its delayed events and retries, its control
// stream, and forgets its partition count (its cache
// generation stays, so stored answers are never served again). Entries not
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
	for k, pn := range ps.names() {
		for l := 1; l < ps.Levels; l++ { // priority levels' streams
			if _, err := i.port.Delete(ctx, i.keys.Level(pn, l), i.keys.LevelDelayed(pn, l), i.keys.LevelRetry(pn, l)); err != nil {
				return fmt.Errorf("inspect: delete topic %s: %w", pn, redisx.Unavailable(err))
			}
		}
		if k == 0 {
			continue
		}
		if _, err := i.port.Delete(ctx, i.keys.Topic(pn), i.keys.DeadLetter(pn), i.keys.Delayed(pn), i.keys.Retry(pn)); err != nil {
			return fmt.Errorf("inspect: delete topic %s: %w", pn, redisx.Unavailable(err))
		}
	}
	if _, err := i.port.Delete(ctx, i.keys.Topic(topic), i.keys.DeadLetter(topic), i.keys.Workers(topic),
		i.keys.Delayed(topic), i.keys.Retry(topic)); err != nil {
		return fmt.Errorf("inspect: delete topic %s: %w", topic, redisx.Unavailable(err))
	}
	if _, err := i.port.Delete(ctx, i.keys.Control(topic), i.keys.LimitRate(topic), i.keys.LimitTokens(topic), i.keys.LimitLeases(topic), i.keys.LimitExpiry(topic)); err != nil {
		return fmt.Errorf("inspect: delete topic %s: %w", topic, redisx.Unavailable(err))
	}
	if err := i.port.ForgetPartitionCount(ctx, i.keys.Meta(topic)); err != nil {
		return fmt.Errorf("inspect: delete topic %s: %w", topic, redisx.Unavailable(err))
	}
	return nil
}

// ClusterNode is one node of a Redis Cluster (see ClusterNodes).
type ClusterNode = redisx.ClusterNode

// ClusterNodes lists the nodes of the Redis Cluster the client reaches
// (an error on a standalone server).
func (i *Inspector) ClusterNodes(ctx context.Context) ([]ClusterNode, error) {
	n, err := i.port.ClusterNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("inspect: cluster nodes: %w", redisx.Unavailable(err))
	}
	return n, nil
}

// KeySlot returns the Redis Cluster hash slot of key.
func (i *Inspector) KeySlot(ctx context.Context, key string) (int, error) {
	s, err := i.port.KeySlot(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("inspect: key slot: %w", redisx.Unavailable(err))
	}
	return s, nil
}
