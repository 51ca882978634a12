package report

import (
	"fmt"
	"strings"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/egos/mycelium/internal/svgchart"
)

// partitionChart draws the cluster suite's throughput against the number
// of partitions, one line per deployment and caller count, for scenario sc.
func partitionChart(runs []Run, sc string) (chart, error) {
	p := svgchart.New(fmt.Sprintf("%s: throughput vs partitions (1 KiB)", sc), "partitions", "requests per second")
	p.Legend.Top, p.Legend.Left = true, true
	type key struct {
		where string
		conc  int
	}
	lines := map[key]plotter.XYs{}
	var order []key
	for _, r := range runs {
		res := r.Out.Result
		if res.Partitions == 0 || res.Failover != nil || !strings.HasPrefix(r.Case, sc+"-") || res.ThroughputRPS <= 0 {
			continue
		}
		where := "standalone"
		if res.RedisMode == "cluster" {
			where = "cluster (3 masters)"
		}
		k := key{where, r.Concurrency}
		if _, ok := lines[k]; !ok {
			order = append(order, k)
		}
		lines[k] = append(lines[k], plotter.XY{X: float64(res.Partitions), Y: res.ThroughputRPS})
	}
	if len(order) == 0 {
		return noData("partitions-"+sc, sc+": throughput vs partitions"), nil
	}
	for i, k := range order {
		c := svgchart.Palette[i%len(svgchart.Palette)]
		if err := svgchart.Line(p, fmt.Sprintf("%s, %d callers", k.where, k.conc), lines[k], c, k.where == "standalone"); err != nil {
			return chart{}, err
		}
		pts, err := plotter.NewScatter(lines[k])
		if err != nil {
			return chart{}, err
		}
		pts.Color = c
		p.Add(pts)
	}
	p.Y.Min = 0
	svg, err := svgchart.SVG(p, 9*vg.Inch, 5*vg.Inch)
	return chart{ID: "partitions-" + sc, Title: sc + ": throughput vs partitions",
		Caption: "Closed loop on a topic of 1, 3 and 12 partitions, in-process echo workers reading every partition. On one machine the three masters, the callers and the workers share its CPUs: the cluster's lines show what routing and partitioning cost, not what more machines would add (docs/cluster.md derives that from the CPU per request).",
		SVG:     svg}, err
}
