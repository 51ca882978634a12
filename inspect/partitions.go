package inspect

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// Partitions describes how a topic is partitioned (docs/cluster.md, "Partitions").
type Partitions struct {
	Topic string `json:"topic"`
	// Count is the number of partitions producers write to (1 for a topic
	// never partitioned).
	Count int `json:"partitions"`
	// Draining counts removed partitions that workers still read until
	// they are drained (then forgotten).
	Draining int `json:"draining"`
	// Lowered is when the count was last lowered (Redis's clock); zero if
	// never.
	Lowered time.Time `json:"lowered,omitzero"`
	// Set reports whether the count was ever set (topic create or
	// set-partitions).
	Set bool `json:"set"`
	// Streams are the keys of the partitions read now, partition 0 first
	// (each partition's priority levels in order).
	Streams []string `json:"streams"`
	// Levels is the topic's priority levels (1: none), Weights their
	// weights (level 0 first) and Strict whether they are served strictly
	// in order (SetScheduling, docs/scheduling.md).
	Levels  int   `json:"priorities"`
	Weights []int `json:"priority_weights,omitempty"`
	Strict  bool  `json:"priority_strict,omitempty"`
	// Shards is how many partitions each tenant writes to (0: tenant
	// fairness off).
	Shards int `json:"fair_shards,omitempty"`
}

// Scheduling is a topic's priority levels and tenant fairness (see
// SetScheduling).
type Scheduling struct {
	// Levels: 1 to bus.MaxPriorities (1: none). Never lowered.
	Levels int
	// Weights, level 0 first (nil: each level twice the next one's);
	// each 1 to 1000.
	Weights []int
	// Strict serves the levels in order: a level is read only when every
	// more urgent one is empty (it starves the others under load).
	Strict bool
	// Shards is how many of the topic's partitions each tenant's entries
	// go to (producer.Tenant; 0: fairness off); at most the partition
	// count when set.
	Shards int
}

func (i *Inspector) partitions(ctx context.Context, topic string) (Partitions, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return Partitions{}, fmt.Errorf("inspect: %w", err)
	}
	m, err := i.port.Partitions(ctx, i.keys.Meta(topic))
	if err != nil {
		return Partitions{}, fmt.Errorf("inspect: partitions of %s: %w", topic, redisx.Unavailable(err))
	}
	p := Partitions{Topic: topic, Count: m.N, Draining: m.Drain - m.N, Lowered: m.Lowered, Set: m.Set, Levels: max(m.Levels, 1), Strict: m.Strict, Shards: m.Shards}
	if p.Levels > 1 {
		p.Weights = m.Weights
	}
	for k := range m.Drain {
		for l := range p.Levels {
			p.Streams = append(p.Streams, i.keys.Level(bus.Partition(topic, k), l))
		}
	}
	return p, nil
}

// ParseWeights parses levels comma-separated priority weights (each 1 to
// 1000), as SetScheduling takes them; FormatWeights is its inverse.
func ParseWeights(s string, levels int) ([]int, error) { return redisx.ParseWeights(s, levels) }

// FormatWeights writes weights as ParseWeights reads them.
func FormatWeights(w []int) string { return redisx.FormatWeights(w) }

// SetScheduling sets a topic's priority levels and tenant fairness (all of
// s: read Partitions first to change one of them). Producers follow within
// about a second and workers within 2 s. Levels can be raised, never
// lowered (bus.ErrInvalidConfig: entries of removed levels would be
// stranded); weights, strict mode and shards change freely, shards up to
// the partition count (a count lowered later below them: each tenant
// writes to every partition).
func (i *Inspector) SetScheduling(ctx context.Context, topic string, s Scheduling) (Partitions, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return Partitions{}, fmt.Errorf("inspect: %w", err)
	}
	if s.Levels < 1 || s.Levels > bus.MaxPriorities {
		return Partitions{}, fmt.Errorf("inspect: %w: priority levels %d out of [1, %d]", bus.ErrInvalidConfig, s.Levels, bus.MaxPriorities)
	}
	if s.Weights != nil {
		if _, err := redisx.ParseWeights(redisx.FormatWeights(s.Weights), s.Levels); err != nil {
			return Partitions{}, fmt.Errorf("inspect: %w: priority weights %w", bus.ErrInvalidConfig, err)
		}
	}
	if s.Shards < 0 || s.Shards > bus.MaxPartitions {
		return Partitions{}, fmt.Errorf("inspect: %w: fair shards %d out of [0, %d]", bus.ErrInvalidConfig, s.Shards, bus.MaxPartitions)
	}
	cur, err := i.partitions(ctx, topic)
	switch {
	case errors.Is(err, bus.ErrCorruptMeta):
		// A malformed setting (written by hand) is replaced: the partition
		// count, if that is what is malformed, stays so.
	case err != nil:
		return Partitions{}, err
	case s.Shards > cur.Count:
		return Partitions{}, fmt.Errorf("inspect: %w: fair shards %d above the partition count %d", bus.ErrInvalidConfig, s.Shards, cur.Count)
	}
	_, err = i.port.SetScheduling(ctx, i.keys.Meta(topic), redisx.Scheduling{Levels: s.Levels, Weights: s.Weights, Strict: s.Strict, Shards: s.Shards})
	if errors.Is(err, redisx.ErrLevelsLowered) {
		return Partitions{}, fmt.Errorf("inspect: %w: %w", bus.ErrInvalidConfig, err)
	}
	if err != nil {
		return Partitions{}, fmt.Errorf("inspect: scheduling of %s: %w", topic, redisx.Unavailable(err))
	}
	return i.partitions(ctx, topic)
}

// names returns the partition names read now: [topic] for one partition.
func (p Partitions) names() []string {
	out := make([]string, p.Count+p.Draining)
	for k := range out {
		out[k] = bus.Partition(p.Topic, k)
	}
	return out
}

// Partitions reads a topic's partition count. A topic never created has
// one partition.
func (i *Inspector) Partitions(ctx context.Context, topic string) (Partitions, error) {
	return i.partitions(ctx, topic)
}

// SetPartitions sets a topic's partition count to n (1..bus.MaxPartitions).
// Producers follow within about a second (while Redis answers) and workers
// within 2 s: raising it spreads new entries over the new partitions;
// lowering it keeps the removed partitions read until they are drained
// (nothing pending or undelivered for any group of partition 0, no dead
// letters), then a worker forgets them (at least 15 s after the change)
// and deletes their streams.
func (i *Inspector) SetPartitions(ctx context.Context, topic string, n int) (Partitions, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return Partitions{}, fmt.Errorf("inspect: %w", err)
	}
	if n < 1 || n > bus.MaxPartitions {
		return Partitions{}, fmt.Errorf("inspect: %w: partition count %d out of [1, %d]", bus.ErrInvalidConfig, n, bus.MaxPartitions)
	}
	if _, err := i.port.SetPartitions(ctx, i.keys.Meta(topic), n); err != nil {
		return Partitions{}, fmt.Errorf("inspect: set partitions of %s: %w", topic, redisx.Unavailable(err))
	}
	return i.partitions(ctx, topic)
}

// CreateTopic gives a topic its partition count. Creating it again with the
// same count does nothing; with another count it fails with bus.ErrTopicExists
// (SetPartitions changes it).
func (i *Inspector) CreateTopic(ctx context.Context, topic string, n int) (Partitions, error) {
	p, err := i.partitions(ctx, topic)
	if err != nil {
		return p, err
	}
	if p.Set {
		if p.Count != n {
			return p, fmt.Errorf("%w: %s has %d, not %d (use set-partitions to change it)", bus.ErrTopicExists, topic, p.Count, n)
		}
		return p, nil
	}
	return i.SetPartitions(ctx, topic, n)
}
