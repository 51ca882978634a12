package report_test

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/cmd/bus-bench/internal/bench"
	"github.com/egos/mycelium/cmd/bus-bench/internal/report"
	"github.com/egos/mycelium/cmd/bus-bench/internal/suite"
	"github.com/egos/mycelium/metrics"
)

// TestWriteReportSynthetic renders a report from made-up runs: every chart
// is drawn, and nothing in it needs the network.
func TestWriteReportSynthetic(t *testing.T) {
	var runs []report.Run
	for _, c := range suite.SeedCases(true) {
		for _, sys := range []string{bench.SystemMycelium, bench.SystemPubsub, bench.SystemPlain} {
			out := &bench.Outcome{Result: &bench.Result{System: sys, Case: c.Name, Concurrency: c.Concurrency, Payload: c.Payload, OK: 10, ThroughputRPS: 1000 * float64(c.Concurrency),
				Seconds: c.Duration.Seconds() + 0.01}}
			n := 10
			if c.Name != "payload-1MiB" {
				n = 40 // a distribution; the 1 MiB case keeps a handful of samples
			}
			slower := int64(1)
			switch sys {
			case bench.SystemPubsub:
				slower = 3
			case bench.SystemPlain:
				slower = 2
			}
			for i := range n {
				p := bench.Point{At: float64(i) / 10, Lat: slower * int64(time.Millisecond) * int64(i+1), Seq: uint64(i)}
				out.Timeline = append(out.Timeline, p)
				out.Lat = append(out.Lat, p.Lat)
			}
			if sys == bench.SystemMycelium {
				var r metrics.Recorder
				for _, st := range metrics.Stages() {
					r.Record(st, time.Duration(math.Pow(2, float64(st)))*time.Microsecond)
				}
				out.Result.Stages = r.Snapshot().Summaries()
			}
			if c.Scenario == "cached" {
				if sys != bench.SystemMycelium {
					continue // the baseline has no cache
				}
				out.Result.Cache = &bench.CacheResult{Enabled: !c.NoCache, Distinct: 1000, Zipf: 1.1, DistinctRequested: 700, HandlerCalls: 700,
					HitsLocal: 9000, HitRatioLocal: 0.9, LocalHitP50US: 2, LocalHitP99US: 8, MissP50US: 50000, MissP99US: 60000}
				if c.NoCache {
					out.Result.Cache = &bench.CacheResult{Distinct: 1000, Zipf: 1.1, DistinctRequested: 600, HandlerCalls: 900, Misses: 900}
				}
			}
			if sys == bench.SystemMycelium && c.Scenario == "stream" {
				out.Result.Stream = &bench.StreamResult{Chunks: 200, IntervalMS: 10, Streams: out.Result.Requests,
					FirstChunkP50US: 13000, FirstChunkP99US: 17000, FullReplyP50US: 2.1e6, FullReplyP99US: 2.2e6,
					InterChunkP50US: 10500, InterChunkP99US: 16000, OverheadP50US: 800, OverheadP99US: 5000}
			}
			if sys == bench.SystemMycelium && c.Scenario == "cancel" {
				out.Result.Cancel = &bench.CancelResult{Cancels: 100, P50US: 300, P99US: 4000, MaxUS: 7000}
			}
			slices.Sort(out.Lat)
			out.Result.P50US = out.Lat[len(out.Lat)/2] / 1000
			runs = append(runs, report.Run{Case: c.Name, Concurrency: c.Concurrency, Handler: c.Handler, Sweep: c.Sweep, Timeline: c.Timeline, Out: out})
		}
	}
	path := filepath.Join(t.TempDir(), "report.html")
	if err := report.Write(path, &report.Env{Redis: "7.0.15", CPUs: 2, Quick: true}, runs, suite.Judge(runs)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	if n := strings.Count(page, "<svg"); n != 9 { // a CDF per system (3)
		t.Fatalf("%d charts, want 9", n)
	}
	for _, want := range []string{
		"FAIL</span> concurrent-20", "PASS</span> single", "redis_write", "sweep-256",
		"the streams-plain baseline", `<tr class="streams-plain">`,
		"PASS</span> cached", "Response cache", "90.0% of answers from the local tier",
		"Streamed replies and cancellation", "bus time per chunk", "cancel to handler", "PASS</span> cancel",
		"(quick run)", "--suite-quick", // flagged as quick, at the top
		"payload-1MiB (n=10)", "drawn as their points", // a handful of samples says so
		"each point a 0.5 s run",                       // the sweep's duration as run, not as planned for a full suite
		`@font-face { font-family: "Liberation Serif"`, // the charts' font travels with the page
		// Readable in a 1,400 px window (issue 31, point 12): the wide table
		// scrolls in its box, the per-stage table is folded, big numbers
		// have separators, the cache chart is a ratio, µs everywhere.
		`<div class="scroll"><table>`, "<details>", "256\u2009000", "handler calls per 1,000 requests",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(page, " us ") || strings.Contains(page, " us)") {
		t.Error("report mixes \"us\" with µs")
	}
	if strings.Contains(page, "single (n=") || strings.Contains(page, "each point a 2 s") {
		t.Error("report marks a 40-sample case as small, or claims 2 s sweep points")
	}
}

// TestWriteReportPartial: an interrupted suite (no sweep, no timeline
// runs) still gets a report; the charts it cannot draw say so.
func TestWriteReportPartial(t *testing.T) {
	out := &bench.Outcome{Result: &bench.Result{System: bench.SystemMycelium, Case: "single", OK: 1, ThroughputRPS: 10}, Lat: []int64{1e6}, Timeline: []bench.Point{{Lat: 1e6}}}
	path := filepath.Join(t.TempDir(), "report.html")
	if err := report.Write(path, &report.Env{}, []report.Run{{Case: "single", Concurrency: 1, Out: out}}, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "No runs of this kind"); n != 6 { // throughput, pubsub and streams-plain CDFs, stages, cache, stream
		t.Fatalf("%d charts marked empty, want 6", n)
	}
	if strings.Count(string(b), "<svg") != 1 {
		t.Fatal("the mycelium CDF should still be drawn")
	}

	// One sweep point: the log axes still have a range.
	one := &bench.Outcome{Result: &bench.Result{System: bench.SystemMycelium, Case: "sweep-256", OK: 1, ThroughputRPS: 1000}, Lat: []int64{1e6}}
	if err := report.Write(filepath.Join(t.TempDir(), "one.html"), &report.Env{}, []report.Run{{Case: "sweep-256", Concurrency: 256, Sweep: true, Out: one}}, nil); err != nil {
		t.Fatalf("throughput chart of one point: %v", err)
	}
}
