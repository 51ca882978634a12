package consumer_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
)

func TestBreakerMiddleware(t *testing.T) {
	b, err := breaker.New(breaker.Config{MinCalls: 2, OpenTimeout: 50 * time.Millisecond, HalfOpenProbes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var healthy atomic.Bool
	var calls atomic.Int64
	h := consumer.Chain(consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		calls.Add(1)
		if !healthy.Load() {
			return nil, errors.New("downstream 503")
		}
		return []byte("ok"), nil
	}), consumer.BreakerMiddleware(b))
	ctx := context.Background()
	event, request := &consumer.Message{}, &consumer.Message{Request: true}
	for range 2 {
		if _, err := h.Handle(ctx, event); err == nil {
			t.Fatal("failing downstream returned no error")
		}
	}
	if b.State() != breaker.Open {
		t.Fatalf("breaker %v after 2 failures, want open", b.State())
	}

	// While open, a request is refused at once with a coded remote error
	// that says when the breaker probes again; the downstream is not called.
	// (Open for an hour: a request held until the breaker admits it would
	// not come back within the test.)
	long, err := breaker.New(breaker.Config{OpenTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	long.Trip()
	before := calls.Load()
	start := time.Now()
	_, err = consumer.BreakerMiddleware(long)(h).Handle(ctx, request)
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != bus.CodeBreakerOpen || !strings.Contains(re.Message, "probes again in about 1h0m0s") ||
		time.Since(start) > time.Minute || calls.Load() != before {
		t.Fatalf("request while open = %v after %v (downstream calls %d -> %d); want %s at once", err, time.Since(start), before, calls.Load(), bus.CodeBreakerOpen)
	}

	// An event waits instead of failing; it runs once the breaker
	// half-opens and the downstream is back.
	healthy.Store(true)
	out, err := h.Handle(ctx, event)
	if err != nil || string(out) != "ok" || calls.Load() != before+1 {
		t.Fatalf("held event = %q, %v (downstream calls %d -> %d)", out, err, before, calls.Load())
	}
	if b.State() != breaker.Closed {
		t.Fatalf("breaker %v after a good probe, want closed", b.State())
	}
	if out, err := h.Handle(ctx, request); err != nil || string(out) != "ok" {
		t.Fatalf("request with the breaker closed = %q, %v", out, err)
	}

	// Cancellation (shutdown) of a held event returns the ctx error: the
	// entry stays pending.
	b.Trip()
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := h.Handle(cctx, event); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled while open = %v, want Canceled", err)
	}
}

// TestBreakerIgnoresCallerFaults: thirty bad requests (the downstream
// answered 400) do not open the breaker for the next caller's good one
// (security issue, point 10).
func TestBreakerIgnoresCallerFaults(t *testing.T) {
	b, err := breaker.New(breaker.Config{MinCalls: 2, OpenTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h := consumer.Chain(consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		if string(m.Payload) == "bad" {
			return nil, consumer.CallerFault(&bus.RemoteError{Code: "http_400", Message: "400 Bad Request"})
		}
		return []byte("ok"), nil
	}), consumer.BreakerMiddleware(b))
	ctx := context.Background()
	for range 30 {
		_, err := h.Handle(ctx, &consumer.Message{Request: true, Payload: []byte("bad")})
		var re *bus.RemoteError
		if !errors.As(err, &re) || re.Code != "http_400" {
			t.Fatalf("bad request = %v, want its http_400", err)
		}
	}
	if out, err := h.Handle(ctx, &consumer.Message{Request: true, Payload: []byte("good")}); err != nil || string(out) != "ok" || b.State() != breaker.Closed {
		t.Fatalf("good request after 30 bad ones = %q, %v (breaker %v)", out, err, b.State())
	}
}
