package inspect

import (
	"context"
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
	// Streams are the keys of the partitions read now, partition 0 first.
	Streams []string `json:"streams"`
}

func (i *Inspector) partitions(ctx context.Context, topic string) (Partitions, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return Partitions{}, fmt.Errorf("inspect: %w", err)
	}
	m, err := i.port.Partitions(ctx, i.keys.Meta(topic))
	if err != nil {
		return Partitions{}, fmt.Errorf("inspect: partitions of %s: %w", topic, redisx.Unavailable(err))
	}
	p := Partitions{Topic: topic, Count: m.N, Draining: m.Drain - m.N, Lowered: m.Lowered, Set: m.Set}
	for k := range m.Drain {
		p.Streams = append(p.Streams, i.keys.Topic(bus.Partition(topic, k)))
	}
	return p, nil
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
