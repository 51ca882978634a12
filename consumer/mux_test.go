package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestRouterServesTopics: one Router, two topics with their own handlers
// and a third on the default; one Run, one Serving; each topic's Stats.
func TestRouterServesTopics(t *testing.T) {
	_, c := redistest.Mini(t)
	r, err := consumer.NewRouter(c, consumer.RouterConfig{Concurrency: 4,
		Default: consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
			return append([]byte("default:"), m.Payload...), nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"a", "b"} {
		h := consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
			return append([]byte(topic+":"), m.Payload...), nil
		})
		if _, err := r.Handle(topic, h, consumer.Config{Concurrency: 2}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Handle("c", nil, consumer.Config{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Serving()
	if err := r.Ready(context.Background()); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	p, err := producer.New(c, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	for _, topic := range []string{"a", "b", "c"} {
		for i := range 3 {
			want := fmt.Sprintf("%s:%d", topic, i)
			if topic == "c" {
				want = fmt.Sprintf("default:%d", i)
			}
			got, err := p.Request(rctx, topic, fmt.Appendf(nil, "%d", i))
			if err != nil || string(got) != want {
				t.Fatalf("Request(%s) = %q, %v; want %q", topic, got, err, want)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	stats := r.Stats()
	for _, topic := range []string{"a", "b", "c"} {
		if s := stats[topic]; s.Handled != 3 || s.Acked != 3 {
			t.Errorf("Stats[%s] = handled %d, acked %d; want 3", topic, s.Handled, s.Acked)
		}
	}
	if err := r.Run(context.Background()); !errors.Is(err, bus.ErrRunning) {
		t.Fatalf("a second Run = %v, want bus.ErrRunning", err)
	}
	if _, err := r.Handle("late", nil, consumer.Config{}); !errors.Is(err, bus.ErrRunning) {
		t.Fatalf("Handle after Run = %v, want bus.ErrRunning", err)
	}
}

// TestRouterSharesSlotsFairly: two handler slots shared by three topics
// (each capped at two). With both slots held by topic a's backlog, and
// two entries each of b and then c waiting for a slot, the slots a frees
// go to b and to c in turn, not both to b, which waited longer (first
// come, first served would); and never more than two handlers run.
func TestRouterSharesSlotsFairly(t *testing.T) {
	_, c := redistest.Mini(t)
	r, err := consumer.NewRouter(c, consumer.RouterConfig{Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan string, 32)
	gates := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{}), "c": make(chan struct{})}
	var running, most atomic.Int64
	for _, topic := range []string{"a", "b", "c"} {
		gate := gates[topic]
		h := consumer.HandlerFunc(func(ctx context.Context, _ *consumer.Message) ([]byte, error) {
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			defer running.Add(-1)
			started <- topic
			select {
			case <-gate:
			case <-ctx.Done():
			}
			return nil, nil
		})
		if _, err := r.Handle(topic, h, consumer.Config{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		for _, g := range gates {
			close(g)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	<-r.Serving()
	p, err := producer.New(c, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	publish := func(topic string, n int) {
		t.Helper()
		for i := range n {
			if _, err := p.Publish(context.Background(), topic, fmt.Appendf(nil, "%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("waited 20s for %s", what)
			}
			time.Sleep(time.Millisecond) // polling the router's state
		}
	}
	next := func() string {
		t.Helper()
		select {
		case s := <-started:
			return s
		case <-time.After(20 * time.Second):
			t.Fatal("no handler started within 20s")
			return ""
		}
	}
	publish("a", 10)
	if a1, a2 := next(), next(); a1 != "a" || a2 != "a" {
		t.Fatalf("first handlers: %s, %s; want a, a", a1, a2)
	}
	publish("b", 2)
	waitFor("b's two entries to wait for a slot", func() bool { return consumer.ShareWaiting(r) == 2 })
	publish("c", 2)
	waitFor("c's two entries to wait for a slot", func() bool { return consumer.ShareWaiting(r) == 4 })
	gates["a"] <- struct{}{}
	first := next()
	gates["a"] <- struct{}{}
	second := next()
	if first != "b" || second != "c" {
		t.Fatalf("the slots a freed went to %s then %s; want b then c (the topics in turn)", first, second)
	}
	if m := most.Load(); m > 2 {
		t.Fatalf("%d handlers ran at once; the router shares 2 slots", m)
	}
}

// TestRouterRefuses: what a Router refuses, each with a clear error.
func TestRouterRefuses(t *testing.T) {
	_, c := redistest.Mini(t)
	echo := consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) { return m.Payload, nil })
	if _, err := consumer.NewRouter(c, consumer.RouterConfig{Concurrency: -1}); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Errorf("negative Concurrency: %v", err)
	}
	r, err := consumer.NewRouter(c, consumer.RouterConfig{Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background()); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Errorf("Run without a topic: %v", err)
	}
	for name, add := range map[string]func() error{
		"no handler, no default": func() error { _, err := r.Handle("x", nil, consumer.Config{}); return err },
		"cap above the router's": func() error { _, err := r.Handle("x", echo, consumer.Config{Concurrency: 5}); return err },
		"another Config.Topic":   func() error { _, err := r.Handle("x", echo, consumer.Config{Topic: "y"}); return err },
		"invalid topic":          func() error { _, err := r.Handle("r.x", echo, consumer.Config{}); return err },
		"added twice": func() error {
			if _, err := r.Handle("twice", echo, consumer.Config{}); err != nil {
				return nil
			}
			_, err := r.Handle("twice", echo, consumer.Config{})
			return err
		},
	} {
		if err := add(); !errors.Is(err, bus.ErrInvalidConfig) {
			t.Errorf("%s: Handle = %v, want bus.ErrInvalidConfig", name, err)
		}
	}
}

// TestRouterSkipsRequestsWhoseCallerLeftWhileWaiting: a request that
// waited for a shared slot past its caller's deadline is acknowledged
// unhandled (counted expired), not run: the slot goes to live work.
func TestRouterSkipsRequestsWhoseCallerLeftWhileWaiting(t *testing.T) {
	_, c := redistest.Mini(t)
	r, err := consumer.NewRouter(c, consumer.RouterConfig{Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	gate, busy := make(chan struct{}), make(chan struct{}, 1)
	var lateCalls atomic.Int64
	if _, err := r.Handle("busy", consumer.HandlerFunc(func(ctx context.Context, _ *consumer.Message) ([]byte, error) {
		busy <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return nil, nil
	}), consumer.Config{}); err != nil {
		t.Fatal(err)
	}
	late, err := r.Handle("late", consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		lateCalls.Add(1)
		return []byte("ran"), nil
	}), consumer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	<-r.Serving()
	p, err := producer.New(c, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if _, err := p.Publish(context.Background(), "busy", []byte("x")); err != nil {
		t.Fatal(err)
	}
	<-busy // the one slot is taken
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	answered := make(chan error, 1)
	go func() {
		_, err := p.Request(rctx, "late", []byte("q"))
		answered <- err
	}()
	deadline := time.Now().Add(20 * time.Second)
	for consumer.ShareWaiting(r) != 1 { // the request read, waiting for the slot
		if time.Now().After(deadline) {
			t.Fatal("the late request never waited for the slot")
		}
		time.Sleep(time.Millisecond) // polling the router's queue
	}
	if err := <-answered; !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("Request while the only slot is busy = %v, want bus.ErrTimeout", err)
	}
	close(gate)
	for late.Stats().Acked != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the late request was not acknowledged: %+v", late.Stats())
		}
		time.Sleep(time.Millisecond) // polling a counter
	}
	if n, s := lateCalls.Load(), late.Stats(); n != 0 || s.Expired != 1 || s.Handled != 0 {
		t.Fatalf("handler ran %d times, stats %+v; want 0 runs, 1 expired", n, s)
	}
}
