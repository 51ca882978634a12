package prom_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/prom"
)

// TestStreamCollectorReusesItsReading: scrapes within ReadEvery export the
// last reading instead of reading Redis again (a scrape storm costs Redis
// nothing more).
func TestStreamCollectorReusesItsReading(t *testing.T) {
	m, c := redistest.Mini(t)
	if _, err := m.XAdd("myc:{t}", "*", []string{"m", "x"}); err != nil {
		t.Fatal(err)
	}
	length := func(sc *prom.StreamCollector) string {
		reg := prometheus.NewRegistry()
		reg.MustRegister(sc)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "mycelium_stream_length" {
				return fmt.Sprint(mf.GetMetric()[0].GetGauge().GetValue())
			}
		}
		return "none"
	}
	cached := prom.NewStreamCollector(inspect.New(c), "t").ReadEvery(time.Hour)
	fresh := prom.NewStreamCollector(inspect.New(c), "t").ReadEvery(0)
	if a, b := length(cached), length(fresh); a != "1" || b != "1" {
		t.Fatalf("first readings %s, %s; want 1", a, b)
	}
	if _, err := m.XAdd("myc:{t}", "*", []string{"m", "y"}); err != nil {
		t.Fatal(err)
	}
	if a, b := length(cached), length(fresh); a != "1" || b != "2" {
		t.Fatalf("second readings %s (cached), %s (fresh); want 1 and 2", a, b)
	}
}
