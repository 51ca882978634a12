package report

import (
	"fmt"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/egos/mycelium/internal/svgchart"
)

// streamChart draws the streamed-reply and cancellation measurements of
// the stream and cancel cases: p50 and p99 of the time to the first chunk,
// between chunks, the bus's own time per chunk, and from a caller's cancel
// to its handler's ctx.Done (they span microseconds to
// tens of milliseconds; the caption gives each figure).
func streamChart(runs []Run) (chart, error) {
	var names []string
	var p50, p99 plotter.Values
	caption := ""
	for _, r := range runs {
		res := r.Out.Result
		if st := res.Stream; st != nil {
			names = append(names, "first chunk", "between chunks", "bus time per chunk")
			p50 = append(p50, st.FirstChunkP50US, st.InterChunkP50US, st.OverheadP50US)
			p99 = append(p99, st.FirstChunkP99US, st.InterChunkP99US, st.OverheadP99US)
			caption += fmt.Sprintf("%s: %d streams of %d chunks, the handler sending one every %.0f ms, %d at once; the full reply took p50 %s (p99 %s), its first chunk p50 %s. The bus's time per chunk runs from the handler's Send to the caller's Recv (one process, one clock). ",
				r.Case, st.Streams, st.Chunks, st.IntervalMS, res.Concurrency, usLabel(st.FullReplyP50US), usLabel(st.FullReplyP99US), usLabel(st.FirstChunkP50US))
		}
		if c := res.Cancel; c != nil {
			names = append(names, "cancel to handler")
			p50 = append(p50, c.P50US)
			p99 = append(p99, c.P99US)
			caption += fmt.Sprintf("%s: %d requests cancelled by their callers while the handler ran (%d at once); from the cancel to the handler's ctx.Done p50 %s, p99 %s, max %s; %d missed. ",
				r.Case, c.Cancels, res.Concurrency, usLabel(c.P50US), usLabel(c.P99US), usLabel(c.MaxUS), c.Missed)
		}
	}
	if len(names) == 0 {
		return noData("stream", "Streamed replies and cancellation"), nil
	}
	p := svgchart.New("Streamed replies and cancellation", "milliseconds", "")
	ms := func(us plotter.Values) plotter.Values {
		v := make(plotter.Values, len(us))
		for i := range us {
			v[i] = us[i] / 1000
		}
		return v
	}
	if err := hbars(p, barSeries{"p50", ms(p50)}, barSeries{"p99", ms(p99)}); err != nil {
		return chart{}, err
	}
	p.NominalY(names...)
	svg, err := svgchart.SVG(p, 9*vg.Inch, vg.Length(len(names))*vg.Points(34)+vg.Inch)
	return chart{ID: "stream", Title: "Streamed replies and cancellation", Caption: caption, SVG: svg}, err
}
