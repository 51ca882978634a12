package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/metrics"
)

// TestBaselineOnMiniredis: the PubSub baseline answers requests byte for
// byte with fresh and with pooled connections.
func TestBaselineOnMiniredis(t *testing.T) {
	m := miniredis.RunT(t)
	for _, conn := range []string{"fresh", "pooled"} {
		t.Run(conn, func(t *testing.T) {
			o, err := parseOptions([]string{"--redis", "redis://" + m.Addr(), "--transport", "pubsub", "--pubsub-conn", conn,
				"--concurrency", "4", "--requests", "50", "--payload", "100"}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := bench(ctx, o, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			// miniredis has no INFO cpu: no CPU figures rather than wrong ones.
			if r := out.res; r.System != systemPubsub || r.OK != 50 || r.Errors != 0 || len(r.Stages) != 0 || len(out.lat) != 50 || r.ClientCPUUS != 0 || r.RedisCPUUS != 0 || r.Batches != nil {
				t.Fatalf("result %+v, %d samples", r, len(out.lat))
			}
		})
	}
}

// TestSleepHandlerReportsOverhead: with a simulated handler the result
// carries the bus overhead, and it is far below the handler's time.
func TestSleepHandlerReportsOverhead(t *testing.T) {
	m := miniredis.RunT(t)
	o, err := parseOptions([]string{"--redis", "redis://" + m.Addr(), "--concurrency", "4", "--requests", "8", "--handler", "sleep:30ms,10ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	out, err := bench(context.Background(), o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := out.res
	if r.OK != 8 || r.OverheadP99US <= 0 || r.OverheadP99US > 20_000 || r.P50US < 20_000 || r.Handler != "sleep:30ms,10ms" {
		t.Fatalf("result %+v", r)
	}
	// Batches: at least one entry per round trip on every path, at most
	// the 4 callers' worth.
	if b := r.Batches; b == nil {
		t.Fatal("no batches in a mycelium result")
	} else {
		for name, v := range map[string]float64{"per_write": b.PerWrite, "per_reply_read": b.PerReplyRead, "per_read": b.PerRead, "per_ack_write": b.PerAckWrite} {
			if v < 1 || v > 4 {
				t.Errorf("batches %s = %v, want 1..4", name, v)
			}
		}
	}
}

func TestLockedBreaker(t *testing.T) {
	var b lockedBreaker
	for range 4 {
		b.done(false)
	}
	b.done(true) // a success resets the run of failures
	for range 4 {
		b.done(false)
	}
	if !b.allow() {
		t.Fatal("opened before 5 failures in a row")
	}
	b.done(false)
	if b.allow() {
		t.Fatal("still closed after 5 failures in a row")
	}
}

func TestSeedCasesCoverThePlan(t *testing.T) {
	for _, quick := range []bool{false, true} {
		byName := map[string]suiteCase{}
		for _, c := range seedCases(quick) {
			byName[c.name] = c
		}
		for name, want := range map[string]func(c suiteCase) bool{
			"single":        func(c suiteCase) bool { return c.concurrency == 1 },
			"concurrent-5":  func(c suiteCase) bool { return c.concurrency == 5 },
			"concurrent-10": func(c suiteCase) bool { return c.concurrency == 10 },
			"concurrent-20": func(c suiteCase) bool { return c.concurrency == 20 },
			"payload-64KiB": func(c suiteCase) bool { return c.payload == 64<<10 },
			"payload-1MiB":  func(c suiteCase) bool { return c.payload == 1<<20 },
			"continuous":    func(c suiteCase) bool { return c.scenario == "continuous" && c.rate > 0 && c.requests > 0 },
			"reasoning":     func(c suiteCase) bool { return c.concurrency == 20 && strings.HasPrefix(c.handler, "sleep:") },
			"sweep-1":       func(c suiteCase) bool { return c.sweep && c.duration > 0 && c.requests == 0 },
			"sweep-256":     func(c suiteCase) bool { return c.sweep && c.concurrency == 256 },
		} {
			c, ok := byName[name]
			if !ok || !want(c) {
				t.Errorf("quick=%v: case %s = %+v", quick, name, c)
			}
		}
		if !quick && (byName["continuous"].requests != 100 || byName["reasoning"].handler != "sleep:2s,500ms") {
			t.Errorf("seed suite lost the plan's continuous (100 requests) or reasoning (2 s ± jitter) case")
		}
	}
}

func TestNiceLogTicks(t *testing.T) {
	var labels []string
	for _, tk := range (niceLogTicks{}).Ticks(0.3, 30) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	if got := strings.Join(labels, " "); got != "0.5 1 2 5 10 20" {
		t.Fatalf("labels %q", got)
	}
}

// TestWriteReportSynthetic renders a report from made-up runs: every chart
// is drawn, and nothing in it needs the network.
func TestWriteReportSynthetic(t *testing.T) {
	var runs []suiteRun
	for _, c := range seedCases(true) {
		for _, sys := range []string{systemMycelium, systemPubsub} {
			out := &outcome{res: &Result{System: sys, Case: c.name, Concurrency: c.concurrency, Payload: c.payload, OK: 10, ThroughputRPS: 1000 * float64(c.concurrency)}}
			slower := int64(1)
			if sys == systemPubsub {
				slower = 3
			}
			for i := range 10 {
				p := point{at: float64(i) / 10, lat: slower * int64(time.Millisecond) * int64(i+1), seq: uint64(i)}
				out.timeline = append(out.timeline, p)
				out.lat = append(out.lat, p.lat)
			}
			if sys == systemMycelium {
				var r metrics.Recorder
				for _, st := range metrics.Stages() {
					r.Record(st, time.Duration(math.Pow(2, float64(st)))*time.Microsecond)
				}
				out.res.Stages = r.Snapshot().Summaries()
			}
			summarize(out.res, out.lat)
			runs = append(runs, suiteRun{c: c, out: out})
		}
	}
	path := filepath.Join(t.TempDir(), "report.html")
	if err := writeReport(path, &envInfo{Redis: "7.0.15", CPUs: 2}, runs, judge(runs)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	if n := strings.Count(page, "<svg"); n != 6 {
		t.Fatalf("%d charts, want 6", n)
	}
	for _, want := range []string{"FAIL</span> concurrent-20", "PASS</span> single", "redis_write", "sweep-256"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestWriteReportPartial: an interrupted suite (no sweep, no timeline
// runs) still gets a report; the charts it cannot draw say so.
func TestWriteReportPartial(t *testing.T) {
	c := seedCases(true)[0] // single
	out := &outcome{res: &Result{System: systemMycelium, Case: c.name, OK: 1, ThroughputRPS: 10}, lat: []int64{1e6}, timeline: []point{{lat: 1e6}}}
	path := filepath.Join(t.TempDir(), "report.html")
	if err := writeReport(path, &envInfo{}, []suiteRun{{c: c, out: out}}, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "No runs of this kind"); n != 3 { // throughput, pubsub CDF, stages
		t.Fatalf("%d charts marked empty, want 3", n)
	}
	if strings.Count(string(b), "<svg") != 1 {
		t.Fatal("the mycelium CDF should still be drawn")
	}

	// One sweep point: the log axes still have a range.
	sw := seedCases(true)[len(seedCases(true))-1]
	one := &outcome{res: &Result{System: systemMycelium, Case: sw.name, OK: 1, ThroughputRPS: 1000}, lat: []int64{1e6}}
	if _, err := throughputChart([]suiteRun{{c: sw, out: one}}); err != nil {
		t.Fatalf("throughput chart of one point: %v", err)
	}
}

// --cpuprofile and --trace write a CPU profile and an execution trace of the
// measured run; an unwritable path is a usage error.
func TestProfileAndTraceFiles(t *testing.T) {
	m := miniredis.RunT(t)
	dir := t.TempDir()
	prof, tr := filepath.Join(dir, "cpu.prof"), filepath.Join(dir, "run.trace")
	o, err := parseOptions([]string{"--redis", "redis://" + m.Addr(), "--concurrency", "2", "--requests", "20",
		"--cpuprofile", prof, "--trace", tr}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bench(context.Background(), o, io.Discard); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(prof); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("cpu profile: %d bytes, %v; want a gzipped pprof", len(b), err)
	}
	if b, err := os.ReadFile(tr); err != nil || !bytes.HasPrefix(b, []byte("go 1.")) {
		t.Fatalf("trace: %.20q, %v; want a Go execution trace", b, err)
	}
	o, err = parseOptions([]string{"--redis", "redis://" + m.Addr(), "--requests", "1", "--trace", filepath.Join(dir, "no", "such", "dir")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bench(context.Background(), o, io.Discard); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "--trace") {
		t.Fatalf("unwritable --trace = %v, want a usage error naming the flag", err)
	}
}
