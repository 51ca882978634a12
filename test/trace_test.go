package test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

func spanAttr(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value, true
		}
	}
	return attribute.Value{}, false
}

func spanByName(t *testing.T, spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	names := []string{}
	for _, s := range spans {
		names = append(names, s.Name())
	}
	t.Fatalf("no span %q among %q", name, names)
	return nil
}

// TestTraceAcrossTheBus: one request makes one trace: the caller's span,
// "request t" (CLIENT), "send t" (PRODUCER) whose context the message
// carries, "process t" (CONSUMER) parented to it and linked to it, and the
// handler's ctx inside the process span; with the messaging attributes.
func TestTraceAcrossTheBus(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	handlerSpan := make(chan trace.SpanContext, 2)
	runConsumer(t, c, consumer.Config{Topic: "traced", Tracing: consumer.TracingConfig{Provider: tp, Parent: true}}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		handlerSpan <- trace.SpanContextFromContext(ctx)
		if string(m.Payload) == "fail" {
			return nil, &bus.RemoteError{Code: "model_error", Message: "no"}
		}
		return m.Payload, nil
	}))
	p := newProducer(t, c, producer.Config{TracerProvider: tp})
	ctx, root := tp.Tracer("test").Start(context.Background(), "caller")
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.Request(rctx, "traced", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	root.End()
	hs := <-handlerSpan
	waitFor(t, 5*time.Second, "the process span ended", func() bool { return len(rec.Ended()) >= 4 })
	spans := rec.Ended()
	req, send, proc := spanByName(t, spans, "request traced"), spanByName(t, spans, "send traced"), spanByName(t, spans, "process traced")
	tid := root.SpanContext().TraceID()
	for _, s := range []sdktrace.ReadOnlySpan{req, send, proc} {
		if s.SpanContext().TraceID() != tid {
			t.Fatalf("span %q in trace %s, want the caller's %s", s.Name(), s.SpanContext().TraceID(), tid)
		}
	}
	if req.SpanKind() != trace.SpanKindClient || send.SpanKind() != trace.SpanKindProducer || proc.SpanKind() != trace.SpanKindConsumer {
		t.Fatalf("kinds: request %v, send %v, process %v", req.SpanKind(), send.SpanKind(), proc.SpanKind())
	}
	if req.Parent().SpanID() != root.SpanContext().SpanID() || send.Parent().SpanID() != req.SpanContext().SpanID() || proc.Parent().SpanID() != send.SpanContext().SpanID() {
		t.Fatal("spans are not nested caller → request → send → process")
	}
	if len(proc.Links()) != 1 || proc.Links()[0].SpanContext.SpanID() != send.SpanContext().SpanID() {
		t.Fatalf("process span links = %+v, want the send span", proc.Links())
	}
	if hs.SpanID() != proc.SpanContext().SpanID() {
		t.Fatal("the handler's ctx does not carry the process span")
	}
	for span, want := range map[sdktrace.ReadOnlySpan]map[string]string{
		send: {"messaging.system": "mycelium", "messaging.operation.type": "send", "messaging.destination.name": "traced"},
		proc: {"messaging.system": "mycelium", "messaging.operation.type": "process", "messaging.destination.name": "traced", "messaging.consumer.group.name": "workers"},
	} {
		for k, v := range want {
			if got, ok := spanAttr(span, k); !ok || got.AsString() != v {
				t.Errorf("%s: %s = %q, want %q", span.Name(), k, got.AsString(), v)
			}
		}
	}
	sid, _ := spanAttr(send, "messaging.message.id")
	pid, _ := spanAttr(proc, "messaging.message.id")
	cid, _ := spanAttr(proc, "messaging.message.conversation_id")
	scid, _ := spanAttr(send, "messaging.message.conversation_id")
	if sid.AsString() == "" || sid.AsString() != pid.AsString() || cid.AsString() == "" || cid.AsString() != scid.AsString() {
		t.Fatalf("message id %q / %q, conversation id %q / %q: want them set and equal", sid.AsString(), pid.AsString(), scid.AsString(), cid.AsString())
	}

	// A handler error is recorded on the process and request spans.
	rec2 := len(rec.Ended())
	if _, err := p.Request(rctx, "traced", []byte("fail")); err == nil {
		t.Fatal("want the handler's error")
	}
	<-handlerSpan
	waitFor(t, 5*time.Second, "the failed request's spans", func() bool { return len(rec.Ended()) >= rec2+3 })
	for _, s := range rec.Ended()[rec2:] {
		if s.Name() == "send traced" {
			continue
		}
		if et, _ := spanAttr(s, "error.type"); s.Status().Code != codes.Error || et.AsString() != "model_error" {
			t.Errorf("%s: status %v, error.type %q; want Error and model_error", s.Name(), s.Status().Code, et.AsString())
		}
	}
}

// TestTraceTimeoutAndLinkOnly: a timeout is recorded on the request span;
// without TraceParent the process span starts its own trace, linked to the
// send span; a producer without a tracer still carries the caller's trace
// context to the handler.
func TestTraceTimeoutAndLinkOnly(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	got := make(chan trace.SpanContext, 4)
	runConsumer(t, c, consumer.Config{Topic: "slowtr", Tracing: consumer.TracingConfig{Provider: tp}}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		got <- trace.SpanContextFromContext(ctx)
		if string(m.Payload) == "slow" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return nil, nil
	}))
	p := newProducer(t, c, producer.Config{TracerProvider: tp})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := p.Request(ctx, "slowtr", []byte("slow")); !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("Request = %v, want a timeout", err)
	}
	<-got
	waitFor(t, 5*time.Second, "the spans", func() bool { return len(rec.Ended()) >= 3 })
	req := spanByName(t, rec.Ended(), "request slowtr")
	if et, _ := spanAttr(req, "error.type"); et.AsString() != "timeout" || req.Status().Code != codes.Error {
		t.Fatalf("request span: error.type %q, status %v", et.AsString(), req.Status().Code)
	}
	proc, send := spanByName(t, rec.Ended(), "process slowtr"), spanByName(t, rec.Ended(), "send slowtr")
	if proc.SpanContext().TraceID() == send.SpanContext().TraceID() || len(proc.Links()) != 1 || proc.Links()[0].SpanContext.SpanID() != send.SpanContext().SpanID() {
		t.Fatal("without TraceParent the process span should start its own trace, linked to the send span")
	}

	// A producer without a tracer: the caller's span context travels all
	// the same (W3C headers): the process span links to it.
	plain := newProducer(t, c, producer.Config{})
	cctx, span := tp.Tracer("test").Start(context.Background(), "caller")
	rctx, rcancel := context.WithTimeout(cctx, 10*time.Second)
	defer rcancel()
	if _, err := plain.Request(rctx, "slowtr", []byte("fast")); err != nil {
		t.Fatal(err)
	}
	span.End()
	sc := <-got
	waitFor(t, 5*time.Second, "the process span", func() bool {
		for _, s := range rec.Ended() {
			if s.SpanContext().SpanID() == sc.SpanID() {
				return true
			}
		}
		return false
	})
	for _, s := range rec.Ended() {
		if s.SpanContext().SpanID() == sc.SpanID() {
			if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != span.SpanContext().SpanID() {
				t.Fatalf("process span links %+v, want the caller's span %s", s.Links(), span.SpanContext().SpanID())
			}
		}
	}
}

// TestTraceCacheTier: a cached request's CLIENT span names the tier that
// answered it: the handler the first time, this process's memory the next.
func TestTraceCacheTier(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	runConsumer(t, c, consumer.Config{Topic: "tcache"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		return m.Payload, nil
	}))
	p := newProducer(t, c, producer.Config{TracerProvider: tp, Cache: map[string]producer.CacheConfig{"tcache": {TTL: time.Minute}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var sources []string
	for range 2 {
		if _, err := p.Request(ctx, "tcache", []byte("same prompt")); err != nil {
			t.Fatal(err)
		}
		var last sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			if s.Name() == "request tcache" {
				last = s
			}
		}
		if last == nil {
			t.Fatal("no request span")
		}
		v, _ := spanAttr(last, "mycelium.cache.source")
		sources = append(sources, v.AsString())
	}
	if sources[0] != "handler" || sources[1] != "local" {
		t.Fatalf("mycelium.cache.source of two identical requests = %q, want handler then local", sources)
	}
}

// TestTraceRequestBatchAndStream: RequestBatch and Stream get the spans a
// Request gets (issue 25, point 2: they had none), as every request verb
// goes through one write path: per request a "request t" CLIENT span
// holding a "send t" PRODUCER span whose context the message carries, the
// process span its child; the batch's requests each their own pair, the
// stream's CLIENT span ending with the stream and counting its chunks.
func TestTraceRequestBatchAndStream(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	runConsumer(t, c, consumer.Config{Topic: "tverbs", Tracing: consumer.TracingConfig{Provider: tp, Parent: true}},
		consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
			if string(m.Payload) == "stream" {
				for _, chunk := range []string{"a", "b"} {
					if err := m.Send(ctx, []byte(chunk)); err != nil {
						return nil, err
					}
				}
			}
			return m.Payload, nil
		}))
	p := newProducer(t, c, producer.Config{TracerProvider: tp})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// spansOf returns the spans of the trace of root, ended by now, by name.
	spansOf := func(root trace.Span) map[string][]tracetest.SpanStub {
		out := map[string][]tracetest.SpanStub{}
		for _, s := range exp.GetSpans() {
			if s.SpanContext.TraceID() == root.SpanContext().TraceID() {
				out[s.Name] = append(out[s.Name], s)
			}
		}
		return out
	}
	// checkRequest checks one request's spans: the CLIENT span a child of
	// parent, its PRODUCER span its child, the process span the send's.
	checkRequest := func(what string, req, send tracetest.SpanStub, procs []tracetest.SpanStub, parent trace.SpanContext) {
		t.Helper()
		if req.SpanKind != trace.SpanKindClient || send.SpanKind != trace.SpanKindProducer {
			t.Errorf("%s: kinds request %v, send %v; want CLIENT and PRODUCER", what, req.SpanKind, send.SpanKind)
		}
		if req.Parent.SpanID() != parent.SpanID() || send.Parent.SpanID() != req.SpanContext.SpanID() {
			t.Errorf("%s: spans are not nested caller → request → send", what)
		}
		id := stubAttr(send, "messaging.message.id")
		if id == "" || stubAttr(req, "messaging.message.id") != id || stubAttr(send, "messaging.message.conversation_id") == "" {
			t.Errorf("%s: send span message id %q, request span %q, conversation id %q: want them set and equal",
				what, id, stubAttr(req, "messaging.message.id"), stubAttr(send, "messaging.message.conversation_id"))
		}
		for _, proc := range procs {
			if proc.Parent.SpanID() == send.SpanContext.SpanID() {
				if stubAttr(proc, "messaging.message.id") != id {
					t.Errorf("%s: process span of message %q, want %q", what, stubAttr(proc, "messaging.message.id"), id)
				}
				return
			}
		}
		t.Errorf("%s: no process span is the child of its send span", what)
	}

	bctx, batch := tp.Tracer("test").Start(ctx, "caller")
	out, err := p.RequestBatch(bctx, "tverbs", [][]byte{[]byte("x"), []byte("y"), []byte("z")})
	batch.End()
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range out {
		if r.Err != nil {
			t.Fatalf("reply %d: %v", i, r.Err)
		}
	}
	waitFor(t, 5*time.Second, "the batch's process spans", func() bool { return len(spansOf(batch)["process tverbs"]) == 3 })
	bs := spansOf(batch)
	reqs, sends := bs["request tverbs"], bs["send tverbs"]
	if len(reqs) != 3 || len(sends) != 3 {
		t.Fatalf("a RequestBatch of 3 made %d request and %d send spans, want 3 of each", len(reqs), len(sends))
	}
	for _, req := range reqs {
		for _, send := range sends {
			if send.Parent.SpanID() == req.SpanContext.SpanID() {
				checkRequest("RequestBatch", req, send, bs["process tverbs"], batch.SpanContext())
			}
		}
	}

	sctx, caller := tp.Tracer("test").Start(ctx, "caller")
	s, err := p.Stream(sctx, "tverbs", []byte("stream"))
	if err != nil {
		t.Fatal(err)
	}
	if ss := spansOf(caller); len(ss["send tverbs"]) != 1 || len(ss["request tverbs"]) != 0 {
		t.Fatalf("once Stream returned: %d send and %d request spans ended, want the send span only", len(ss["send tverbs"]), len(ss["request tverbs"]))
	}
	var chunks []string
	for chunk, err := range s.All() {
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, string(chunk))
	}
	caller.End()
	if strings.Join(chunks, ",") != "a,b,stream" {
		t.Fatalf("chunks %q, want a, b, stream", chunks)
	}
	waitFor(t, 5*time.Second, "the stream's process span", func() bool { return len(spansOf(caller)["process tverbs"]) == 1 })
	ss := spansOf(caller)
	if len(ss["request tverbs"]) != 1 || len(ss["send tverbs"]) != 1 {
		t.Fatalf("a Stream made %d request and %d send spans, want one of each", len(ss["request tverbs"]), len(ss["send tverbs"]))
	}
	req := ss["request tverbs"][0]
	checkRequest("Stream", req, ss["send tverbs"][0], ss["process tverbs"], caller.SpanContext())
	for _, a := range req.Attributes {
		if a.Key == "mycelium.stream.chunks" && a.Value.AsInt64() != 3 {
			t.Errorf("mycelium.stream.chunks = %d, want 3", a.Value.AsInt64())
		}
	}
	if stubAttr(req, "mycelium.handler_us") == "" {
		t.Error("the stream's request span lacks mycelium.handler_us")
	}
}

// stubAttr returns attribute key of s as a string ("" when missing).
func stubAttr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.String()
		}
	}
	return ""
}
