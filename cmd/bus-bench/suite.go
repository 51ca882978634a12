package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/egos/mycelium/bus"
)

// suiteCase is one scenario of a suite, run once per transport.
type suiteCase struct {
	name        string
	scenario    string // rpc | continuous
	concurrency int
	requests    int           // 0 with duration
	duration    time.Duration // sweep points run for a fixed time
	payload     int
	rate        float64 // continuous
	handler     string  // "" = echo
	sweep       bool    // a point of the throughput-vs-concurrency sweep
	timeline    bool    // draw its latency over time
}

// sweepConcurrency are the throughput sweep's points.
var sweepConcurrency = []int{1, 2, 4, 8, 16, 32, 64, 128, 256}

// seedCases are the plan's scenarios: single request; 5, 10 and 20
// concurrent callers; 64 KiB and 1 MiB payloads; continuous operation (100
// requests at a steady rate); simulated reasoning (2 s ± 0.5 s handler, 20
// callers); and a throughput sweep over concurrency 1..256, 1 KiB payloads
// unless said otherwise.
func seedCases(quick bool) []suiteCase {
	cs := []suiteCase{
		{name: "single", scenario: "rpc", concurrency: 1, requests: 2000, payload: 1024},
		{name: "concurrent-5", scenario: "rpc", concurrency: 5, requests: 5000, payload: 1024},
		{name: "concurrent-10", scenario: "rpc", concurrency: 10, requests: 5000, payload: 1024},
		{name: "concurrent-20", scenario: "rpc", concurrency: 20, requests: 10000, payload: 1024},
		{name: "payload-64KiB", scenario: "rpc", concurrency: 4, requests: 1000, payload: 64 << 10},
		{name: "payload-1MiB", scenario: "rpc", concurrency: 4, requests: 100, payload: 1 << 20},
		{name: "continuous", scenario: "continuous", concurrency: 64, requests: 100, payload: 1024, rate: 20, timeline: true},
		{name: "reasoning", scenario: "rpc", concurrency: 20, requests: 200, payload: 1024, handler: "sleep:2s,500ms", timeline: true},
	}
	for _, c := range sweepConcurrency {
		cs = append(cs, suiteCase{name: fmt.Sprintf("sweep-%d", c), scenario: "rpc", concurrency: c, duration: 2 * time.Second, payload: 1024, sweep: true})
	}
	if quick {
		for i := range cs {
			c := &cs[i]
			if c.requests > 0 {
				c.requests = max(c.requests/20, c.concurrency)
			}
			c.duration /= 4
			if c.handler != "" {
				c.handler = "sleep:200ms,50ms"
			}
			if c.rate > 0 {
				c.rate *= 4
			}
		}
	}
	return cs
}

// run is one (case, system) result of a suite.
type suiteRun struct {
	c   suiteCase
	out *outcome
}

// options returns base adjusted for case c on transport tr.
func (c suiteCase) options(base *options, tr string) *options {
	o := *base
	o.suite, o.report = "", ""
	o.transport, o.caseName = tr, c.name
	o.scenario, o.concurrency, o.requests, o.duration, o.payload = c.scenario, c.concurrency, c.requests, c.duration, c.payload
	o.topic = base.topic + "-" + c.name
	o.workers = max(c.concurrency, 64)
	if c.rate > 0 {
		o.rate = c.rate
	}
	o.handler, o.work = "echo", nil
	if c.handler != "" {
		o.handler = c.handler
		_ = o.parseHandler() // the seed cases are valid
	}
	return &o
}

// runSuite runs every case on both transports, prints one result line per
// run and, with --report, writes results.jsonl and report.html.
func runSuite(ctx context.Context, base *options, stdout, stderr io.Writer) error {
	url, stop, err := embedded(base, stderr)
	if err != nil {
		return err
	}
	defer stop()
	base.redis = url
	info, err := describe(ctx, base)
	if err != nil {
		return err
	}
	var jsonl *os.File
	if base.report != "" {
		if err := os.MkdirAll(base.report, 0o755); err != nil {
			return fmt.Errorf("%w: --report: %w", errUsage, err)
		}
		if jsonl, err = os.Create(filepath.Join(base.report, "results.jsonl")); err != nil {
			return fmt.Errorf("%w: --report: %w", errUsage, err)
		}
		defer jsonl.Close()
	}
	started := time.Now()
	var runs []suiteRun
	failed := 0
	cases := seedCases(base.quick)
	interrupted := false
suite:
	for _, c := range cases {
		for _, tr := range []string{"mycelium", "pubsub"} {
			o := c.options(base, tr)
			// Start every case from a collected heap, so garbage from the
			// one before (1 MiB payloads) is not collected during this one.
			debug.FreeOSMemory()
			out, err := bench(ctx, o, stderr)
			if ctx.Err() != nil { // interrupted: this run is incomplete; report the others
				interrupted = true
				break suite
			}
			if err != nil {
				return fmt.Errorf("case %s (%s): %w", c.name, tr, err)
			}
			if out.res.Errors > 0 {
				failed++
			}
			cleanup(ctx, o)
			runs = append(runs, suiteRun{c: c, out: out})
			line, _ := json.Marshal(out.res)
			if base.json {
				fmt.Fprintf(stdout, "%s\n", line)
			} else {
				fmt.Fprintf(stdout, "[%s] ", c.name)
				printResult(stdout, out.res)
			}
			if jsonl != nil {
				if _, err := fmt.Fprintf(jsonl, "%s\n", line); err != nil {
					return fmt.Errorf("--report: %w", err)
				}
			}
		}
	}
	info.Elapsed = time.Since(started).Round(time.Second)
	verdicts := judge(runs)
	w := stderr
	if !base.json {
		w = stdout
	}
	if interrupted {
		fmt.Fprintf(w, "suite seed interrupted after %v: %d of %d runs done\n", info.Elapsed, len(runs), 2*len(cases))
	} else {
		fmt.Fprintf(w, "suite seed finished in %v\n", info.Elapsed)
	}
	for _, v := range verdicts {
		fmt.Fprintf(w, "%s %s\n", map[bool]string{true: "PASS", false: "FAIL"}[v.OK], v.Text)
	}
	if base.report != "" {
		path := filepath.Join(base.report, "report.html")
		if err := writeReport(path, info, runs, verdicts); err != nil {
			return fmt.Errorf("--report: %w", err)
		}
		fmt.Fprintf(w, "report: %s\n", path)
	}
	switch {
	case interrupted:
		return fmt.Errorf("interrupted: %d of %d runs done", len(runs), 2*len(cases))
	case failed > 0:
		return fmt.Errorf("%d runs had errors", failed)
	}
	return nil
}

// cleanup deletes a finished case's streams so large payloads do not pile
// up in Redis across the suite.
func cleanup(ctx context.Context, o *options) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := bus.Connect(cctx, bus.Config{URL: o.redis, ClientName: "myc-bench"})
	if err != nil {
		return
	}
	defer c.Close()
	k := bus.Keys{Prefix: o.prefix}
	_ = c.Do(cctx, c.B().Del().Key(k.Topic(o.topic), k.DeadLetter(o.topic)).Build()).Error()
}

// envInfo is what a report needs to be compared with another.
type envInfo struct {
	Redis     string // server version
	RedisURL  string // redacted
	CPUs      int
	GoVersion string
	OS        string
	Host      string
	Args      string
	Started   time.Time
	Elapsed   time.Duration
}

func describe(ctx context.Context, o *options) (*envInfo, error) {
	cfg := bus.Config{URL: o.redis, ClientName: "myc-bench"}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := bus.Connect(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot reach Redis at %s: %w", errUsage, cfg.Redacted(), err)
	}
	defer c.Close()
	info := &envInfo{RedisURL: cfg.Redacted(), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		OS: runtime.GOOS + "/" + runtime.GOARCH, Args: strings.Join(os.Args[1:], " "), Started: time.Now().UTC()}
	info.Host, _ = os.Hostname()
	if s, err := c.Do(cctx, c.B().Info().Section("server").Build()).ToString(); err == nil {
		for line := range strings.SplitSeq(s, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				info.Redis = v
			}
		}
	}
	if info.Redis == "" {
		info.Redis = "unknown (embedded miniredis?)"
	}
	return info, nil
}

// verdict is one acceptance check of the suite.
type verdict struct {
	OK   bool
	Text string
}

// judge checks the suite's targets: mycelium at least 10x the baseline's
// throughput at concurrency 20 and above, a lower p50 for a single caller,
// and under 2 ms of bus overhead at p99 next to a 2 s handler.
func judge(runs []suiteRun) []verdict {
	by := map[string]map[string]*Result{}
	for _, r := range runs {
		if by[r.c.name] == nil {
			by[r.c.name] = map[string]*Result{}
		}
		by[r.c.name][r.out.res.System] = r.out.res
	}
	var vs []verdict
	for _, r := range runs {
		res := by[r.c.name]
		m, b := res[systemMycelium], res[systemPubsub]
		if r.out.res.System != systemMycelium || m == nil || b == nil || r.c.concurrency < 20 || r.c.handler != "" || r.c.scenario != "rpc" || r.c.payload != 1024 {
			continue
		}
		ratio := m.ThroughputRPS / max(b.ThroughputRPS, 1e-9)
		vs = append(vs, verdict{ratio >= 10, fmt.Sprintf("%s: mycelium %.0f req/s = %.1fx the pubsub baseline's %.0f (target >= 10x)",
			r.c.name, m.ThroughputRPS, ratio, b.ThroughputRPS)})
	}
	if s := by["single"]; s[systemMycelium] != nil && s[systemPubsub] != nil {
		m, b := s[systemMycelium], s[systemPubsub]
		vs = append(vs, verdict{m.P50US < b.P50US, fmt.Sprintf("single: p50 %d us vs the baseline's %d us (target: lower)", m.P50US, b.P50US)})
	}
	if s := by["reasoning"]; s[systemMycelium] != nil {
		m := s[systemMycelium]
		vs = append(vs, verdict{m.OverheadP99US < 2000 && m.Errors == 0, fmt.Sprintf("reasoning (%s handler, 20 callers): bus overhead p99 %d us, p50 %d us (target p99 < 2000 us)",
			strings.TrimPrefix(m.Handler, "sleep:"), m.OverheadP99US, m.OverheadP50US)})
	}
	return vs
}
