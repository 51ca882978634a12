package prom

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
)

func TestStageCollectorBuckets(t *testing.T) {
	var r metrics.Recorder
	r.Record(metrics.Handler, 40*time.Microsecond)  // le 5e-05
	r.Record(metrics.Handler, 100*time.Microsecond) // exactly on le 0.0001
	r.Record(metrics.Handler, 2*time.Minute)        // +Inf only
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newStageCollector("consumer", "t", []metrics.Stage{metrics.Handler, metrics.ReplyWrite}, r.Snapshot))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "mycelium_stage_duration_seconds" || len(mfs[0].Metric) != 2 {
		t.Fatalf("gathered %v", mfs)
	}
	for _, m := range mfs[0].Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		h := m.GetHistogram()
		if labels["role"] != "consumer" || labels["topic"] != "t" || len(h.Bucket) != len(metrics.ClassicBounds) {
			t.Fatalf("labels %v, %d buckets", labels, len(h.Bucket))
		}
		switch labels["stage"] {
		case "handler":
			if h.GetSampleCount() != 3 || h.Bucket[0].GetCumulativeCount() != 1 || h.Bucket[1].GetCumulativeCount() != 2 ||
				h.Bucket[len(h.Bucket)-1].GetCumulativeCount() != 2 || h.Bucket[0].GetUpperBound() != 50e-6 {
				t.Fatalf("handler histogram %v", h)
			}
			if d := h.GetSampleSum() - 120.00014; d > 1e-9 || d < -1e-9 {
				t.Fatalf("sum %v", h.GetSampleSum())
			}
		case "reply_write":
			if h.GetSampleCount() != 0 {
				t.Fatalf("empty stage exported %v", h)
			}
		default:
			t.Fatalf("unexpected stage %v", labels)
		}
	}
}

func TestStatsCollector(t *testing.T) {
	type stats struct {
		Done    uint64 `json:"done" help:"Things done."`
		Now     int64  `json:"now"`
		Skipped string `json:"skipped"`
		Hidden  uint64 `json:"-"`
	}
	s := stats{Done: 7, Now: -2}
	c := newStatsCollector("thing", prometheus.Labels{"topic": "t"}, func() stats { return s })
	want := `
# HELP mycelium_thing_done_total Things done.
# TYPE mycelium_thing_done_total counter
mycelium_thing_done_total{topic="t"} 7
# HELP mycelium_thing_now thing now
# TYPE mycelium_thing_now gauge
mycelium_thing_now{topic="t"} -2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestRoleStatsDocumented: every field the roles export has its help tag,
// the one place that describes it.
func TestRoleStatsDocumented(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[producer.Stats](), reflect.TypeFor[consumer.Stats]()} {
		for i := range typ.NumField() {
			f := typ.Field(i)
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" && f.Tag.Get("help") == "" {
				t.Errorf("%s.%s has no help tag", typ, f.Name)
			}
		}
	}
}

func TestBreakerCollector(t *testing.T) {
	c := NewBreakerCollector(prometheus.Labels{"topic": "t"})
	c.SetState(func() breaker.State { return breaker.Open })
	c.OnStateChange(breaker.Closed, breaker.Open)
	c.OnStateChange(breaker.Open, breaker.HalfOpen)
	c.OnStateChange(breaker.HalfOpen, breaker.Open)
	want := `
# HELP mycelium_breaker_state Circuit breaker state: 0 closed, 1 open, 2 half-open.
# TYPE mycelium_breaker_state gauge
mycelium_breaker_state{topic="t"} 1
# HELP mycelium_breaker_transitions_total Circuit breaker state changes, by the state entered.
# TYPE mycelium_breaker_transitions_total counter
mycelium_breaker_transitions_total{to="closed",topic="t"} 0
mycelium_breaker_transitions_total{to="half-open",topic="t"} 1
mycelium_breaker_transitions_total{to="open",topic="t"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
