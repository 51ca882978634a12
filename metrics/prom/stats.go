package prom

import (
	"reflect"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/breaker"
)

// StatsCollector exports a role's Stats struct (consumer.Stats,
// producer.Stats) read on scrape: every uint64 field as a counter
// mycelium_<subsystem>_<json name>_total, every signed integer field as a
// gauge mycelium_<subsystem>_<json name>. Names follow the struct's JSON
// tags, so /metrics, /stats and bus-bench agree.
type StatsCollector struct {
	read   func() any
	fields []statField
}

type statField struct {
	index   int
	desc    *prometheus.Desc
	counter bool
}

// NewStatsCollector returns a collector for the struct read returns; help
// describes each JSON name (a missing entry gets a generic text).
func NewStatsCollector(subsystem string, labels prometheus.Labels, help map[string]string, read func() any) *StatsCollector {
	c := &StatsCollector{read: read}
	t := reflect.TypeOf(read())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		h := help[name]
		if h == "" {
			h = subsystem + " " + strings.ReplaceAll(name, "_", " ")
		}
		switch f.Type.Kind() {
		case reflect.Uint64:
			c.fields = append(c.fields, statField{i, prometheus.NewDesc(
				prometheus.BuildFQName(Namespace, subsystem, name+"_total"), h, nil, labels), true})
		case reflect.Int, reflect.Int64:
			c.fields = append(c.fields, statField{i, prometheus.NewDesc(
				prometheus.BuildFQName(Namespace, subsystem, name), h, nil, labels), false})
		}
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *StatsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range c.fields {
		ch <- f.desc
	}
}

// Collect implements prometheus.Collector.
func (c *StatsCollector) Collect(ch chan<- prometheus.Metric) {
	v := reflect.ValueOf(c.read())
	for _, f := range c.fields {
		fv := v.Field(f.index)
		if f.counter {
			ch <- prometheus.MustNewConstMetric(f.desc, prometheus.CounterValue, float64(fv.Uint()))
		} else {
			ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(fv.Int()))
		}
	}
}

// ConsumerHelp and ProducerHelp describe the Stats fields of each role.
var (
	ConsumerHelp = map[string]string{
		"received":          "Entries read from the stream (new and reclaimed).",
		"handled":           "Handler calls that returned.",
		"failed":            "Handler calls that returned an error or panicked.",
		"replied":           "Replies written to a live reply stream.",
		"reply_dropped":     "Replies not written because the requester's reply stream is gone.",
		"acked":             "Entries acknowledged.",
		"expired":           "Requests acknowledged unprocessed because their caller's deadline had passed on arrival.",
		"dead_lettered":     "Entries moved to the dead-letter stream.",
		"panics":            "Handler panics recovered.",
		"groups_created":    "Times the consumer group was created or recreated.",
		"retried":           "Failed entries left pending for another delivery.",
		"reclaimed":         "Entries taken over from dead or slow consumers after the claim idle time.",
		"deleted_pending":   "Pending entries trimmed from the stream before they were handled.",
		"heartbeats":        "Idle-time resets of long-running entries.",
		"trimmed":           "Entries removed by the consumer's retention.",
		"consumers_removed": "Idle consumers without pending entries removed from the group.",
		"in_flight":         "Entries held now: read and not yet acknowledged.",
		"reads":             "XREADGROUP calls that returned entries (received / reads = entries per read).",
		"flushes":           "Pipelined writes of replies and acknowledgements (acked / flushes = entries per write).",
	}
	ProducerHelp = map[string]string{
		"published":        "Events accepted by Redis.",
		"requests":         "Requests accepted by Redis.",
		"replies":          "Replies delivered to a waiting caller.",
		"late":             "Replies dropped because no caller waited any more.",
		"timeouts":         "Requests that ended with a timeout.",
		"remote_errors":    "Replies carrying a handler error.",
		"malformed":        "Undecodable entries on the reply stream.",
		"in_flight":        "Requests waiting for a reply now.",
		"write_errors":     "Writes that failed: Redis refused them or did not answer.",
		"breaker_rejected": "Calls refused at once by an open circuit breaker.",
		"writes":           "Pipelined XADD writes, each one round trip ((published + requests) / writes = entries per write).",
		"reply_reads":      "Reply-stream reads that returned entries (replies / reply_reads = replies per read).",
	}
)

// BreakerCollector exports a circuit breaker's state
// (mycelium_breaker_state: 0 closed, 1 open, 2 half-open) and its
// transitions (mycelium_breaker_transitions_total{to}). Pass its
// OnStateChange to breaker.WithStateChange.
type BreakerCollector struct {
	state       func() breaker.State
	transitions [3]atomic.Uint64 // by target state
	stateDesc   *prometheus.Desc
	transDesc   *prometheus.Desc
}

// NewBreakerCollector returns a collector; state is read on scrape and may
// be set later with SetState (the breaker is built after its hook).
func NewBreakerCollector(labels prometheus.Labels) *BreakerCollector {
	return &BreakerCollector{
		state: func() breaker.State { return breaker.Closed },
		stateDesc: prometheus.NewDesc(Namespace+"_breaker_state",
			"Circuit breaker state: 0 closed, 1 open, 2 half-open.", nil, labels),
		transDesc: prometheus.NewDesc(Namespace+"_breaker_transitions_total",
			"Circuit breaker state changes, by the state entered.", []string{"to"}, labels),
	}
}

// SetState sets the function read for the current state.
func (c *BreakerCollector) SetState(fn func() breaker.State) { c.state = fn }

// OnStateChange counts a transition; use it as the breaker's hook.
func (c *BreakerCollector) OnStateChange(_, to breaker.State) {
	if int(to) < len(c.transitions) {
		c.transitions[to].Add(1)
	}
}

// Describe implements prometheus.Collector.
func (c *BreakerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.stateDesc
	ch <- c.transDesc
}

// Collect implements prometheus.Collector.
func (c *BreakerCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.stateDesc, prometheus.GaugeValue, float64(c.state()))
	for _, s := range []breaker.State{breaker.Closed, breaker.HalfOpen, breaker.Open} {
		ch <- prometheus.MustNewConstMetric(c.transDesc, prometheus.CounterValue, float64(c.transitions[s].Load()), s.String())
	}
}
