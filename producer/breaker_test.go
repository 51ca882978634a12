package producer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

func TestBreakerFailsFastAfterTimeouts(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{Breaker: breaker.Config{MinCalls: 2, OpenTimeout: time.Hour}})
	for range 2 { // nobody serves "dead": both time out
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		_, err := p.Request(ctx, "dead", []byte("x"))
		cancel()
		if !errors.Is(err, bus.ErrTimeout) {
			t.Fatalf("Request = %v, want ErrTimeout", err)
		}
	}
	if st, ok := p.BreakerState("dead"); !ok || st != breaker.Open {
		t.Fatalf("BreakerState = %v, %v; want open", st, ok)
	}
	before, _ := m.Stream("myc:{dead}")
	_, err := p.Request(context.Background(), "dead", []byte("x"))
	if !errors.Is(err, bus.ErrBreakerOpen) || !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("Request on an open breaker = %v, want ErrBreakerOpen", err)
	}
	if _, err := p.Publish(context.Background(), "dead", []byte("x")); !errors.Is(err, bus.ErrBreakerOpen) {
		t.Fatalf("Publish on an open breaker = %v, want ErrBreakerOpen", err)
	}
	if after, _ := m.Stream("myc:{dead}"); len(after) != len(before) {
		t.Fatalf("an open breaker still wrote to Redis (%d -> %d entries)", len(before), len(after))
	}
	if s := p.Stats(); s.BreakerRejected != 2 || s.Timeouts != 2 || s.WriteErrors != 0 {
		t.Fatalf("Stats = %+v, want 2 rejected by the breaker, 2 timeouts, no write errors", s)
	}
	// Another topic is unaffected.
	if _, err := p.Publish(context.Background(), "alive", []byte("x")); err != nil {
		t.Fatalf("Publish to another topic = %v", err)
	}
}

func TestBreakerIgnoresCancellationsAndRemoteErrors(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{Breaker: breaker.Config{MinCalls: 2, OpenTimeout: time.Hour}})
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(10*time.Millisecond, cancel)
		if _, err := p.Request(ctx, "t", []byte("x")); !errors.Is(err, context.Canceled) {
			t.Fatalf("Request = %v, want Canceled", err)
		}
	}
	stop := replier(t, m, c, "t", func(env *codec.Envelope) *codec.Envelope {
		return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, ErrCode: "nope", ErrMsg: "handler says no"}
	})
	defer stop()
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := p.Request(ctx, "t", []byte("x"))
		cancel()
		var re *bus.RemoteError
		if !errors.As(err, &re) {
			t.Fatalf("Request = %v, want a remote error", err)
		}
	}
	if st, _ := p.BreakerState("t"); st != breaker.Closed {
		t.Fatalf("cancellations and remote errors opened the breaker (%v)", st)
	}

	strict := newProducer(t, c, producer.Config{RemoteErrorsTrip: true, Breaker: breaker.Config{MinCalls: 2, OpenTimeout: time.Hour}})
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = strict.Request(ctx, "t", []byte("x"))
		cancel()
	}
	if st, _ := strict.BreakerState("t"); st != breaker.Open {
		t.Fatalf("RemoteErrorsTrip: breaker %v, want open", st)
	}
}

func TestNoBreaker(t *testing.T) {
	_, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{NoBreaker: true})
	for range 25 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err := p.Request(ctx, "dead", []byte("x"))
		cancel()
		if errors.Is(err, bus.ErrBreakerOpen) {
			t.Fatal("NoBreaker producer returned ErrBreakerOpen")
		}
	}
	if _, ok := p.BreakerState("dead"); ok {
		t.Fatal("NoBreaker producer reports a breaker")
	}
}
