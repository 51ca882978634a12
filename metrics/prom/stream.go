package prom

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
)

// StreamCollector exports, per topic and group, the state of the streams
// in Redis: length, oldest entry age, dead-letter length, and each group's
// pending count, oldest pending age, lag and consumers. A scrape costs two
// round trips plus one per group, each O(1) in the stream's length (XLEN,
// XRANGE/XREVRANGE COUNT 1, XINFO GROUPS, XPENDING summary): no scans.
// When Redis does not answer within the timeout, mycelium_redis_up is 0 and
// the gauges are left out.
type StreamCollector struct {
	c       rueidis.Client
	keys    bus.Keys
	topics  []string
	timeout time.Duration

	up, length, oldest, dead, pending, oldestPending, lag, consumers *prometheus.Desc
}

// NewStreamCollector returns a collector for topics under keys' prefix.
func NewStreamCollector(c rueidis.Client, keys bus.Keys, topics ...string) *StreamCollector {
	t := []string{"topic"}
	g := []string{"topic", "group"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
	}
	return &StreamCollector{
		c: c, keys: keys, topics: topics, timeout: 2 * time.Second,
		up:            d("redis_up", "1 when the last scrape could read the streams from Redis, else 0.", nil),
		length:        d("stream_length", "Entries in the topic stream.", t),
		oldest:        d("stream_oldest_entry_age_seconds", "Age of the oldest entry still in the topic stream (by its id).", t),
		dead:          d("dead_letter_length", "Entries in the topic's dead-letter stream.", t),
		pending:       d("group_pending", "Entries delivered to the group and not yet acknowledged.", g),
		oldestPending: d("group_oldest_pending_age_seconds", "Age (by id) of the group's oldest pending entry; 0 when none.", g),
		lag:           d("group_lag", "Entries in the stream not yet delivered to the group (Redis 7+).", g),
		consumers:     d("group_consumers", "Consumers registered in the group.", g),
	}
}

// Describe implements prometheus.Collector.
func (s *StreamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.up, s.length, s.oldest, s.dead, s.pending, s.oldestPending, s.lag, s.consumers} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *StreamCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	var out []prometheus.Metric
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		out = append(out, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...))
	}
	now := time.Now()
	for _, topic := range s.topics {
		si, err := bus.Info(ctx, s.c, s.keys.Topic(topic))
		if err != nil {
			ch <- prometheus.MustNewConstMetric(s.up, prometheus.GaugeValue, 0)
			return
		}
		dl, err := s.c.Do(ctx, s.c.B().Xlen().Key(s.keys.DeadLetter(topic)).Build()).AsInt64()
		if err != nil {
			ch <- prometheus.MustNewConstMetric(s.up, prometheus.GaugeValue, 0)
			return
		}
		gauge(s.length, float64(si.Length), topic)
		gauge(s.oldest, ageOf(si.FirstID, now), topic)
		gauge(s.dead, float64(dl), topic)
		for _, g := range si.Groups {
			p, err := bus.PendingSummary(ctx, s.c, si.Key, g.Name)
			if err != nil {
				ch <- prometheus.MustNewConstMetric(s.up, prometheus.GaugeValue, 0)
				return
			}
			gauge(s.pending, float64(g.Pending), topic, g.Name)
			gauge(s.oldestPending, ageOf(p.OldestID, now), topic, g.Name)
			gauge(s.consumers, float64(g.Consumers), topic, g.Name)
			if g.Lag >= 0 {
				gauge(s.lag, float64(g.Lag), topic, g.Name)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(s.up, prometheus.GaugeValue, 1)
	for _, m := range out {
		ch <- m
	}
}

// ageOf is the age in seconds of the entry id, 0 for none.
func ageOf(id string, now time.Time) float64 {
	t, ok := bus.IDTime(id)
	if !ok {
		return 0
	}
	return max(now.Sub(t).Seconds(), 0)
}
