// Package report draws bus-bench's suite report: one self-contained HTML
// page (inline SVG charts drawn with gonum/plot) of latency distributions,
// throughput against concurrency, where the time went by stage, latency
// over time, the verdicts and every result line.
package report

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/egos/mycelium/cmd/bus-bench/internal/bench"
	"github.com/egos/mycelium/internal/svgchart"
	"github.com/egos/mycelium/metrics"
)

// Run is one (case, system) run of a suite, as the report draws it.
type Run struct {
	Case        string
	Concurrency int
	Handler     string // "" for a plain echo
	Sweep       bool   // a point of the throughput-vs-concurrency sweep
	Timeline    bool   // draw its latency over time
	Out         *bench.Outcome
}

// Env is what a report needs to be compared with another.
type Env struct {
	Redis     string // server version
	RedisURL  string // redacted
	CPUs      int
	GoVersion string
	OS        string
	Host      string
	Args      string
	Started   time.Time
	Elapsed   time.Duration
	// Quick marks a --suite-quick run: scaled down to check the suite, not
	// to measure.
	Quick bool
	// Suite is the suite's name ("" for seed); Compare the standalone
	// Redis of the cluster suite's comparison runs.
	Suite, Compare string
}

// Verdict is one acceptance check of the suite.
type Verdict = svgchart.Verdict

// chart is one figure of the report: an inline SVG drawn by gonum/plot.
type chart = svgchart.Figure

// systems are the systems a report draws, in their legend order.
var systems = []string{bench.SystemMycelium, bench.SystemPubsub, bench.SystemPlain}

func systemColor(system string) color.Color {
	switch system {
	case bench.SystemPubsub:
		return svgchart.Palette[1]
	case bench.SystemPlain:
		return svgchart.Palette[2]
	}
	return svgchart.Palette[0]
}

// smallSample is the number of requests below which a CDF is drawn as its
// points: fewer make a staircase that looks like a distribution and is not.
const smallSample = 20

// cdfChart draws the latency CDF of every non-sweep case of one system.
func cdfChart(runs []Run, system string) (chart, error) {
	p := svgchart.New("Latency CDF: "+system, "latency (ms, log scale)", "fraction of requests")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = svgchart.LogTicks{}
	p.Y.Min, p.Y.Max = 0, 1
	i, small := 0, false
	for _, r := range runs {
		if r.Sweep || r.Out.Result.System != system || len(r.Out.Lat) == 0 {
			continue
		}
		lat := r.Out.Lat
		step := max(1, len(lat)/300)
		var xy plotter.XYs
		for j := 0; j < len(lat); j += step {
			xy = append(xy, plotter.XY{X: math.Max(float64(lat[j])/1e6, 1e-3), Y: float64(j+1) / float64(len(lat))})
		}
		xy = append(xy, plotter.XY{X: math.Max(float64(lat[len(lat)-1])/1e6, 1e-3), Y: 1})
		name, col := r.Case, svgchart.Palette[i%len(svgchart.Palette)]
		if len(lat) < smallSample {
			// A handful of samples is not a distribution: show each one,
			// and say how few there are.
			small = true
			name = fmt.Sprintf("%s (n=%d)", r.Case, len(lat))
			pts, err := plotter.NewScatter(xy[:len(xy)-1])
			if err != nil {
				return chart{}, err
			}
			pts.Color, pts.Radius = col, vg.Points(3)
			p.Add(pts)
		}
		if err := svgchart.Line(p, name, xy, col, i >= len(svgchart.Palette)); err != nil {
			return chart{}, err
		}
		i++
	}
	if i == 0 {
		return noData("cdf-"+system, "Latency distribution ("+system+")"), nil
	}
	// A log axis needs a positive, non-empty range even for one sample.
	p.X.Min, p.X.Max = math.Max(p.X.Min/1.5, 1e-3), p.X.Max*1.5
	svg, err := svgchart.SVG(p, 9*vg.Inch, 5*vg.Inch)
	caption := "Cumulative distribution of end-to-end latency per scenario: the further left a curve rises, the faster; its top tail is the p99 and the maximum."
	if small {
		caption += fmt.Sprintf(" Scenarios with fewer than %d requests are drawn as their points, with n in the legend: their curve is too coarse to read percentiles from.", smallSample)
	}
	return chart{ID: "cdf-" + system, Title: "Latency distribution (" + system + ")", Caption: caption, SVG: svg}, err
}

// throughputChart draws the sweep: requests per second against
// concurrency, for both systems.
func throughputChart(runs []Run) (chart, error) {
	p := svgchart.New("Throughput vs concurrency (1 KiB echo)", "concurrent callers (log scale)", "requests per second (log scale)")
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	sweep := sweepConcurrency(runs)
	p.X.Tick.Marker = plot.ConstantTicks(concurrencyTicks(sweep))
	p.Y.Tick.Marker = svgchart.LogTicks{}
	p.Legend.Top, p.Legend.Left = true, true
	drawn := false
	for _, sys := range systems {
		var xy plotter.XYs
		for _, r := range runs {
			if r.Sweep && r.Out.Result.System == sys && r.Out.Result.ThroughputRPS > 0 {
				xy = append(xy, plotter.XY{X: float64(r.Concurrency), Y: r.Out.Result.ThroughputRPS})
			}
		}
		if len(xy) == 0 {
			continue
		}
		if err := svgchart.Line(p, sys, xy, systemColor(sys), false); err != nil {
			return chart{}, err
		}
		pts, err := plotter.NewScatter(xy)
		if err != nil {
			return chart{}, err
		}
		pts.Color = systemColor(sys)
		p.Add(pts)
		drawn = true
	}
	if !drawn {
		return noData("throughput", "Throughput vs concurrency"), nil
	}
	// Log axes need positive, non-empty ranges even for a single point.
	p.X.Min, p.X.Max = 0.8*float64(sweep[0]), 1.25*float64(sweep[len(sweep)-1])
	p.Y.Min, p.Y.Max = p.Y.Min/1.5, p.Y.Max*1.5
	svg, err := svgchart.SVG(p, 9*vg.Inch, 5*vg.Inch)
	return chart{ID: "throughput", Title: "Throughput vs concurrency",
		Caption: fmt.Sprintf("Closed-loop request/reply with 1 KiB payloads and in-process echo workers, each point a %s run: Mycelium pipelines every caller's writes and reads over a few connections; the baseline pays a subscription per request.", sweepDuration(runs)), SVG: svg}, err
}

// sweepDuration says how long the sweep's points ran ("2s", or "0.4-0.6 s"
// when they differ, from the runs' measured seconds).
func sweepDuration(runs []Run) string {
	lo, hi := math.Inf(1), 0.0
	for _, r := range runs {
		if r.Sweep {
			lo, hi = math.Min(lo, r.Out.Result.Seconds), math.Max(hi, r.Out.Result.Seconds)
		}
	}
	l, h := fmt.Sprintf("%.1f", lo), fmt.Sprintf("%.1f", hi)
	if l == h {
		return h + " s"
	}
	return l + "-" + h + " s"
}

// sweepConcurrency is the sorted concurrencies of the sweep's runs.
func sweepConcurrency(runs []Run) []int {
	var cs []int
	for _, r := range runs {
		if r.Sweep && !slices.Contains(cs, r.Concurrency) {
			cs = append(cs, r.Concurrency)
		}
	}
	slices.Sort(cs)
	return cs
}

func concurrencyTicks(sweep []int) []plot.Tick {
	var ts []plot.Tick
	for _, c := range sweep {
		ts = append(ts, plot.Tick{Value: float64(c), Label: fmt.Sprint(c)})
	}
	return ts
}

// stackStages are the stages stacked in the breakdown, in data-path order:
// together they cover a request end to end (the handler is left out, so
// the bus's own time stays visible next to slow handlers).
var stackStages = []metrics.Stage{metrics.Admission, metrics.Encode, metrics.Write, metrics.QueueWait, metrics.ReplyTransit, metrics.Decode}

// stageChart draws, per mycelium case, each stage's share of the mean
// request (handler excluded) as stacked percentages; the x labels carry
// the absolute total, and the stage table below the charts the details.
func stageChart(runs []Run) (chart, error) {
	p := svgchart.New("Where the time goes (mycelium, share of the mean request, handler excluded)", "percent of the bus's time", "")
	var cases []Run
	for _, r := range runs {
		if r.Out.Result.System == bench.SystemMycelium && len(r.Out.Result.Stages) > 0 && (!r.Sweep || r.Concurrency == 64 || r.Concurrency == 256) {
			cases = append(cases, r)
		}
	}
	if len(cases) == 0 {
		return noData("stages", "Stage breakdown"), nil
	}
	slices.Reverse(cases)                  // the first case on top (a nominal y axis counts up)
	means := make([][]float64, len(cases)) // [case][stage]
	names := make([]string, len(cases))
	for j, r := range cases {
		means[j] = make([]float64, len(stackStages))
		total := 0.0
		for i, st := range stackStages {
			for _, s := range r.Out.Result.Stages {
				if s.Stage == st.String() {
					means[j][i] = s.MeanUS
				}
			}
			total += means[j][i]
		}
		for i := range means[j] {
			if total > 0 {
				means[j][i] *= 100 / total
			}
		}
		names[j] = fmt.Sprintf("%s (%s)", r.Case, usLabel(total))
	}
	var below *plotter.BarChart
	for i, st := range stackStages {
		vals := make(plotter.Values, len(cases))
		for j := range cases {
			vals[j] = means[j][i]
		}
		b, err := plotter.NewBarChart(vals, vg.Points(16))
		if err != nil {
			return chart{}, err
		}
		b.Horizontal = true // case names read flat along the y axis
		b.Color = svgchart.Palette[i%len(svgchart.Palette)]
		b.LineStyle.Width = 0
		if below != nil {
			b.StackOn(below)
		}
		below = b
		p.Add(b)
		p.Legend.Add(st.String(), b)
	}
	p.NominalY(names...)
	p.X.Min, p.X.Max = 0, 100
	p.X.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 0, Label: "0"}, {Value: 25, Label: "25"}, {Value: 50, Label: "50"}, {Value: 75, Label: "75"}, {Value: 100, Label: "100"}})
	svg, err := svgchart.SVG(p, 9*vg.Inch, vg.Length(len(cases))*vg.Points(26)+vg.Inch)
	return chart{ID: "stages", Title: "Stage breakdown",
		Caption: "Each stage's share of the mean request, from the producer's measurements (queue wait and handler time as the worker reported them on its reply); the label of each bar carries the sum of the stacked means. Queue wait counts from the entry's stream id, so it overlaps the Redis write by up to one round trip. Small requests split their time between the Redis write, the wait for a worker's read and the reply's transit; large payloads spend it copying bytes through Redis.", SVG: svg}, err
}

// noData is a chart the runs so far cannot draw (an interrupted suite).
func noData(id, title string) chart {
	return chart{ID: id, Title: title, Caption: "No runs of this kind in these results (was the suite interrupted?)."}
}

// thousands prints v with a thin space between groups of three digits
// (12 345 678): big counts read at a glance.
func thousands(v int64) string {
	s := strconv.FormatInt(v, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u2009")
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// USLabel prints microseconds as µs or ms (for verdicts).
func USLabel(us float64) string { return usLabel(us) }

// usLabel prints microseconds as µs or ms.
func usLabel(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.1f ms", us/1000)
	}
	return fmt.Sprintf("%.0f µs", us)
}

// timelineChart draws every request's latency against the time it started,
// for one case and both systems.
func timelineChart(runs []Run, name string) (chart, error) {
	overhead := false // with a simulated handler, draw end to end minus handler
	for _, r := range runs {
		if r.Case == name && r.Handler != "" {
			overhead = true
		}
	}
	title, ylabel := "Latency over time: "+name, "latency (ms)"
	if overhead {
		title, ylabel = "Bus overhead over time: "+name+" (end to end minus handler)", "overhead (ms)"
	}
	p := svgchart.New(title, "seconds since the run started, when the request completed", ylabel)
	drawn := false
	for _, sys := range systems {
		for _, r := range runs {
			if r.Case != name || r.Out.Result.System != sys || len(r.Out.Timeline) == 0 {
				continue
			}
			xy := make(plotter.XYs, len(r.Out.Timeline))
			for i, pt := range r.Out.Timeline {
				lat := pt.Lat
				if overhead {
					lat -= pt.Handler
				}
				// At its completion, not its start: when every request of a
				// round starts at once (a closed loop), their starts pile
				// up on one instant and their completions do not.
				xy[i] = plotter.XY{X: pt.At + float64(pt.Lat)/1e9, Y: float64(lat) / 1e6}
			}
			s, err := plotter.NewScatter(xy)
			if err != nil {
				return chart{}, err
			}
			s.Color = systemColor(sys)
			s.Radius = vg.Points(2)
			switch sys {
			case bench.SystemPubsub:
				s.Shape = draw.CrossGlyph{}
			case bench.SystemPlain:
				s.Shape = draw.TriangleGlyph{}
			}
			p.Add(s)
			p.Legend.Add(sys, s)
			drawn = true
		}
	}
	if !drawn {
		return noData("timeline-"+name, title), nil
	}
	svg, err := svgchart.SVG(p, 9*vg.Inch, 4.5*vg.Inch)
	caption := "One mark per request at the time it completed, its latency counted from when it was due (continuous: its scheduled time, so queueing in the caller counts). Steady bands mean steady service; drift or spikes would show queues building."
	if overhead {
		caption = "One mark per request at the time it completed: its end-to-end latency minus the time its handler took (the simulated reasoning work), i.e. what the bus added. The target is a p99 under 2 ms."
	}
	return chart{ID: "timeline-" + name, Title: title, Caption: caption, SVG: svg}, err
}

// reportData is what the HTML template renders.
type reportData struct {
	Env       *Env
	Verdicts  []Verdict
	Results   []*bench.Result
	Stages    []stageRow
	Charts    []chart
	FontFace  template.CSS
	CSS       template.CSS
	Failovers []failoverRow
}

// failoverRow is one failover run of the cluster suite.
type failoverRow struct {
	Case string
	F    *bench.FailoverResult
}

type stageRow struct {
	Case   string
	Stages []metrics.Summary
	E2E    float64
}

// Write renders the report of runs, with info and verdicts, as one
// self-contained HTML page at path.
func Write(path string, info *Env, runs []Run, verdicts []Verdict) error {
	var charts []chart
	add := func(c chart, err error) error {
		if err != nil {
			return fmt.Errorf("chart %s: %w", c.ID, err)
		}
		charts = append(charts, c)
		return nil
	}
	if info.Suite == "cluster" {
		for _, sc := range []string{"rpc", "publish"} {
			if err := add(partitionChart(runs, sc)); err != nil {
				return err
			}
		}
	} else {
		if err := add(throughputChart(runs)); err != nil {
			return err
		}
		for _, sys := range systems {
			if err := add(cdfChart(runs, sys)); err != nil {
				return err
			}
		}
		if err := add(stageChart(runs)); err != nil {
			return err
		}
		if err := add(cacheChart(runs)); err != nil {
			return err
		}
		if err := add(streamChart(runs)); err != nil {
			return err
		}
	}
	for _, r := range runs {
		if r.Timeline && r.Out.Result.System == bench.SystemMycelium {
			if err := add(timelineChart(runs, r.Case)); err != nil {
				return err
			}
		}
	}
	d := reportData{Env: info, Verdicts: verdicts, Charts: charts, FontFace: svgchart.FontFace(), CSS: svgchart.CSS}
	for _, r := range runs {
		d.Results = append(d.Results, r.Out.Result)
		if f := r.Out.Result.Failover; f != nil {
			d.Failovers = append(d.Failovers, failoverRow{Case: r.Case, F: f})
		}
		if len(r.Out.Result.Stages) > 0 {
			d.Stages = append(d.Stages, stageRow{Case: r.Case, Stages: r.Out.Result.Stages})
		}
	}
	var b bytes.Buffer
	if err := reportTemplate.Execute(&b, d); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

var reportTemplate = template.Must(template.Must(template.New("report").Funcs(template.FuncMap{
	"ms": func(us int64) string { return fmt.Sprintf("%.3f", float64(us)/1000) },
	"f0": func(v float64) string { return thousands(int64(v + 0.5)) },
	"n": func(v any) string {
		switch x := v.(type) {
		case int:
			return thousands(int64(x))
		case int64:
			return thousands(x)
		case uint64:
			return thousands(int64(x))
		}
		return fmt.Sprint(v)
	},
	"f1":   func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"when": func(t time.Time) string { return t.Format(time.RFC3339) },
}).Parse(svgchart.Partials)).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Mycelium performance report</title>
<style>
{{.FontFace}}
{{.CSS}}
tr.pubsub-baseline td { color: #8a1c1c; }
tr.streams-plain td { color: #1f6f1f; }
.quick { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6rem 0.8rem; max-width: 60rem; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll table { font-size: 0.85rem; }
details summary { cursor: pointer; font-weight: 600; margin: 1rem 0 0.5rem; }
</style>
</head>
<body>
<h1>Mycelium performance report{{if .Env.Quick}} (quick run){{end}}</h1>
{{if .Env.Quick}}<p class="quick"><strong>Quick run</strong> (<code>--suite-quick</code>): scaled down to check the suite itself, not to measure:
a twentieth of the requests, sweep points a quarter as long, a 200 ms handler instead of 2 s. Its figures and verdicts say
nothing about performance, and its targets are not enforced.</p>{{end}}
{{if eq .Env.Suite "cluster"}}<p>Suite <code>cluster</code>: request/reply and events on a topic of 1, 3 and 12 partitions on a Redis Cluster
{{if .Env.Compare}}and on one standalone Redis ({{.Env.Compare}}) {{end}}with in-process workers, then failovers under load
(docs/cluster.md). Every process shares this machine's CPUs: the figures show cost per request and what a failover loses,
not the scaling of a cluster with a core per master.</p>{{else}}<p>Suite <code>seed</code>: every scenario once on Mycelium (Redis Streams) and once on the PubSub baseline
(the design it replaces: a fresh subscription per request, JSON payloads), against the same Redis, with
in-process workers. Latency is measured by the caller from send to verified reply.</p>{{end}}
<h2>Environment</h2>
<dl>
<dt>Redis</dt><dd>{{.Env.Redis}} at {{.Env.RedisURL}}</dd>
<dt>CPUs</dt><dd>{{.Env.CPUs}} (Redis, the callers and the workers share them)</dd>
<dt>Go</dt><dd>{{.Env.GoVersion}} {{.Env.OS}}</dd>
<dt>Host</dt><dd>{{.Env.Host}}</dd>
<dt>Command</dt><dd><code>bus-bench {{.Env.Args}}</code></dd>
<dt>Started</dt><dd>{{when .Env.Started}}, ran {{.Env.Elapsed}}</dd>
</dl>
<h2>Targets</h2>
{{template "verdicts" .Verdicts}}
{{template "figures" .Charts}}
<h2>Results</h2>
<div class="scroll"><table>
<tr><th>case</th><th>system</th><th>partitions</th><th>concurrency</th><th>payload B</th><th>requests</th><th>errors</th><th>req/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>overhead p99 ms</th><th>client CPU µs/req</th><th>Redis CPU µs/req</th><th>entries per write / read</th></tr>
{{range .Results}}<tr class="{{.System}}"><td>{{.Case}}</td><td class="l">{{.System}}{{with .RedisMode}} ({{.}}){{end}}</td><td>{{if .Partitions}}{{.Partitions}}{{end}}</td><td>{{n .Concurrency}}</td><td>{{n .Payload}}</td><td>{{n .Requests}}</td><td>{{n .Errors}}</td><td>{{f0 .ThroughputRPS}}</td><td>{{ms .P50US}}</td><td>{{ms .P90US}}</td><td>{{ms .P99US}}</td><td>{{ms .MaxUS}}</td><td>{{if .OverheadP99US}}{{ms .OverheadP99US}}{{end}}</td><td>{{if .ClientCPUUS}}{{f1 .ClientCPUUS}}{{end}}</td><td>{{if .RedisCPUUS}}{{f1 .RedisCPUUS}}{{end}}</td><td>{{with .Batches}}{{f1 .PerWrite}} / {{f1 .PerRead}}{{end}}</td></tr>
{{end}}</table></div>
<details>
<summary>Stages of every mycelium case, in µs (the breakdown chart above draws their means)</summary>
<div class="scroll"><table>
<tr><th>case</th><th>stage</th><th>count</th><th>mean µs</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th></tr>
{{range .Stages}}{{$c := .Case}}{{range .Stages}}<tr><td>{{$c}}</td><td class="l">{{.Stage}}</td><td>{{n .Count}}</td><td>{{f1 .MeanUS}}</td><td>{{f1 .P50US}}</td><td>{{f1 .P90US}}</td><td>{{f1 .P99US}}</td></tr>
{{end}}{{end}}</table></div>
</details>
{{if .Failovers}}<h2>Failovers</h2>
<p>The master of the topic's partition 0 failed over under load: <em>manual</em> is a coordinated CLUSTER FAILOVER
(the master pauses writes until its replica caught up), <em>shutdown</em> a crash (SHUTDOWN NOSAVE NOW: the replica is
promoted after cluster-node-timeout). Recovery: from the failover to the first answer to a request on that partition
(probed every 20 ms). Events: published and acknowledged by Redis, then checked at the end.</p>
<table>
<tr><th>case</th><th>mode</th><th>master</th><th>at s</th><th>recovery ms</th><th>probe errors</th><th>events acked</th><th>handled</th><th>lost</th><th>duplicated</th></tr>
{{range .Failovers}}<tr><td>{{.Case}}</td><td class="l">{{.F.Mode}}</td><td class="l">{{.F.Target}}</td><td>{{f1 .F.AtS}}</td><td>{{f0 .F.RecoveryMS}}</td><td>{{.F.ProbeErrors}}</td><td>{{.F.EventsAcked}}</td><td>{{.F.EventsHandled}}</td><td>{{.F.Lost}}</td><td>{{.F.Duplicated}}</td></tr>
{{end}}</table>{{end}}
<p>Raw results: <code>results.jsonl</code> next to this file, one <code>bus-bench --json</code> line per run.</p>
</body>
</html>
`))
