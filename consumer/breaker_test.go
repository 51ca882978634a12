package consumer_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
)

func TestBreakerMiddlewareHoldsWhileOpen(t *testing.T) {
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
	for range 2 {
		if _, err := h.Handle(ctx, &consumer.Message{}); err == nil {
			t.Fatal("failing downstream returned no error")
		}
	}
	if b.State() != breaker.Open {
		t.Fatalf("breaker %v after 2 failures, want open", b.State())
	}
	// While open the call waits instead of failing; it runs once the
	// breaker half-opens and the downstream is back.
	healthy.Store(true)
	before := calls.Load()
	out, err := h.Handle(ctx, &consumer.Message{})
	if err != nil || string(out) != "ok" || calls.Load() != before+1 {
		t.Fatalf("held call = %q, %v (downstream calls %d -> %d)", out, err, before, calls.Load())
	}
	if b.State() != breaker.Closed {
		t.Fatalf("breaker %v after a good probe, want closed", b.State())
	}

	// A deadline that ends while the breaker is open gives a coded remote error.
	b.Trip()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	_, err = h.Handle(dctx, &consumer.Message{})
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != consumer.CodeBreakerOpen {
		t.Fatalf("deadline while open = %v, want RemoteError %s", err, consumer.CodeBreakerOpen)
	}
	// Cancellation (shutdown) returns the ctx error: the entry stays pending.
	b.Trip()
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := h.Handle(cctx, &consumer.Message{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled while open = %v, want Canceled", err)
	}
}
