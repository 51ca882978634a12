// Package soak runs the soak (make soak; 60 seconds of it in make test): its
// harness is test/internal/soak (docs/soak.md).
package soak

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/egos/mycelium/test/internal/soak"
)

// Env names the variable that runs the soak for its duration (make soak
// sets it from SOAK, make test to 60s); without it TestSoak skips.
const Env = "MYCELIUM_SOAK"

// OutEnv names the variable of the output directory (default out/soak at
// the module root).
const OutEnv = "MYCELIUM_SOAK_OUT"

func TestSoak(t *testing.T) {
	v := os.Getenv(Env)
	if v == "" {
		t.Skipf("%s not set: make soak (SOAK=30m) or make test (60s) run it", Env)
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", Env, v, err)
	}
	cfg := soak.ConfigFor(d)
	cfg.Out = os.Getenv(OutEnv)
	if cfg.Out == "" {
		cfg.Out, _ = filepath.Abs("../../out/soak")
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Minute)
	defer cancel()
	res, err := soak.Run(ctx, t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range res.Verdicts {
		t.Logf("%s %s", v.Mark(), v.Text)
	}
	t.Logf("capacity %.0f/s, sent %.0f requests/s + %.0f events/s; report %s", res.CapacityMPS, res.RequestRate, res.EventRate, filepath.Join(cfg.Out, "report.html"))
	if !res.Pass {
		t.Errorf("the soak failed (verdicts above; worker logs in %s)", cfg.Out)
	}
}
