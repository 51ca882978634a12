package main

import (
	"testing"
	"time"

	"github.com/egos/mycelium/inspect"
)

func TestDescribeLimits(t *testing.T) {
	soon := time.Now().Add(time.Minute)
	for _, tt := range []struct {
		l    inspect.Limits
		want string
	}{
		{inspect.Limits{}, "no limits"},
		{inspect.Limits{Rate: 600, RateInterval: time.Minute, Burst: 20, Concurrency: 8}, "rate 600/m (burst 20), concurrency 8"},
		{inspect.Limits{Tokens: 90000, TokensInterval: time.Minute}, "tokens 90000/m"},
		{inspect.Limits{PausedUntil: soon}, "no limits, paused until " + soon.UTC().Format(time.RFC3339Nano)},
		{inspect.Limits{PausedUntil: time.Now().Add(-time.Minute)}, "no limits"}, // a pause that ended
	} {
		v := limitsJSON("t", tt.l)
		if got := describeLimits(&v); got != tt.want {
			t.Errorf("describeLimits(%+v) = %q, want %q", tt.l, got, tt.want)
		}
	}
}
