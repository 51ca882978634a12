package prom

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
)

// StreamCollector exports, per topic and group, the state of the streams
// in Redis as package inspect reads it: length, oldest entry age,
// dead-letter length, and each group's pending count, oldest pending age,
// lag and consumers. A scrape costs one round trip per topic plus one per
// group, each O(1) in the stream's length (see inspect.Inspector.Topic): no
// scans. A reading is reused for DefaultStreamReadEvery, so a scrape storm
// costs Redis nothing more. When Redis does not answer within the timeout,
// mycelium_redis_up is 0 and the gauges are left out.
type StreamCollector struct {
	insp    *inspect.Inspector
	topics  []string
	timeout time.Duration
	every   time.Duration

	up, length, oldest, dead, pending, oldestPending, lag, consumers, partitions, delayed *prometheus.Desc
	levelLength, levelLag                                                                 *prometheus.Desc

	mu   sync.Mutex
	at   time.Time
	last []prometheus.Metric // the last reading, with mycelium_redis_up first
}

// DefaultStreamReadEvery is how often a StreamCollector reads Redis at
// most; scrapes in between export the last reading.
const DefaultStreamReadEvery = 2 * time.Second

// NewStreamCollector returns a collector for topics, read through insp.
func NewStreamCollector(insp *inspect.Inspector, topics ...string) *StreamCollector {
	t := []string{"topic"}
	g := []string{"topic", "group"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
	}
	return &StreamCollector{
		insp: insp, topics: topics, timeout: 2 * time.Second, every: DefaultStreamReadEvery,
		up:            d("redis_up", "1 when Redis answered the last reading of the streams, else 0 (a refused command, such as an ACL without XINFO, leaves that topic's gauges out but Redis up).", nil),
		length:        d("stream_length", "Entries in the topic stream.", t),
		oldest:        d("stream_oldest_entry_age_seconds", "Age of the oldest entry still in the topic stream (by its id).", t),
		dead:          d("dead_letter_length", "Entries in the topic's dead-letter stream.", t),
		delayed:       d("delayed_entries", "Delayed events not yet due and entries waiting for a delayed retry (all partitions).", t),
		partitions:    d("topic_partitions", "Partitions the topic is written to (the other gauges add them up).", t),
		pending:       d("group_pending", "Entries delivered to the group and not yet acknowledged.", g),
		oldestPending: d("group_oldest_pending_age_seconds", "Age (by id) of the group's oldest pending entry; 0 when none.", g),
		lag:           d("group_lag", "Entries in the stream not yet delivered to the group (Redis 7+).", g),
		consumers:     d("group_consumers", "Consumers registered in the group.", g),
		levelLength:   d("priority_level_length", "Entries in a priority level's streams (a topic with priority levels; level 0 the most urgent).", []string{"topic", "level"}),
		levelLag:      d("priority_level_lag", "Entries of a priority level not yet delivered, over every group (Redis 7+).", []string{"topic", "level"}),
	}
}

// ReadEvery sets how often s reads Redis at most (0: on every scrape) and
// returns s. Call it before registering s.
func (s *StreamCollector) ReadEvery(d time.Duration) *StreamCollector {
	s.every = d
	return s
}

// Describe implements prometheus.Collector.
func (s *StreamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.up, s.length, s.oldest, s.dead, s.pending, s.oldestPending, s.lag, s.consumers, s.partitions, s.delayed, s.levelLength, s.levelLag} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Concurrent scrapes share one
// reading.
func (s *StreamCollector) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	if s.last == nil || time.Since(s.at) >= s.every {
		s.last, s.at = s.read(), time.Now()
	}
	last := s.last
	s.mu.Unlock()
	for _, m := range last {
		ch <- m
	}
}

// read reads every topic once.
func (s *StreamCollector) read() []prometheus.Metric {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	var out []prometheus.Metric
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		out = append(out, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...))
	}
	for _, name := range s.topics {
		t, err := s.insp.Topic(ctx, name)
		if err != nil {
			// Unreachable: up 0. An error reply (an ACL without XINFO):
			// Redis is up; this topic's gauges are left out.
			if errors.Is(err, bus.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
				return []prometheus.Metric{prometheus.MustNewConstMetric(s.up, prometheus.GaugeValue, 0)}
			}
			continue
		}
		gauge(s.length, float64(t.Length), name)
		gauge(s.oldest, t.FirstEntryAge.Seconds(), name)
		gauge(s.dead, float64(t.DeadLetters), name)
		gauge(s.delayed, float64(t.Delayed), name)
		gauge(s.partitions, float64(max(t.Partitions, 1)), name)
		for _, l := range t.ByLevel {
			level := strconv.Itoa(l.Level)
			gauge(s.levelLength, float64(l.Length), name, level)
			if l.Lag >= 0 {
				gauge(s.levelLag, float64(l.Lag), name, level)
			}
		}
		for _, g := range t.Groups {
			gauge(s.pending, float64(g.Pending), name, g.Name)
			gauge(s.oldestPending, g.OldestPendingAge.Seconds(), name, g.Name)
			gauge(s.consumers, float64(len(g.Consumers)), name, g.Name)
			if g.Lag >= 0 {
				gauge(s.lag, float64(g.Lag), name, g.Name)
			}
		}
	}
	return append([]prometheus.Metric{prometheus.MustNewConstMetric(s.up, prometheus.GaugeValue, 1)}, out...)
}
