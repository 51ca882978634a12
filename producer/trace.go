package producer

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
)

// Tracing (docs/tracing.md): spans follow the OpenTelemetry messaging
// conventions; trace context travels as W3C headers in the envelope.

// instrumentation names the tracer.
const instrumentation = "github.com/egos/mycelium/producer"

type tracing struct {
	tr   trace.Tracer // nil: no spans
	prop propagation.TextMapPropagator
}

func newTracing(cfg *Config) tracing {
	t := tracing{prop: cfg.Propagator}
	if t.prop == nil {
		t.prop = bus.TracePropagator()
	}
	if cfg.TracerProvider != nil {
		t.tr = cfg.TracerProvider.Tracer(instrumentation)
	}
	return t
}

// inject returns headers with ctx's trace context added, as a copy (the
// caller's map is not modified), when ctx carries a valid span; else
// headers unchanged. One context lookup when it does not.
func (t *tracing) inject(ctx context.Context, headers map[string]string) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return headers
	}
	h := make(map[string]string, len(headers)+3)
	maps.Copy(h, headers)
	t.prop.Inject(ctx, propagation.MapCarrier(h))
	return h
}

// msgAttrs are a span's messaging attributes for op on topic (partition
// part; 0 for a topic of one partition).
func msgAttrs(op, topic string, part int) []attribute.KeyValue {
	a := []attribute.KeyValue{
		attribute.String("messaging.system", "mycelium"),
		attribute.String("messaging.operation.name", op),
		attribute.String("messaging.operation.type", op),
		attribute.String("messaging.destination.name", topic),
	}
	if part > 0 {
		a = append(a, attribute.String("messaging.destination.partition.id", strconv.Itoa(part)))
	}
	return a
}

// startSend starts a "send {topic}" PRODUCER span for a write to pt.
func (t *tracing) startSend(ctx context.Context, pt *topic, extra ...attribute.KeyValue) (context.Context, trace.Span) {
	root := pt.root().name
	return t.tr.Start(ctx, "send "+root, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append(msgAttrs("send", root, pt.index()), extra...)...))
}

// startRequest starts a "request {topic}" CLIENT span around a request
// and its reply.
func (t *tracing) startRequest(ctx context.Context, topic string) (context.Context, trace.Span) {
	return t.tr.Start(ctx, "request "+topic, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("messaging.system", "mycelium"), attribute.String("messaging.destination.name", topic)))
}

// endSend ends rq's send span, once: at its write's end when that is
// known (its start plus encode and write), with the partition, the entry
// written and the correlation id; with err when the write itself failed
// or never happened.
func (t *tracing) endSend(rq *request, ids *ids, err error) {
	sp := rq.spans
	if sp == nil || sp.send == nil {
		return
	}
	send, tm := sp.send, &rq.tm
	sp.send = nil
	if rq.pt != nil && rq.pt.index() > 0 {
		send.SetAttributes(attribute.String("messaging.destination.partition.id", strconv.Itoa(rq.pt.index())))
	}
	if tm.entry != "" {
		send.SetAttributes(attribute.String("messaging.message.id", tm.entry))
	}
	if tm.seq != 0 {
		if sp.cid == "" {
			sp.cid = ids.id(tm.seq)
		}
		send.SetAttributes(attribute.String("messaging.message.conversation_id", sp.cid))
	}
	var sendErr error
	if err != nil && tm.write == 0 && !tm.replied {
		sendErr = err // the write itself failed, or never happened
	}
	endSpan(send, sendErr, sendEnd(sp.sendStart, tm.encode+tm.write))
}

// end ends rq's spans: its send span (endSend), then its request span
// with what the request learned: the entry and correlation id, the
// worker's queue wait and handler time, the cache tier that answered, a
// stream's chunks.
func (t *tracing) end(rq *request, ids *ids, err error) {
	t.endSend(rq, ids, err)
	client, tm := rq.spans.client, &rq.tm
	if rq.src != SourceNone {
		client.SetAttributes(attribute.String("mycelium.cache.source", rq.src.String()))
		if rq.age > 0 {
			client.SetAttributes(attribute.Int64("mycelium.cache.age_ms", rq.age.Milliseconds()))
		}
	}
	if tm.entry != "" {
		client.SetAttributes(attribute.String("messaging.message.id", tm.entry))
	}
	if cid := rq.spans.cid; cid != "" {
		client.SetAttributes(attribute.String("messaging.message.conversation_id", cid))
	}
	if tm.replied {
		client.SetAttributes(attribute.Int64(waitAttr(tm.retried), tm.queue.Microseconds()),
			attribute.Int64("mycelium.handler_us", tm.handler.Microseconds()))
	}
	if rq.via == viaStream {
		client.SetAttributes(attribute.Int64("mycelium.stream.chunks", int64(tm.chunks)))
	}
	endSpan(client, err)
}

// endSpan ends span with err recorded (error.type and the status).
func endSpan(span trace.Span, err error, opts ...trace.SpanEndOption) {
	if err != nil {
		span.SetAttributes(attribute.String("error.type", errorType(err)))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End(opts...)
}

// errorType names err for error.type: the bus's sentinel it wraps, the
// remote error's code, else "_OTHER".
func errorType(err error) string {
	var re *bus.RemoteError
	switch {
	case errors.As(err, &re):
		return string(re.Code)
	case errors.Is(err, bus.ErrTimeout):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, bus.ErrNoResponders):
		return "no_responders"
	case errors.Is(err, bus.ErrBreakerOpen):
		return "breaker_open"
	case errors.Is(err, bus.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, bus.ErrPayloadTooLarge):
		return "payload_too_large"
	case errors.Is(err, bus.ErrClosed):
		return "closed"
	}
	return "_OTHER"
}

// sendEnd is when a request's send span ends: its start plus the write's
// time, once known.
func sendEnd(start time.Time, write time.Duration) trace.SpanEndOption {
	if write <= 0 {
		return trace.WithTimestamp(time.Now())
	}
	return trace.WithTimestamp(start.Add(write))
}
