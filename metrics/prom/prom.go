// Package prom exports Mycelium's stage timings, counters and stream gauges
// as Prometheus metrics (github.com/prometheus/client_golang). It is apart
// from package metrics so that services importing producer or consumer do
// not link the Prometheus client unless they export metrics.
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

// StageCollector exports one histogram per stage,
// mycelium_stage_duration_seconds{role, topic, stage}, with the classic
// buckets of metrics.ClassicBounds (50 µs to 60 s). Stages with no
// observation yet are exported empty, so dashboards see every stage.
type StageCollector struct {
	desc   *prometheus.Desc
	stages []metrics.Stage
	snap   func() *metrics.Snapshot
}

// NewStageCollector returns a collector for the stages a role records
// (see metrics.Stage); snap is called once per scrape.
func NewStageCollector(role, topic string, stages []metrics.Stage, snap func() *metrics.Snapshot) *StageCollector {
	return &StageCollector{
		desc: prometheus.NewDesc(Namespace+"_stage_duration_seconds",
			"Time spent in each stage of the data path (see the README's Performance section).",
			[]string{"stage"}, prometheus.Labels{"role": role, "topic": topic}),
		stages: stages, snap: snap,
	}
}

// ProducerStages and ConsumerStages are the stages each role records.
var (
	ProducerStages = []metrics.Stage{metrics.Admission, metrics.Encode, metrics.Write, metrics.QueueWait,
		metrics.Handler, metrics.ReplyTransit, metrics.Decode, metrics.EndToEnd}
	ConsumerStages = []metrics.Stage{metrics.QueueWait, metrics.Handler, metrics.ReplyWrite}
)

// Describe implements prometheus.Collector.
func (c *StageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *StageCollector) Collect(ch chan<- prometheus.Metric) {
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

// Counter is one monotonically increasing value read on scrape.
type Counter struct {
	Name, Help string
	Value      func() uint64
}

// CounterCollector exports counters read from a stats snapshot on scrape,
// each as mycelium_<name>_total with the given constant labels.
type CounterCollector struct {
	counters []Counter
	descs    []*prometheus.Desc
}

// NewCounterCollector returns a collector for counters; labels are
// attached to every one (for example topic and group).
func NewCounterCollector(labels prometheus.Labels, counters ...Counter) *CounterCollector {
	c := &CounterCollector{counters: counters}
	for _, k := range counters {
		c.descs = append(c.descs, prometheus.NewDesc(Namespace+"_"+k.Name+"_total", k.Help, nil, labels))
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *CounterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *CounterCollector) Collect(ch chan<- prometheus.Metric) {
	for i, k := range c.counters {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(k.Value()))
	}
}
