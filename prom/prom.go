// Package prom exports Mycelium's stage timings, counters, circuit breaker
// state and stream gauges as Prometheus metrics
// (github.com/prometheus/client_golang).
//
// It sits above producer, consumer and inspect (it reads all three), which is
// why it is a top-level package and not part of package metrics: metrics is a
// leaf that the producer and consumer record into, and services that import
// them do not link the Prometheus client unless they import this package.
//
// Everything here is a prometheus.Collector that reads its source on
// scrape: the hot path only updates the lock-free histograms and atomic
// counters it already keeps.
package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/metrics"
)

// Namespace prefixes every metric name.
const Namespace = "mycelium"

// The stages each role records (see producer.Producer.Timings and
// consumer.Consumer.Timings).
var (
	producerStages = [...]metrics.Stage{metrics.Admission, metrics.Cache, metrics.Encode, metrics.Write, metrics.QueueWait, metrics.RetryWait,
		metrics.Handler, metrics.ReplyTransit, metrics.Decode, metrics.EndToEnd, metrics.FirstChunk, metrics.ChunkTransit}
	consumerStages = [...]metrics.Stage{metrics.QueueWait, metrics.RetryWait, metrics.Handler, metrics.ReplyWrite, metrics.ChunkWrite}
)

// stageCollector exports one histogram per stage,
// mycelium_stage_duration_seconds{role, topic, stage}, with the classic
// buckets of metrics.ClassicBounds (50 µs to 60 s). Stages with no
// observation yet are exported empty, so dashboards see every stage.
type stageCollector struct {
	desc   *prometheus.Desc
	stages []metrics.Stage
	snap   func() *metrics.Snapshot
}

// newStageCollector returns a collector for the stages a role records;
// snap is called once per scrape.
func newStageCollector(role, topic string, stages []metrics.Stage, snap func() *metrics.Snapshot) *stageCollector {
	return &stageCollector{
		desc: prometheus.NewDesc(Namespace+"_stage_duration_seconds",
			"Time spent in each stage of the data path (see the README's \"Timings and metrics\" section).",
			[]string{"stage"}, prometheus.Labels{"role": role, "topic": topic}),
		stages: stages, snap: snap,
	}
}

// Describe implements prometheus.Collector.
func (c *stageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *stageCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	for _, st := range c.stages {
		h := s.Stage(st)
		cum := h.Cumulative()
		buckets := make(map[float64]uint64, len(cum))
		for i, b := range metrics.ClassicBounds {
			buckets[b.Seconds()] = cum[i]
		}
		ch <- prometheus.MustNewConstHistogram(c.desc, h.Count, h.Sum.Seconds(), buckets, st.String())
	}
}
