package breaker

import (
	"context"
	"errors"
	"time"
)

// Do runs fn through b: it fails fast with ErrOpen when b refuses the call,
// otherwise runs fn and reports its outcome as Classify maps it (a
// cancellation is ignored; a deadline is a failure: the dependency was too
// slow). The duration is measured only when slow-call tripping is on. Do
// blocks as long as fn does.
func Do[T any](ctx context.Context, b *Breaker, fn func(context.Context) (T, error)) (T, error) {
	t, err := b.Allow()
	if err != nil {
		var zero T
		return zero, err
	}
	var start time.Time
	if b.cfg.SlowCall > 0 {
		start = time.Now()
	}
	v, err := fn(ctx)
	var d time.Duration
	if b.cfg.SlowCall > 0 {
		d = time.Since(start)
	}
	b.Done(t, Classify(err), d)
	return v, err
}

// Classify maps an error to an outcome the way Do does: nil is a success,
// context.Canceled is ignored, anything else (including a deadline) is a
// failure.
func Classify(err error) Outcome {
	switch {
	case err == nil:
		return Success
	case errors.Is(err, context.Canceled):
		return Ignored
	}
	return Failure
}
