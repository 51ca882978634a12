// Package simwork simulates a slow handler: a wait of a duration plus or
// minus a uniform jitter, as a reasoning service would take. It earns its
// own package because two binaries use the same spec and the same wait:
// bus-worker's `--handler sleep:…` and bus-bench's `--handler sleep:…`.
package simwork

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Sleep is simulated work: D ± Jitter, uniform.
type Sleep struct {
	D, Jitter time.Duration
}

// Parse reads "<dur>[,<jitter>]" (what follows "sleep:" in a --handler
// flag): a non-negative duration and a jitter no larger than it.
func Parse(s string) (Sleep, error) {
	ds, js, hasJitter := strings.Cut(s, ",")
	d, err := time.ParseDuration(ds)
	if err != nil || d < 0 {
		return Sleep{}, fmt.Errorf("bad duration %q (want e.g. 2s or 1500ms)", ds)
	}
	w := Sleep{D: d}
	if hasJitter {
		if w.Jitter, err = time.ParseDuration(js); err != nil || w.Jitter < 0 || w.Jitter > d {
			return Sleep{}, fmt.Errorf("bad jitter %q (want a duration no larger than %v)", js, d)
		}
	}
	return w, nil
}

// Wait waits one draw of D ± Jitter, or until ctx is done (then it returns
// ctx's error).
func (w Sleep) Wait(ctx context.Context) error {
	d := w.D
	if w.Jitter > 0 {
		d += time.Duration(rand.Int64N(int64(2*w.Jitter)+1)) - w.Jitter
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
