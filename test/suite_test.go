package test

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/internal/redistest"
)

// TestBusBenchSuiteReport runs the seed suite scaled down (--suite-quick)
// against a real redis-server: one valid JSON line per case and system,
// no errors, stage breakdowns for mycelium, and a self-contained report
// whose every chart is a well-formed inline SVG with data in it.
func TestBusBenchSuiteReport(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	buildCmd(t, "bus-worker") // beside bus-bench: the quota cases start it
	cmd := exec.CommandContext(ctx, buildCmd(t, "bus-bench"), "--redis", srv.URL, "--suite", "seed", "--suite-quick", "--report", dir, "--json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bus-bench --suite seed: %v\n%s", err, stderr.String())
	}
	fromFile, err := os.ReadFile(filepath.Join(dir, "results.jsonl"))
	if err != nil || string(fromFile) != string(out) {
		t.Fatalf("results.jsonl differs from stdout (%v)", err)
	}
	type stage struct {
		Stage string  `json:"stage"`
		Count int     `json:"count"`
		P50   float64 `json:"p50_us"`
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var r struct {
			System     string  `json:"system"`
			Scenario   string  `json:"scenario"`
			Case       string  `json:"case"`
			OK         int     `json:"ok"`
			Errors     int     `json:"errors"`
			Throughput float64 `json:"throughput_rps"`
			P50        int64   `json:"p50_us"`
			Overhead   int64   `json:"overhead_p99_us"`
			Stages     []stage `json:"stages"`
			ClientCPU  float64 `json:"client_cpu_us"`
			RedisCPU   float64 `json:"redis_cpu_us"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if strings.HasPrefix(r.Case, "quota") {
			// A fake provider behind bus-worker processes: its answers
			// and 429s, no request latency (events), no in-process
			// stages. Without limits a 5 s run may see no answer at all
			// (every call met a 429 and waits out its retry).
			if !strings.Contains(sc.Text(), `"quota":{`) || r.Errors != 0 || (!strings.HasSuffix(r.Case, "-off") && r.OK == 0) {
				t.Errorf("%s: %s", r.Case, sc.Text())
			}
			seen[r.Case+"/"+r.System] = true
			continue
		}
		if strings.HasPrefix(r.Case, "priority") || strings.HasPrefix(r.Case, "tenants") {
			// Scheduling: the queue wait of the measured requests (none
			// in the shares run: every level flooded with events).
			if !strings.Contains(sc.Text(), `"sched":{`) || r.Errors != 0 || r.OK == 0 {
				t.Errorf("%s: %s", r.Case, sc.Text())
			}
			seen[r.Case+"/"+r.System] = true
			continue
		}
		// A real redis-server reports INFO cpu: every run has its CPU per request.
		if r.Errors != 0 || r.OK == 0 || r.Throughput <= 0 || r.P50 <= 0 || r.ClientCPU <= 0 || r.RedisCPU <= 0 {
			t.Errorf("%s/%s: %s", r.Case, r.System, sc.Text())
		}
		if r.System == "mycelium" && (r.Case == "stream" || r.Case == "cancel") {
			if !strings.Contains(sc.Text(), `"`+r.Case+`":{`) {
				t.Errorf("%s: no %s figures: %s", r.Case, r.Case, sc.Text())
			}
		} else if r.System == "mycelium" {
			names := map[string]bool{}
			for _, s := range r.Stages {
				names[s.Stage] = s.Count > 0
			}
			for _, want := range []string{"encode", "admission", "redis_write", "queue_wait", "handler", "reply_write", "reply_transit", "decode", "end_to_end"} {
				if !names[want] {
					t.Errorf("%s: stage %s missing", r.Case, want)
				}
			}
		}
		if r.Case == "reasoning" && r.Overhead <= 0 {
			t.Errorf("reasoning/%s: no overhead reported", r.System)
		}
		seen[r.Case+"/"+r.System] = true
	}
	for _, c := range []string{"single", "concurrent-5", "concurrent-10", "concurrent-20", "payload-64KiB", "payload-1MiB",
		"continuous", "reasoning", "sweep-1", "sweep-256"} {
		for _, sys := range []string{"mycelium", "pubsub-baseline"} {
			if !seen[c+"/"+sys] {
				t.Errorf("no result for %s on %s", c, sys)
			}
		}
	}
	for _, c := range []string{"priority", "priority-shares", "tenants", "tenants-off"} {
		if !seen[c+"/mycelium"] {
			t.Errorf("no result for %s", c)
		}
	}
	if !strings.Contains(stderr.String(), "single: p50") || !strings.Contains(stderr.String(), "priority-shares: every level flooded") ||
		!strings.Contains(stderr.String(), "tenants: A floods") || !strings.Contains(stderr.String(), "report: ") {
		t.Errorf("stderr lacks the target verdicts:\n%s", stderr.String())
	}

	html, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	page := string(html)
	for _, id := range []string{"throughput", "cdf-mycelium", "cdf-pubsub-baseline", "stages", "timeline-continuous", "timeline-reasoning"} {
		i := strings.Index(page, `<figure id="`+id+`">`)
		if i < 0 {
			t.Errorf("report lacks chart %s", id)
			continue
		}
		fig, _, _ := strings.Cut(page[i:], "</figure>")
		s := strings.Index(fig, "<svg")
		e := strings.LastIndex(fig, "</svg>")
		if s < 0 || e < 0 {
			t.Errorf("chart %s has no inline SVG", id)
			continue
		}
		svg := fig[s : e+len("</svg>")]
		d := xml.NewDecoder(strings.NewReader(svg))
		for {
			if _, err := d.Token(); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Errorf("chart %s: SVG is not well-formed: %v", id, err)
				}
				break
			}
		}
		if strings.Count(svg, "<path") < 20 {
			t.Errorf("chart %s draws almost nothing (%d paths)", id, strings.Count(svg, "<path"))
		}
	}
	for _, bad := range []string{" src=", "<link", "@import", "href=\"http"} {
		if strings.Contains(page, bad) {
			t.Errorf("report is not self-contained: it has %q", bad)
		}
	}
	if strings.Count(page, "url(") != strings.Count(page, "url(data:") { // the embedded font is a data: URL
		t.Error("report is not self-contained: a url( that is not data:")
	}
	if !strings.Contains(page, "Redis</dt><dd>7.") || !strings.Contains(page, "CPUs") {
		t.Errorf("report lacks the environment")
	}
}
