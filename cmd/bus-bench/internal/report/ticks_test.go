package report

import (
	"strings"
	"testing"
)

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
