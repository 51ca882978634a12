package producer

import (
	"context"
	"testing"
	"time"
)

// BenchmarkTracingOff is what tracing costs a request when no tracer is
// set and the caller's ctx carries no span: one context lookup.
func BenchmarkTracingOff(b *testing.B) {
	tr := newTracing(&Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctx = context.WithValue(ctx, ctxKey{}, 1) // a ctx a few values deep, as a service's

	b.ReportAllocs()
	for b.Loop() {
		if h := tr.inject(ctx, nil); h != nil {
			b.Fatal("headers made without a span")
		}
	}
}

type ctxKey struct{}
