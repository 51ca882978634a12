package svgchart

import (
	"strings"
	"testing"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

func TestLogTicks(t *testing.T) {
	var labels []string
	for _, tk := range (LogTicks{}).Ticks(0.3, 30) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	if got := strings.Join(labels, " "); got != "0.5 1 2 5 10 20" {
		t.Fatalf("labels %q", got)
	}
}

func TestSVGInlineWithLegend(t *testing.T) {
	p := New("t", "x", "y")
	if err := Line(p, "series-name", plotter.XYs{{X: 0, Y: 1}, {X: 1, Y: 2}}, Palette[0], true); err != nil {
		t.Fatal(err)
	}
	svg, err := SVG(p, 4*vg.Inch, 3*vg.Inch)
	if err != nil {
		t.Fatal(err)
	}
	s := string(svg)
	if !strings.HasPrefix(s, "<svg") || !strings.Contains(s, "series-name") {
		t.Fatalf("want an inline <svg> with the legend, got %.80q", s)
	}
}
