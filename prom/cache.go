package prom

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/inspect"
)

// DefaultCacheScanEvery is how often a CacheCollector reads the shared
// tier at most; scrapes in between export the last reading.
const DefaultCacheScanEvery = 30 * time.Second

// CacheCollector exports the shared response cache of topics as package
// inspect reads it (inspect.Inspector.CacheStats): stored answers and their
// bytes, requests in flight, and the cache generation, per topic. Counting
// them scans the keyspace (SCAN MATCH, up to 100,000 keys per topic), so it
// runs at most once per DefaultCacheScanEvery, whatever the scrape
// interval; topics whose reading fails are left out of that scrape.
type CacheCollector struct {
	insp    *inspect.Inspector
	topics  []string
	every   time.Duration
	timeout time.Duration

	entries, bytes, inFlight, gen *prometheus.Desc

	mu   sync.Mutex
	at   time.Time
	last []inspect.CacheStats
}

// NewCacheCollector returns a collector of topics' shared caches, read
// through insp.
func NewCacheCollector(insp *inspect.Inspector, topics ...string) *CacheCollector {
	t := []string{"topic"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_cache_"+name, help, t, nil)
	}
	return &CacheCollector{
		insp: insp, topics: topics, every: DefaultCacheScanEvery, timeout: 5 * time.Second,
		entries:  d("shared_entries", "Answers stored in the topic's shared cache (every generation still in Redis)."),
		bytes:    d("shared_bytes", "Bytes of the answers stored in the topic's shared cache (values only)."),
		inFlight: d("in_flight", "Cached requests of the topic marked in flight (identical requests join them)."),
		gen:      d("generation", "The topic's cache generation (bumped by every flush of the whole topic)."),
	}
}

// Describe implements prometheus.Collector.
func (c *CacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.entries, c.bytes, c.inFlight, c.gen} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. Concurrent scrapes share one
// reading.
func (c *CacheCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	if c.last == nil || time.Since(c.at) >= c.every {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		var fresh []inspect.CacheStats
		for _, t := range c.topics {
			if s, err := c.insp.CacheStats(ctx, t); err == nil {
				fresh = append(fresh, s)
			}
		}
		cancel()
		c.last, c.at = fresh, time.Now()
	}
	last := c.last
	c.mu.Unlock()
	for _, s := range last {
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Entries), s.Topic)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.Bytes), s.Topic)
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(s.InFlight), s.Topic)
		ch <- prometheus.MustNewConstMetric(c.gen, prometheus.GaugeValue, float64(s.Generation), s.Topic)
	}
}
