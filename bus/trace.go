package bus

import "go.opentelemetry.io/otel/propagation"

// tracePropagator: W3C trace context and baggage (one value: it holds no
// state).
var tracePropagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// TracePropagator is how trace context travels in envelope headers when a
// producer's or consumer's Config sets no Propagator: W3C traceparent,
// tracestate and baggage (docs/tracing.md). Both sides use this one, so
// they cannot drift apart.
func TracePropagator() propagation.TextMapPropagator { return tracePropagator }
