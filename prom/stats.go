package prom

import (
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/breaker"
)

// statsCollector exports a role's Stats struct (consumer.Stats,
// producer.Stats) read on scrape: every uint64 field as a counter
// mycelium_<subsystem>_<json name>_total, every signed integer field as a
// gauge mycelium_<subsystem>_<json name>, every []uint64 field with a
// label tag as counters labelled by the element's index, each described by the field's
// help tag. Names follow the struct's JSON tags, so /metrics, /stats and
// bus-bench agree, and the tag is the one description of each field.
type statsCollector[S any] struct {
	read   func() S
	fields []statField
}

type statField struct {
	index   int
	desc    *prometheus.Desc
	counter bool
	series  bool // a []uint64: one counter per element, labelled by its index (the field's label tag)
}

// newStatsCollector returns a collector for the struct read returns.
func newStatsCollector[S any](subsystem string, labels prometheus.Labels, read func() S) *statsCollector[S] {
	c := &statsCollector[S]{read: read}
	t := reflect.TypeFor[S]()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		help := f.Tag.Get("help")
		if help == "" {
			help = subsystem + " " + strings.ReplaceAll(name, "_", " ")
		}
		switch f.Type.Kind() {
		case reflect.Uint64:
			c.fields = append(c.fields, statField{i, prometheus.NewDesc(
				prometheus.BuildFQName(Namespace, subsystem, name+"_total"), help, nil, labels), true, false})
		case reflect.Float64: // seconds, counted: a counter too
			c.fields = append(c.fields, statField{i, prometheus.NewDesc(
				prometheus.BuildFQName(Namespace, subsystem, name+"_total"), help, nil, labels), true, false})
		case reflect.Int, reflect.Int64:
			c.fields = append(c.fields, statField{i, prometheus.NewDesc(
				prometheus.BuildFQName(Namespace, subsystem, name), help, nil, labels), false, false})
		case reflect.Slice:
			if f.Type.Elem().Kind() == reflect.Uint64 && f.Tag.Get("label") != "" {
				c.fields = append(c.fields, statField{i, prometheus.NewDesc(
					prometheus.BuildFQName(Namespace, subsystem, name+"_total"), help, []string{f.Tag.Get("label")}, labels), true, true})
			}
		}
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *statsCollector[S]) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range c.fields {
		ch <- f.desc
	}
}

// Collect implements prometheus.Collector.
func (c *statsCollector[S]) Collect(ch chan<- prometheus.Metric) {
	s := c.read()
	v := reflect.ValueOf(&s).Elem()
	for _, f := range c.fields {
		fv := v.Field(f.index)
		switch {
		case f.series:
			for k := range fv.Len() {
				ch <- prometheus.MustNewConstMetric(f.desc, prometheus.CounterValue, float64(fv.Index(k).Uint()), strconv.Itoa(k))
			}
		case f.counter && fv.Kind() == reflect.Float64:
			ch <- prometheus.MustNewConstMetric(f.desc, prometheus.CounterValue, fv.Float())
		case f.counter:
			ch <- prometheus.MustNewConstMetric(f.desc, prometheus.CounterValue, float64(fv.Uint()))
		default:
			ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(fv.Int()))
		}
	}
}

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
