package watermill_test

import (
	"context"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"

	mwm "github.com/egos/mycelium/contrib/watermill"
)

// TestTraceContextCarried: a message published with a span in its context
// reaches the subscriber with a context of the same trace (the producer's
// and the consumer's tracing on); its metadata and UUID arrive as sent.
func TestTraceContextCarried(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	pub, err := mwm.NewPublisher(connect(t), mwm.PublisherConfig{Producer: producer.Config{TracerProvider: tp}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub, err := mwm.NewSubscriber(connect(t), mwm.SubscriberConfig{Config: consumer.Config{Tracing: consumer.TracingConfig{Provider: tp, Parent: true}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, span := tp.Tracer("test").Start(context.Background(), "send")
	msg := message.NewMessage(wm.NewUUID(), []byte("traced"))
	msg.Metadata.Set("k", "v")
	msg.SetContext(ctx)
	if err := pub.Publish("traced", msg); err != nil {
		t.Fatal(err)
	}
	span.End()
	msgs, err := sub.Subscribe(context.Background(), "traced")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-msgs:
		got.Ack()
		if got.UUID != msg.UUID || got.Metadata.Get("k") != "v" || string(got.Payload) != "traced" {
			t.Fatalf("got %s %v %q, want %s k=v", got.UUID, got.Metadata, got.Payload, msg.UUID)
		}
		if tid := trace.SpanContextFromContext(got.Context()).TraceID(); tid != span.SpanContext().TraceID() {
			t.Fatalf("the message's context is in trace %s, want the sender's %s", tid, span.SpanContext().TraceID())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no message")
	}
}
