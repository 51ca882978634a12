package consumer

import (
	"context"
	"errors"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
)

// Tracing (docs/tracing.md): a "process {topic}" CONSUMER span around
// each handler call, linked to the creation context the message carries
// (W3C headers), and its child with Config.Tracing.Parent.

const instrumentation = "github.com/egos/mycelium/consumer"

type tracing struct {
	tr     trace.Tracer // nil: no spans
	prop   propagation.TextMapPropagator
	parent bool
}

func newTracing(cfg *Config) tracing {
	t := tracing{prop: cfg.Tracing.Propagator, parent: cfg.Tracing.Parent}
	if t.prop == nil {
		t.prop = bus.TracePropagator()
	}
	if cfg.Tracing.Provider != nil {
		t.tr = cfg.Tracing.Provider.Tracer(instrumentation)
	}
	return t
}

// traced reports whether a message needs tracing work: spans are
// recorded, or it carries trace context for the handler's ctx. A map
// lookup when neither.
func (t *tracing) traced(h map[string]string) bool {
	if t.tr != nil {
		return true
	}
	if h == nil {
		return false
	}
	_, ok := h["traceparent"]
	return ok
}

// start returns the values of the handler's ctx (base with the message's
// trace context, or its process span) and the span (nil without a
// tracer).
func (t *tracing) start(base context.Context, cfg *Config, m *Message, env *codec.Envelope) (context.Context, trace.Span) {
	rctx := base
	if m.Headers != nil {
		rctx = t.prop.Extract(base, propagation.MapCarrier(m.Headers))
	}
	if t.tr == nil {
		return rctx, nil
	}
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "mycelium"),
		attribute.String("messaging.operation.name", "process"),
		attribute.String("messaging.operation.type", "process"),
		attribute.String("messaging.destination.name", cfg.Topic),
		attribute.String("messaging.consumer.group.name", cfg.Group),
		attribute.String("messaging.message.id", m.ID),
		attribute.Int("mycelium.attempt", m.Attempt),
	}
	if m.Partition > 0 {
		attrs = append(attrs, attribute.String("messaging.destination.partition.id", strconv.Itoa(m.Partition)))
	}
	if env.ID != "" {
		attrs = append(attrs, attribute.String("messaging.message.conversation_id", env.ID))
	}
	if m.Attempt > 1 {
		attrs = append(attrs, attribute.Bool("mycelium.redelivered", true))
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)}
	sc := trace.SpanContextFromContext(rctx)
	if sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		if !t.parent {
			opts = append(opts, trace.WithNewRoot())
		}
	}
	return t.tr.Start(rctx, "process "+cfg.Topic, opts...)
}

// expired records a request skipped because its caller's deadline had
// passed: a process span with the "expired" event (tracer set only).
func (t *tracing) expired(cfg *Config, id string, env *codec.Envelope) {
	if t.tr == nil {
		return
	}
	m := Message{ID: id, Headers: env.Headers, Attempt: 1}
	_, span := t.start(context.Background(), cfg, &m, env)
	span.AddEvent("expired", trace.WithAttributes(attribute.Int64("mycelium.late_us", time.Since(time.Unix(0, env.Deadline)).Microseconds())))
	span.End()
}

// end finishes a process span: the queue wait, what became of the entry,
// the handler's error.
func endProcess(span trace.Span, queued time.Duration, err error, outcome string) {
	span.SetAttributes(attribute.Int64("mycelium.queue_wait_us", queued.Microseconds()))
	if outcome != "" {
		span.AddEvent(outcome)
	}
	if err != nil {
		span.SetAttributes(attribute.String("error.type", errorType(err)))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func errorType(err error) string {
	var re *bus.RemoteError
	switch {
	case errors.As(err, &re):
		return string(re.Code)
	case errors.Is(err, bus.ErrCancelled):
		return "cancelled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return string(bus.CodeHandler)
}

// valuesCtx is a handler's ctx without a deadline of its own: cancelled
// with parent, its values from values (the message's trace context).
type valuesCtx struct {
	context.Context
	values context.Context
}

func (c valuesCtx) Value(key any) any { return c.values.Value(key) }
