package report

import (
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/egos/mycelium/internal/svgchart"
)

// cacheChart draws what the response cache saved in the cached cases: the
// handler calls per 1,000 requests answered, with and without the cache (a
// ratio: drawn side by side, the requests dwarfed the few calls on a linear
// axis), and, in the caption, the counts and the latency of each kind of
// answer.
func cacheChart(runs []Run) (chart, error) {
	var cached []Run
	for _, r := range runs {
		if r.Out.Result.Cache != nil {
			cached = append(cached, r)
		}
	}
	if len(cached) == 0 {
		return noData("cache", "Response cache"), nil
	}
	p := svgchart.New("Response cache: handler calls per 1,000 requests answered", "handler calls per 1,000 requests", "")
	names := make([]string, len(cached))
	perK := make(plotter.Values, len(cached))
	for i, r := range cached {
		res := r.Out.Result
		names[i] = fmt.Sprintf("%s (%s calls for %s requests, %d distinct asked)", r.Case, thousands(res.Cache.HandlerCalls),
			thousands(int64(res.OK)), res.Cache.DistinctRequested)
		if res.OK > 0 {
			perK[i] = 1000 * float64(res.Cache.HandlerCalls) / float64(res.OK)
		}
	}
	if err := hbars(p, barSeries{"handler calls per 1,000 requests", perK}); err != nil {
		return chart{}, err
	}
	p.NominalY(names...)
	svg, err := svgchart.SVG(p, 9*vg.Inch, vg.Length(len(cached))*vg.Points(40)+vg.Inch)
	caption := "Handler calls per 1,000 requests answered, with the response cache and without it (cached-off: 1,000, every request a call). "
	for _, r := range cached {
		c := r.Out.Result.Cache
		if !c.Enabled {
			continue
		}
		caption += fmt.Sprintf("With the cache: %.1f%% of answers from the local tier (p50 %s, p99 %s), %.1f%% from the shared tier (p50 %s, p99 %s), %d coalesced; a miss (a handler call) took p50 %s, p99 %s. ",
			100*c.HitRatioLocal, usLabel(c.LocalHitP50US), usLabel(c.LocalHitP99US), 100*c.HitRatioShared, usLabel(c.SharedHitP50US), usLabel(c.SharedHitP99US),
			c.CoalescedLocal+c.CoalescedRemote, usLabel(c.MissP50US), usLabel(c.MissP99US))
	}
	caption += "With coalescing, the handler runs at most once per distinct payload asked within the TTL."
	return chart{ID: "cache", Title: "Response cache", Caption: caption, SVG: svg}, err
}

// barSeries is one series of a horizontal bar chart.
type barSeries struct {
	name string
	v    plotter.Values
}

// hbars adds series to p as horizontal bars side by side (12 pt each, one
// svgchart.Palette colour per series), with a legend entry each.
func hbars(p *plot.Plot, series ...barSeries) error {
	for k, s := range series {
		b, err := plotter.NewBarChart(s.v, vg.Points(12))
		if err != nil {
			return err
		}
		b.Horizontal = true
		b.Color = svgchart.Palette[k]
		b.LineStyle.Width = 0
		b.Offset = vg.Points(float64(12*k - 6*(len(series)-1)))
		p.Add(b)
		p.Legend.Add(s.name, b)
	}
	return nil
}
