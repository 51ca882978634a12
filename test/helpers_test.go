package test

import (
	"context"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// runConsumer starts a consumer and stops it (waiting for Run) at cleanup.
func runConsumer(t testing.TB, c *bus.Client, cfg consumer.Config, h consumer.Handler) *consumer.Consumer {
	t.Helper()
	return runConsumerWithin(t, 5*time.Second, c, cfg, h)
}

// runConsumerWithin is runConsumer, waiting up to ready for the consumer
// to be ready.
func runConsumerWithin(t testing.TB, ready time.Duration, c *bus.Client, cfg consumer.Config, h consumer.Handler) *consumer.Consumer {
	t.Helper()
	c = redistest.RoleClient(t, c, "worker") // the worker's ACL user in secure mode
	co, err := consumer.New(c, cfg, h)
	if err != nil {
		t.Fatalf("consumer.New(%+v) = %v", cfg, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("consumer Run = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("consumer Run did not return within 30s of cancel")
		}
	})
	waitFor(t, ready, "consumer group ready", func() bool { return co.Ready(context.Background()) == nil })
	return co
}

func newProducer(t testing.TB, c *bus.Client, cfg producer.Config) *producer.Producer {
	t.Helper()
	return redistest.NewProducer(t, redistest.RoleClient(t, c, "producer"), cfg) // the producer's ACL user in secure mode
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, within, what, cond)
}

var echo = consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) { return m.Payload, nil })
