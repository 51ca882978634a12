package test

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

func TestHundredThousandEventsEachHandledOnce(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	const total = 100_000
	seen := make([]atomic.Int32, total)
	var handled atomic.Int64
	runConsumer(t, c, consumer.Config{Topic: "events", Concurrency: 128}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		seen[binary.BigEndian.Uint32(m.Payload)].Add(1)
		handled.Add(1)
		return nil, nil
	}))
	p := newProducer(t, c, producer.Config{StreamMaxLen: -1})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	const writers, batch = 8, 250
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := w * batch; start < total; start += writers * batch {
				payloads := make([][]byte, batch)
				for i := range payloads {
					payloads[i] = binary.BigEndian.AppendUint32(make([]byte, 0, 64), uint32(start+i))
				}
				if _, err := p.PublishBatch(ctx, "events", payloads); err != nil {
					t.Errorf("PublishBatch(%d) = %v", start, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d events handled", total), func() bool { return handled.Load() >= total })
	for i := range seen {
		if n := seen[i].Load(); n != 1 {
			t.Fatalf("event %d handled %d times, want exactly once", i, n)
		}
	}
	if got := handled.Load(); got != total {
		t.Fatalf("handled %d events, want %d", got, total)
	}
}

func TestFlushAllRecreatesGroup(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	var handled atomic.Int64
	co := runConsumer(t, c, consumer.Config{Topic: "flush", Block: 200 * time.Millisecond}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		handled.Add(1)
		return m.Payload, nil
	}))
	p := newProducer(t, c, producer.Config{ReplyTTL: 3 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.Request(ctx, "flush", []byte("before")); err != nil {
		t.Fatalf("Request before FLUSHALL = %v", err)
	}
	if err := c.Redis().Do(ctx, c.Redis().B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// The group is recreated by the consumer, the reply stream by the producer.
	waitFor(t, 10*time.Second, "the consumer to recreate its group", func() bool { return co.Stats().GroupsCreated >= 2 })
	waitFor(t, 20*time.Second, "a request to succeed after FLUSHALL", func() bool {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		got, err := p.Request(rctx, "flush", []byte("after"))
		return err == nil && string(got) == "after"
	})
	before := handled.Load()
	if _, err := p.Publish(ctx, "flush", []byte("event")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the event after FLUSHALL", func() bool { return handled.Load() > before })
}

func TestShutdownLetsInFlightHandlersFinish(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	started := make(chan string, 10)
	release := make(chan struct{})
	var finished atomic.Int32
	co, err := consumer.New(c, consumer.Config{Topic: "drain", Concurrency: 2, ShutdownTimeout: 20 * time.Second},
		consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
			started <- m.ID
			<-release
			finished.Add(1)
			return nil, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()

	p := newProducer(t, c, producer.Config{})
	pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer pcancel()
	for i := range 5 {
		if _, err := p.Publish(pctx, "drain", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	<-started
	<-started // both workers busy; three entries wait in the stream
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Run returned %v while handlers were still running", err)
	case <-time.After(100 * time.Millisecond): // a negative check needs some window
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its handlers finished")
	}
	if got := finished.Load(); got != 2 {
		t.Fatalf("%d handlers finished, want the 2 in flight", got)
	}
	// The two handled entries were acknowledged; the group's other three
	// entries were never read, so nothing of this consumer stays pending.
	pending, err := c.Redis().Do(pctx, c.Redis().B().Xpending().Key("myc:{drain}").Group("workers").Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := pending[0].AsInt64(); n != 0 {
		t.Fatalf("XPENDING count = %d after a clean drain, want 0", n)
	}
	if s := co.Stats(); s.Acked != 2 || s.Received != 2 {
		t.Fatalf("stats = %+v, want 2 received and 2 acked", s)
	}
}

func TestShutdownTimeoutLeavesUnfinishedPending(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	started := make(chan struct{}, 1)
	co, err := consumer.New(c, consumer.Config{Topic: "stuck", Concurrency: 1, ShutdownTimeout: 50 * time.Millisecond},
		consumer.HandlerFunc(func(ctx context.Context, _ *consumer.Message) ([]byte, error) {
			started <- struct{}{}
			<-ctx.Done() // a long reasoning call that honours cancellation
			return nil, ctx.Err()
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	p := newProducer(t, c, producer.Config{})
	pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer pcancel()
	if _, err := p.Publish(pctx, "stuck", []byte("long")); err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	pending, err := c.Redis().Do(pctx, c.Redis().B().Xpending().Key("myc:{stuck}").Group("workers").Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := pending[0].AsInt64(); n != 1 {
		t.Fatalf("XPENDING count = %d, want the unfinished entry still pending", n)
	}
	dlq, _ := c.Redis().Do(pctx, c.Redis().B().Xlen().Key("myc:{stuck}:dlq").Build()).AsInt64()
	if dlq != 0 {
		t.Fatalf("a handler cancelled by shutdown was dead-lettered (%d entries)", dlq)
	}
}
