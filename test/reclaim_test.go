package test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// ghostRead reads n entries as a consumer that then "dies": they stay
// pending under its name.
func ghostRead(t *testing.T, srv *redistest.Server, topic string, n int) {
	t.Helper()
	c := srv.Client(t)
	ctx := context.Background()
	if err := redisx.CreateGroup(ctx, c.Redis(), "myc:{"+topic+"}", "workers", "0"); err != nil {
		t.Fatal(err)
	}
	got, err := redisx.ReadGroup(ctx, c.Redis(), "myc:{"+topic+"}", "workers", "ghost", ">", int64(n), 100*time.Millisecond)
	if err != nil || len(got) != n {
		t.Fatalf("ghost read %d entries, %v; want %d", len(got), err, n)
	}
}

func groupPending(t *testing.T, srv *redistest.Server, topic string) int64 {
	t.Helper()
	c := srv.Client(t)
	g, err := redisx.Groups(context.Background(), c.Redis(), "myc:{"+topic+"}")
	if err != nil || len(g) == 0 {
		t.Fatalf("Groups = %v, %v", g, err)
	}
	return g[0].Pending
}

func TestReclaimFromDeadConsumer(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	p := newProducer(t, c, producer.Config{})
	ctx := context.Background()
	const n = 50
	for i := range n {
		if _, err := p.Publish(ctx, "orphans", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	ghostRead(t, srv, "orphans", n)
	var seen sync.Map
	var handled atomic.Int64
	co := runConsumer(t, c, consumer.Config{Topic: "orphans", Reclaim: consumer.ReclaimConfig{ClaimIdle: time.Second}}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		if _, dup := seen.LoadOrStore(string(m.Payload), true); dup {
			t.Errorf("entry %s handled twice", m.Payload)
		}
		if m.Attempt != 2 {
			t.Errorf("reclaimed entry attempt = %d, want 2", m.Attempt)
		}
		handled.Add(1)
		return nil, nil
	}))
	waitFor(t, 20*time.Second, "the dead consumer's entries to be reclaimed and handled", func() bool { return handled.Load() == n })
	waitFor(t, 5*time.Second, "nothing pending", func() bool { return groupPending(t, srv, "orphans") == 0 })
	if s := co.Stats(); s.Reclaimed != n {
		t.Fatalf("Reclaimed = %d, want %d", s.Reclaimed, n)
	}
}

func TestSlowHandlerIsNotReclaimed(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	const claimIdle = 600 * time.Millisecond
	var runs atomic.Int64
	finished := make(chan struct{})
	h := consumer.HandlerFunc(func(ctx context.Context, _ *consumer.Message) ([]byte, error) {
		runs.Add(1)
		select { // a reasoning call of 3 x ClaimIdle
		case <-time.After(3 * claimIdle):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		close(finished)
		return nil, nil
	})
	a := runConsumer(t, c, consumer.Config{Topic: "slow", Name: "a", Reclaim: consumer.ReclaimConfig{ClaimIdle: claimIdle}}, h)
	b := runConsumer(t, c, consumer.Config{Topic: "slow", Name: "b", Reclaim: consumer.ReclaimConfig{ClaimIdle: claimIdle}}, h)
	p := newProducer(t, c, producer.Config{})
	if _, err := p.Publish(context.Background(), "slow", []byte("think")); err != nil {
		t.Fatal(err)
	}
	<-finished
	// Give the reclaimers several more rounds to (wrongly) pick it up.
	waitFor(t, 5*time.Second, "the entry to be acknowledged", func() bool { return groupPending(t, srv, "slow") == 0 })
	time.Sleep(2 * claimIdle) // a negative check needs a window
	if got := runs.Load(); got != 1 {
		t.Fatalf("slow handler ran %d times, want once", got)
	}
	if hb := a.Stats().Heartbeats + b.Stats().Heartbeats; hb == 0 {
		t.Fatal("no heartbeat was sent for a handler running 3 x ClaimIdle")
	}
}

func TestTrimmedPendingEntriesAreDropped(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	p := newProducer(t, c, producer.Config{})
	ctx := context.Background()
	for i := range 5 {
		if _, err := p.Publish(ctx, "trim", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	ghostRead(t, srv, "trim", 5)
	if err := c.Redis().Do(ctx, c.Redis().B().Xtrim().Key("myc:{trim}").Maxlen().Threshold("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	co := runConsumer(t, c, consumer.Config{Topic: "trim", Reclaim: consumer.ReclaimConfig{ClaimIdle: 100 * time.Millisecond}}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		handled.Add(1)
		return nil, nil
	}))
	waitFor(t, 10*time.Second, "the trimmed pending entries to be reported", func() bool { return co.Stats().DeletedPending == 5 })
	waitFor(t, 5*time.Second, "nothing pending", func() bool { return groupPending(t, srv, "trim") == 0 })
	if handled.Load() != 0 {
		t.Fatalf("handled %d trimmed entries", handled.Load())
	}
}

func TestDeliveryLimitOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	var attempts atomic.Int64
	co := runConsumer(t, c, consumer.Config{Topic: "poison", Reclaim: consumer.ReclaimConfig{ClaimIdle: 500 * time.Millisecond}, Retry: consumer.RetryConfig{MaxDeliveries: 4}},
		consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
			attempts.Add(1)
			return nil, errors.New("always fails")
		}))
	p := newProducer(t, c, producer.Config{})
	if _, err := p.Publish(context.Background(), "poison", []byte("x")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for co.Stats().DeadLettered != 1 {
		if time.Now().After(deadline) {
			pend, _ := redisx.PendingOf(context.Background(), c.Redis(), "myc:{poison}", "workers", "-", "+", 10, "")
			t.Fatalf("poison event not dead-lettered: attempts %d, stats %+v, pending %+v", attempts.Load(), co.Stats(), pend)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := attempts.Load(); got != 4 {
		t.Fatalf("handler ran %d times, want MaxDeliveries = 4", got)
	}
	if n := groupPending(t, srv, "poison"); n != 0 {
		t.Fatalf("%d entries still pending", n)
	}
}

func TestRequestRetryLaterWhenDeadlineAllows(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	runConsumer(t, c, consumer.Config{Topic: "retry", Reclaim: consumer.ReclaimConfig{ClaimIdle: 100 * time.Millisecond}},
		consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
			if m.Attempt == 1 { // every request's first delivery
				return nil, fmt.Errorf("model warming up: %w", bus.ErrRetryLater)
			}
			return []byte(fmt.Sprintf("answer on attempt %d", m.Attempt)), nil
		}))
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := p.Request(ctx, "retry", []byte("q"))
	if err != nil || string(got) != "answer on attempt 2" {
		t.Fatalf("Request = %q, %v; want the retried answer", got, err)
	}
	// With a deadline too short for a retry, the error comes back at once.
	sctx, scancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer scancel()
	_, err = p.Request(sctx, "retry", []byte("q"))
	var re *bus.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("Request with a short deadline = %v, want the remote error at once", err)
	}
}

func TestConsumerRetention(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	p := newProducer(t, c, producer.Config{StreamMaxLen: -1})
	ctx := context.Background()
	for i := range 50 {
		if _, err := p.Publish(ctx, "kept", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	co := runConsumer(t, c, consumer.Config{Topic: "kept", Reclaim: consumer.ReclaimConfig{ClaimIdle: 200 * time.Millisecond}, Retention: consumer.RetentionConfig{MaxLen: 10}},
		consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) { return nil, nil }))
	// The counter is updated after XTRIM returns: wait for both.
	waitFor(t, 10*time.Second, "the topic trimmed to 10 entries and counted", func() bool {
		n, err := c.Redis().Do(ctx, c.Redis().B().Xlen().Key("myc:{kept}").Build()).AsInt64()
		return err == nil && n == 10 && co.Stats().Trimmed == 40
	})
}

func TestIdleConsumersRemoved(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	p := newProducer(t, c, producer.Config{})
	if _, err := p.Publish(ctx, "idle", []byte("held")); err != nil {
		t.Fatal(err)
	}
	ghostRead(t, srv, "idle", 1) // "ghost" holds one pending entry
	if err := c.Redis().Do(ctx, c.Redis().B().XgroupCreateconsumer().Key("myc:{idle}").Group("workers").Consumer("gone").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	co := runConsumer(t, c, consumer.Config{Topic: "idle", Reclaim: consumer.ReclaimConfig{ClaimIdle: 30 * time.Second, Interval: 50 * time.Millisecond, ConsumerIdleTimeout: 300 * time.Millisecond}},
		consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) { return nil, nil }))
	names := func() map[string]bool {
		list, err := redisx.Consumers(ctx, c.Redis(), "myc:{idle}", "workers")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, ci := range list {
			m[ci.Name] = true
		}
		return m
	}
	// (Redis 7.0 registers a consumer only when XREADGROUP delivers entries,
	// so the live one may not be listed yet: that is fine.)
	waitFor(t, 10*time.Second, "the idle consumer without entries to be removed (and counted)", func() bool {
		return !names()["gone"] && co.Stats().ConsumersRemoved == 1
	})
	if n := names(); !n["ghost"] {
		t.Fatalf("consumers = %v: the one holding an entry, or the live one, was removed", n)
	}
}

// A consumer that stops holding entries no handler will finish (here read
// under its name by a read whose reply it never saw, as when Run's ctx ends
// with a read in flight) hands them back: another worker of the group
// handles them at once, not after ClaimIdle (30 s). An event it failed
// stays for the reclaim after ClaimIdle, as before.
func TestStoppingConsumerHandsBackUnhandledEntries(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	p := newProducer(t, c, producer.Config{})
	if err := redisx.CreateGroup(ctx, c.Redis(), "myc:{back}", "workers", "0"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := p.Publish(ctx, "back", []byte(fmt.Sprint("lost-", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := redisx.ReadGroup(ctx, c.Redis(), "myc:{back}", "workers", "a", ">", 3, 100*time.Millisecond); err != nil || len(got) != 3 {
		t.Fatalf("read %d entries as a, %v", len(got), err)
	}
	if _, err := p.Publish(ctx, "back", []byte("fail")); err != nil {
		t.Fatal(err)
	}
	a, err := consumer.New(redistest.RoleClient(t, c, "worker"), consumer.Config{Topic: "back", Name: "a"}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		return nil, errors.New("fails: delivered again after ClaimIdle")
	}))
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	waitFor(t, 10*time.Second, "the event to fail", func() bool { return a.Stats().Failed == 1 })
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := a.Stats().HandedBack; got != 3 {
		t.Fatalf("handed back %d entries, want 3 (not the failed event)", got)
	}
	var mu sync.Mutex
	var got []string
	start := time.Now()
	runConsumer(t, c, consumer.Config{Topic: "back", Name: "b"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		mu.Lock()
		got = append(got, string(m.Payload))
		mu.Unlock()
		return nil, nil
	}))
	waitFor(t, 10*time.Second, "the handed-back entries", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 3 })
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
	time.Sleep(500 * time.Millisecond) // a negative check needs a window: the failed event waits for ClaimIdle
	mu.Lock()
	defer mu.Unlock()
	for _, s := range got {
		if s == "fail" {
			t.Fatalf("the failed event was handed back too: %v", got)
		}
	}
	if len(got) != 3 {
		t.Fatalf("b handled %v", got)
	}
}
