package soak

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"os"
	"runtime"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/egos/mycelium/internal/svgchart"
)

// figure is one chart of the soak report.
type figure = svgchart.Figure

// axis is the report's time axis: minutes for a long soak, seconds for a
// short one.
type axis struct {
	div  float64
	unit string
	max  float64
}

func axisFor(d time.Duration) axis {
	if d >= 10*time.Minute {
		return axis{60, "minutes", d.Minutes()}
	}
	return axis{1, "seconds", d.Seconds()}
}

func (a axis) label() string { return a.unit + " since the soak started" }

// marks draws the warm-up as a grey band and each fault as a vertical line
// across the data area, coloured by kind.
type marks struct {
	warmup float64
	faults []Fault
	ax     axis
}

// faultStyle: black and grey, which no data series uses.
var faultStyle = map[string]draw.LineStyle{
	FaultRestart:      {Color: color.RGBA{110, 110, 110, 255}, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(2), vg.Points(2)}},
	FaultKill:         {Color: color.Black, Width: vg.Points(1.5)},
	FaultRedisRestart: {Color: color.Black, Width: vg.Points(1.5), Dashes: []vg.Length{vg.Points(6), vg.Points(3)}},
}

var faultName = map[string]string{
	FaultRestart:      "worker restarted (SIGTERM)",
	FaultKill:         "worker killed (SIGKILL)",
	FaultRedisRestart: "Redis restarted",
}

// Plot implements plot.Plotter.
func (m marks) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	x0, x1 := trX(0), trX(m.warmup/m.ax.div)
	c.FillPolygon(color.RGBA{0, 0, 0, 16}, []vg.Point{{X: x0, Y: c.Min.Y}, {X: x1, Y: c.Min.Y}, {X: x1, Y: c.Max.Y}, {X: x0, Y: c.Max.Y}})
	for _, f := range m.faults {
		x := trX(f.At / m.ax.div)
		c.StrokeLine2(faultStyle[f.Kind], x, c.Min.Y, x, c.Max.Y)
	}
}

// addMarks puts the warm-up band and the fault lines on p, with a legend
// entry per fault kind present.
func addMarks(p *plot.Plot, res *Result, ax axis) {
	p.Add(marks{warmup: res.Config.Warmup.Seconds(), faults: res.Faults, ax: ax})
	for _, k := range []string{FaultRestart, FaultKill, FaultRedisRestart} {
		if slices.ContainsFunc(res.Faults, func(f Fault) bool { return f.Kind == k }) {
			p.Legend.Add(faultName[k], &plotter.Line{LineStyle: faultStyle[k]})
		}
	}
	p.X.Min, p.X.Max = 0, ax.max
}

// series is one line of a chart over time.
type series struct {
	name   string
	xy     plotter.XYs
	dashed bool
	col    int // palette index + 1; 0: by position
}

// timeChart draws series against time, with the marks.
func timeChart(res *Result, id, title, ylabel, caption string, ss []series, logY bool) (figure, error) {
	ax := axisFor(res.Config.Duration)
	p := svgchart.New(title, ax.label(), ylabel)
	drawn := 0
	for i, s := range ss {
		if len(s.xy) == 0 {
			continue
		}
		c := svgchart.Palette[i%len(svgchart.Palette)]
		if s.col > 0 {
			c = svgchart.Palette[(s.col-1)%len(svgchart.Palette)]
		}
		if err := svgchart.Line(p, s.name, s.xy, c, s.dashed); err != nil {
			return figure{}, err
		}
		drawn++
	}
	if drawn == 0 {
		return figure{ID: id, Title: title, Caption: caption + " (Nothing to draw in this run.)"}, nil
	}
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = svgchart.LogTicks{}
		p.Y.Min, p.Y.Max = p.Y.Min/1.5, p.Y.Max*1.5
	} else {
		p.Y.Min = math.Min(0, p.Y.Min)
		p.Y.Max *= 1.08
	}
	addMarks(p, res, ax)
	svg, err := svgchart.SVG(p, 9*vg.Inch, 4*vg.Inch)
	return figure{ID: id, Title: title, Caption: caption, SVG: svg}, err
}

// perSample builds one series from the samples; ok says whether a sample
// has a value.
func perSample(res *Result, f func(s *Sample) (float64, bool)) plotter.XYs {
	ax := axisFor(res.Config.Duration)
	var xy plotter.XYs
	for i := range res.Samples {
		if v, ok := f(&res.Samples[i]); ok {
			xy = append(xy, plotter.XY{X: res.Samples[i].T / ax.div, Y: v})
		}
	}
	return xy
}

// roles is the processes in the samples, in order of appearance.
func roles(res *Result) []string {
	var out []string
	for _, s := range res.Samples {
		for _, p := range s.Procs {
			if !slices.Contains(out, p.Role) {
				out = append(out, p.Role)
			}
		}
	}
	return out
}

func roleName(r string) string {
	if r == "caller" {
		return "caller (producer, backend)"
	}
	return "worker " + r
}

// procChart draws one resource of every process.
func procChart(res *Result, id, title, ylabel, caption string, logY bool, v func(p *ProcSample) float64) (figure, error) {
	var ss []series
	for _, r := range roles(res) {
		ss = append(ss, series{name: roleName(r), xy: perSample(res, func(s *Sample) (float64, bool) {
			for i := range s.Procs {
				if p := &s.Procs[i]; p.Role == r && p.OK {
					return v(p), true
				}
			}
			return 0, false
		})})
	}
	return timeChart(res, id, title, ylabel, caption, ss, logY)
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func figures(res *Result) ([]figure, error) {
	var out []figure
	add := func(f figure, err error) error {
		if err != nil {
			return fmt.Errorf("chart %s: %w", f.ID, err)
		}
		out = append(out, f)
		return nil
	}
	ax := axisFor(res.Config.Duration)
	flat := func(v float64) plotter.XYs { return plotter.XYs{{X: 0, Y: v}, {X: ax.max, Y: v}} }
	marksNote := " The grey band is the warm-up; vertical lines mark the injected faults."
	steps := []func() (figure, error){
		func() (figure, error) {
			return timeChart(res, "throughput", "Throughput", "per second", "Replies received and publishes acknowledged per sampling interval, against the paced rates (dashed): the soak sends an open-loop load at about half the capacity the probe measured."+marksNote, []series{
				{name: "requests answered", xy: perSample(res, func(s *Sample) (float64, bool) { return s.ReqPS, true })},
				{name: "events published", xy: perSample(res, func(s *Sample) (float64, bool) { return s.EvPS, true })},
				{name: "request rate", xy: flat(res.RequestRate), dashed: true, col: 1},
				{name: "event rate", xy: flat(res.EventRate), dashed: true, col: 2},
			}, false)
		},
		func() (figure, error) {
			pos := func(v float64) (float64, bool) { return v, v > 0 }
			return timeChart(res, "latency", "Request latency", "ms (log scale)", fmt.Sprintf("p50 and p99 of the requests answered in each interval, from the time each was due (so a caller that fell behind counts), including the backend's %v ± %v of work.", res.Config.HandlerMean, res.Config.HandlerJitter)+marksNote, []series{
				{name: "p50", xy: perSample(res, func(s *Sample) (float64, bool) { return pos(s.P50MS) })},
				{name: "p99", xy: perSample(res, func(s *Sample) (float64, bool) { return pos(s.P99MS) })},
			}, true)
		},
		func() (figure, error) {
			var ss []series
			for _, k := range sortedKeys(res.Errors) {
				ss = append(ss, series{name: k, xy: perSample(res, func(s *Sample) (float64, bool) { return float64(s.Errors[k]), true })})
			}
			return timeChart(res, "errors", "Caller errors", "errors per interval", "Errors the callers got, by kind, per sampling interval."+marksNote, ss, false)
		},
		func() (figure, error) {
			return procChart(res, "rss", "Resident memory", "MiB", "Resident set of each bus process (from /proc): the caller (this test's producer and the HTTP backend) and each worker role (a restarted role continues with its new process)."+marksNote, false,
				func(p *ProcSample) float64 { return mib(p.RSS) })
		},
		func() (figure, error) {
			return procChart(res, "heap", "Live heap", "MiB", "The heap marked live by each process's last garbage collection (runtime/metrics /gc/heap/live:bytes; go_gc_heap_live_bytes on a worker's /metrics): what a leak would raise."+marksNote, false,
				func(p *ProcSample) float64 { return mib(p.HeapLive) })
		},
		func() (figure, error) {
			return procChart(res, "goroutines", "Goroutines", "goroutines (log scale)", fmt.Sprintf("Goroutines of each process (the caller runs a fixed pool of %d senders).", callers)+marksNote, true,
				func(p *ProcSample) float64 { return float64(p.Goroutines) })
		},
		func() (figure, error) {
			return procChart(res, "fds", "Open file descriptors", "descriptors", "Open descriptors of each process (from /proc): connections to Redis and to the backend, listeners, logs."+marksNote, false,
				func(p *ProcSample) float64 { return float64(p.FDs) })
		},
		func() (figure, error) {
			return timeChart(res, "redis-memory", "Redis memory", "MiB", fmt.Sprintf("Redis used_memory (the topics are capped at %s entries, so it levels off within the warm-up).", capsText(res.StreamCaps))+marksNote, []series{
				{name: "used_memory", xy: perSample(res, func(s *Sample) (float64, bool) { return float64(s.Redis.UsedMemory) / (1 << 20), s.Redis.OK })},
			}, false)
		},
		func() (figure, error) {
			return timeChart(res, "redis-clients", "Redis clients and reply streams", "count", "Connections Redis counts and reply streams under the prefix (one per live producer that made a request)."+marksNote, []series{
				{name: "connected clients", xy: perSample(res, func(s *Sample) (float64, bool) { return float64(s.Redis.Clients), s.Redis.OK })},
				{name: "reply streams", xy: perSample(res, func(s *Sample) (float64, bool) { return float64(s.Redis.ReplyStreams), s.Redis.OK })},
			}, false)
		},
		func() (figure, error) {
			var ss []series
			for i, t := range []string{ReqTopic, EvTopic} {
				ss = append(ss,
					series{name: t + " pending", col: i + 1, xy: perSample(res, func(s *Sample) (float64, bool) { return float64(s.Redis.Pending[t]), s.Redis.OK })},
					series{name: t + " dead letters", col: i + 1, xy: perSample(res, func(s *Sample) (float64, bool) { return float64(s.Redis.DeadLetters[t]), s.Redis.OK }), dashed: true})
			}
			return timeChart(res, "pending", "Pending entries and dead letters", "entries", "Entries delivered and not yet acknowledged (in handlers, or waiting for a retry) and the dead-letter streams, which grow only by the poison trickle."+marksNote, ss, false)
		},
		func() (figure, error) {
			var ss []series
			for _, t := range []string{ReqTopic, EvTopic} {
				ss = append(ss, series{name: t, xy: perSample(res, func(s *Sample) (float64, bool) { return float64(s.Redis.Streams[t]), s.Redis.OK })})
			}
			return timeChart(res, "streams", "Stream lengths", "entries", "Entries in each topic's stream: they grow to the producers' cap (XADD MAXLEN ~) and stay there."+marksNote, ss, false)
		},
	}
	for _, f := range steps {
		if err := add(f()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func capsText(caps map[string]int) string {
	var parts []string
	for _, t := range sortedKeys(caps) {
		parts = append(parts, fmt.Sprintf("%d (%s)", caps[t], t))
	}
	return listed("", parts)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// WriteReport renders res as one self-contained HTML page at path.
func WriteReport(path string, res *Result) error {
	figs, err := figures(res)
	if err != nil {
		return err
	}
	d := struct {
		R        *Result
		Figures  []figure
		FontFace template.CSS
		CSS      template.CSS
		CPUs     int
		Go       string
		Errors   []string
	}{res, figs, svgchart.FontFace(), svgchart.CSS, runtime.NumCPU(), runtime.Version(), sortedKeys(res.Errors)}
	var b bytes.Buffer
	if err := reportTemplate.Execute(&b, d); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

var reportTemplate = template.Must(template.Must(template.New("soak").Funcs(template.FuncMap{
	"f0":   func(v float64) string { return fmt.Sprintf("%.0f", v) },
	"f1":   func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"pct":  func(v float64) string { return fmt.Sprintf("%+.1f%%", 100*v) },
	"when": func(t time.Time) string { return t.Format(time.RFC3339) },
	"dur":  func(d time.Duration) string { return d.Round(time.Second).String() },
}).Parse(svgchart.Partials)).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Mycelium soak report</title>
<style>
{{.FontFace}}
{{.CSS}}
</style>
</head>
<body>
<h1>Mycelium soak report: {{if .R.Pass}}<span class="pass">PASS</span>{{else}}<span class="fail">FAIL</span>{{end}}</h1>
<p>For {{.R.Config.Duration}}: a redis-server with AOF on (appendfsync everysec); two bus-worker processes serving
request/reply on <code>soak-req</code> and one serving events on <code>soak-ev</code>, all calling an HTTP backend that works
{{.R.Config.HandlerMean}} ± {{.R.Config.HandlerJitter}}; an open-loop caller at about half the capacity measured first; a poison
entry every {{.R.Config.PoisonEvery}}; workers restarted (SIGTERM) every {{.R.Config.RestartEvery}}, one SIGKILLed, Redis restarted once.
Recorded every {{.R.Config.Sample}}; <code>soak.jsonl</code> next to this file holds every sample and the result.</p>
<h2>Run</h2>
<dl>
<dt>Started</dt><dd>{{when .R.Started}}, ran {{dur .R.Elapsed}} (warm-up {{.R.Config.Warmup}}, windows {{.R.Config.Window}})</dd>
<dt>Machine</dt><dd>{{.CPUs}} CPUs shared by Redis, the workers and the caller; {{.Go}}</dd>
<dt>Capacity</dt><dd>{{f0 .R.CapacityMPS}} requests/s (closed loop, {{.R.Config.ProbeFor}})</dd>
<dt>Load</dt><dd>{{f0 .R.RequestRate}} requests/s + {{f0 .R.EventRate}} events/s; request timeout {{.R.Config.Timeout}}; workers' claim-idle {{.R.Config.ClaimIdle}}, max deliveries {{.R.Config.MaxDeliveries}}</dd>
</dl>
<h2>Verdicts</h2>
{{template "verdicts" .R.Verdicts}}
{{template "figures" .Figures}}
<h2>Faults</h2>
<table>
<tr><th>fault</th><th>worker</th><th>at s</th><th>over s</th><th>in flight</th><th>exit</th></tr>
{{range .R.Faults}}<tr><td>{{.Kind}}</td><td class="l">{{.Role}}</td><td>{{f1 .At}}</td><td>{{f1 .End}}</td><td>{{.InFlight}}</td><td class="l">{{.Exit}}</td></tr>
{{end}}</table>
<h2>Messages</h2>
<table>
<tr><th>kind</th><th>sent</th><th>answered</th><th>failed</th><th>executed</th><th>re-executions</th><th>explained</th><th>failed but executed</th><th>lost</th><th>unfinished</th><th>stray</th></tr>
<tr><td>requests</td><td>{{.R.Requests.Issued}}</td><td>{{.R.Requests.Answered}}</td><td>{{.R.Requests.Failed}}</td><td>{{.R.Requests.Executed}}</td><td>{{.R.Requests.Duplicates}}</td><td>{{.R.Requests.Explained}}</td><td>{{.R.Requests.FailedExecuted}}</td><td>{{.R.Requests.Lost}}</td><td>{{.R.Requests.Unfinished}}</td><td>{{.R.Requests.Stray}}</td></tr>
<tr><td>events</td><td>{{.R.Events.Issued}}</td><td>{{.R.Events.Answered}}</td><td>{{.R.Events.Failed}}</td><td>{{.R.Events.Executed}}</td><td>{{.R.Events.Duplicates}}</td><td>{{.R.Events.Explained}}</td><td>{{.R.Events.FailedExecuted}}</td><td>{{.R.Events.Lost}}</td><td>{{.R.Events.Unfinished}}</td><td>{{.R.Events.Stray}}</td></tr>
</table>
<p>Latency: first window p50 {{f1 .R.P50First}} ms, p99 {{f1 .R.P99First}} ms ({{.R.FirstN}} requests); last window p50 {{f1 .R.P50Last}} ms, p99 {{f1 .R.P99Last}} ms ({{.R.LastN}} requests).
Poison: {{.R.Poison.Events}} failing events ({{.R.Poison.Deliveries}} deliveries refused), {{.R.Poison.Malformed}} malformed entries, {{.R.Poison.InDLQ}} found in the dead letters.</p>
{{if .Errors}}<h2>Caller errors</h2>
<table>
<tr><th>kind</th><th>errors</th><th>outside fault shadows</th></tr>
{{range .Errors}}<tr><td>{{.}}</td><td>{{index $.R.Errors .}}</td><td>{{index $.R.Unexplained .}}</td></tr>
{{end}}</table>{{end}}
<h2>Drift after warm-up</h2>
<table>
<tr><th>figure</th><th>end of warm-up</th><th>end</th><th>change</th><th></th></tr>
{{range .R.Drift}}<tr><td>{{.What}}</td><td>{{f0 .Ref}}</td><td>{{f0 .End}}</td><td>{{pct .Change}}</td><td class="l">{{if .OK}}<span class="pass">ok</span>{{else}}<span class="fail">out</span>{{end}}</td></tr>
{{end}}</table>
</body>
</html>
`))
