package chaos

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestChaosPanickingHandler: a handler that panics on some inputs, run
// in-process (bus-worker's built-in handlers cannot panic) on a real
// redis-server. Requests get a "panic" remote error at once; events end in
// the dead-letter stream after MaxDeliveries; other traffic is served.
func TestChaosPanickingHandler(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	var panics atomic.Int64
	co, err := consumer.New(c, consumer.Config{Topic: "boom", Reclaim: consumer.ReclaimConfig{ClaimIdle: 200 * time.Millisecond}, Retry: consumer.RetryConfig{MaxDeliveries: 3}},
		consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
			if strings.HasPrefix(string(m.Payload), "boom") {
				panics.Add(1)
				panic("handler exploded on " + string(m.Payload))
			}
			return m.Payload, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-co.Serving()

	p := newProducer(t, c, producer.Config{NoBreaker: true})
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	_, err = p.Request(rctx, "boom", []byte("boom request"))
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != bus.CodePanic {
		t.Fatalf("Request to a panicking handler = %v, want remote error %q", err, bus.CodePanic)
	}
	if _, err := p.Publish(rctx, "boom", []byte("boom event")); err != nil {
		t.Fatal(err)
	}
	if got, err := p.Request(rctx, "boom", []byte("fine")); err != nil || string(got) != "fine" {
		t.Fatalf("Request after panics = %q, %v", got, err)
	}
	waitFor(t, 20*time.Second, "the panicking event in the dead-letter stream", func() bool { return co.Stats().DeadLettered == 1 })
	letters, err := inspect.New(c).DeadLetters(rctx, "boom", 0)
	if err != nil || len(letters) != 1 || letters[0].Reason != "max_deliveries" || !strings.Contains(letters[0].Error, "handler exploded") {
		t.Fatalf("dead letters = %+v, %v", letters, err)
	}
	t.Logf("panicking handler: %d panics recovered (1 request answered with code %q, 1 event dead-lettered after %d deliveries); other requests served",
		panics.Load(), bus.CodePanic, letters[0].Attempts)
}
