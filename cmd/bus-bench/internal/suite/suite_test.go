package suite

import (
	"strings"
	"testing"

	"github.com/egos/mycelium/cmd/bus-bench/internal/bench"
	"github.com/egos/mycelium/cmd/bus-bench/internal/report"
)

func TestSeedCasesCoverThePlan(t *testing.T) {
	for _, quick := range []bool{false, true} {
		byName := map[string]Case{}
		for _, c := range SeedCases(quick) {
			byName[c.Name] = c
		}
		for name, want := range map[string]func(c Case) bool{
			"single":        func(c Case) bool { return c.Concurrency == 1 },
			"concurrent-5":  func(c Case) bool { return c.Concurrency == 5 },
			"concurrent-10": func(c Case) bool { return c.Concurrency == 10 },
			"concurrent-20": func(c Case) bool { return c.Concurrency == 20 },
			"payload-64KiB": func(c Case) bool { return c.Payload == 64<<10 },
			"payload-1MiB":  func(c Case) bool { return c.Payload == 1<<20 },
			"continuous":    func(c Case) bool { return c.Scenario == "continuous" && c.Rate > 0 && c.Requests > 0 },
			"reasoning":     func(c Case) bool { return c.Concurrency == 20 && strings.HasPrefix(c.Handler, "sleep:") },
			"sweep-1":       func(c Case) bool { return c.Sweep && c.Duration > 0 && c.Requests == 0 },
			"sweep-256":     func(c Case) bool { return c.Sweep && c.Concurrency == 256 },
			"quota":         func(c Case) bool { return c.Scenario == "quota" && c.Limits && len(c.transports()) == 1 },
			"quota-off":     func(c Case) bool { return c.Scenario == "quota" && !c.Limits },
			"quota-tokens":  func(c Case) bool { return c.Limits && c.QuotaTokensPerMin > 0 },
		} {
			c, ok := byName[name]
			if !ok || !want(c) {
				t.Errorf("quick=%v: case %s = %+v", quick, name, c)
			}
		}
		if !quick && (byName["continuous"].Requests != 100 || byName["reasoning"].Handler != "sleep:2s,500ms") {
			t.Errorf("seed suite lost the plan's continuous (100 requests) or reasoning (2 s ± jitter) case")
		}
	}
}

func TestCaseOptions(t *testing.T) {
	base := &bench.Options{Topic: "t", Handler: "sleep:1s", Rate: 100}
	for _, c := range SeedCases(true) {
		o := c.Options(base, "pubsub")
		if o.Transport != "pubsub" || o.Case != c.Name || o.Topic != "t-"+c.Name || o.Concurrency != c.Concurrency ||
			(c.Handler == "") != (o.Work == nil) {
			t.Errorf("%s: options %+v", c.Name, o)
		}
	}
	if base.Handler != "sleep:1s" || base.Transport != "" {
		t.Errorf("Options changed its base: %+v", base)
	}
}

// TestJudge checks the targets of the brief: 3.5x at 20 callers, 8x at 256.
func TestJudge(t *testing.T) {
	run := func(name, sys string, rps float64) report.Run {
		return report.Run{Case: name, Out: &bench.Outcome{Result: &bench.Result{System: sys, ThroughputRPS: rps}}}
	}
	runs := []report.Run{
		run("concurrent-20", bench.SystemMycelium, 3400), run("concurrent-20", bench.SystemPubsub, 1000),
		run("sweep-256", bench.SystemMycelium, 8000), run("sweep-256", bench.SystemPubsub, 1000),
		run("sweep-64", bench.SystemMycelium, 1), run("sweep-64", bench.SystemPubsub, 1000), // no target there
	}
	vs := Judge(runs)
	if len(vs) != 2 || vs[0].OK || !strings.Contains(vs[0].Text, "concurrent-20") || !strings.Contains(vs[0].Text, "3.4x") ||
		!vs[1].OK || !strings.Contains(vs[1].Text, "sweep-256") {
		t.Fatalf("Judge = %+v; want concurrent-20 failing at 3.4x and sweep-256 passing at 8x", vs)
	}
}

// TestJudgeReportsAbsoluteTimes: the reasoning case's overhead p99 is an
// absolute time, which a loaded machine decides: reported (INFO), never a
// failed target; its errors fail it.
func TestJudgeReportsAbsoluteTimes(t *testing.T) {
	reasoning := func(p99 int64, errs int) []report.Run {
		return []report.Run{{Case: "reasoning", Out: &bench.Outcome{Result: &bench.Result{System: bench.SystemMycelium,
			Handler: "sleep:2s,500ms", Requests: 100, Errors: errs, OverheadP99US: p99, OverheadP50US: 300}}}}
	}
	for _, tt := range []struct {
		p99     int64
		errs    int
		wantErr bool
	}{{1500, 0, false}, {2062, 0, false}, {1500, 1, true}} {
		vs := Judge(reasoning(tt.p99, tt.errs))
		_, err := checkTargets(vs, Config{})
		if (err != nil) != tt.wantErr {
			t.Errorf("reasoning p99 %d us, %d errors: checkTargets = %v, want error %v (verdicts %+v)", tt.p99, tt.errs, err, tt.wantErr, vs)
		}
		var info bool
		for _, v := range vs {
			if v.Info && strings.Contains(v.Text, "p99") {
				info = true
				if got := v.Mark(); got != "INFO" {
					t.Errorf("Mark = %q, want INFO", got)
				}
			}
		}
		if !info {
			t.Errorf("reasoning p99 %d us: no INFO verdict for the overhead in %+v", tt.p99, vs)
		}
	}
}

func TestCheckTargets(t *testing.T) {
	pass, fail := report.Verdict{OK: true}, report.Verdict{}
	for _, tt := range []struct {
		name          string
		vs            []report.Verdict
		cfg           Config
		wantErr, note bool
	}{
		{"all pass", []report.Verdict{pass, pass}, Config{}, false, false},
		{"one fails", []report.Verdict{pass, fail}, Config{}, true, false},
		{"one fails, ignored", []report.Verdict{fail}, Config{IgnoreTargets: true}, false, true},
		{"one fails, quick", []report.Verdict{fail}, Config{Quick: true}, false, true},
	} {
		note, err := checkTargets(tt.vs, tt.cfg)
		if (err != nil) != tt.wantErr || (note != "") != tt.note {
			t.Errorf("%s: checkTargets = %q, %v; want error %v, note %v", tt.name, note, err, tt.wantErr, tt.note)
		}
	}
}

// TestJudgeQuota: no 429 and within 5% of the quota passes; one 429, or
// 90% of the quota, fails.
func TestJudgeQuota(t *testing.T) {
	run := func(name string, q bench.QuotaResult) report.Run {
		return report.Run{Case: name, Out: &bench.Outcome{Result: &bench.Result{System: bench.SystemMycelium, Quota: &q}}}
	}
	for _, tt := range []struct {
		q  bench.QuotaResult
		ok bool
	}{
		{bench.QuotaResult{QuotaRate: 100, RateRatio: 0.99}, true},
		{bench.QuotaResult{QuotaRate: 100, RateRatio: 0.99, HTTP429: 1}, false},
		{bench.QuotaResult{QuotaRate: 100, RateRatio: 0.90}, false},
		{bench.QuotaResult{QuotaRate: 100, QuotaTokensMin: 60000, RateRatio: 0.1, TokenRatio: 0.97}, true},
	} {
		vs := Judge([]report.Run{run("quota", tt.q), run("quota-off", bench.QuotaResult{HTTP429: 600, RateRatio: 0.4})})
		if len(vs) != 1 || vs[0].OK != tt.ok || !strings.Contains(vs[0].Text, "600 429s") {
			t.Errorf("%+v: verdicts %+v, want one with OK %v", tt.q, vs, tt.ok)
		}
	}
}
