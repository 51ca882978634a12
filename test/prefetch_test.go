package test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// One handler reading 16 ahead gets a partition's entries in stream order,
// each once; while its first entry runs, the next 16 are read (pending).
func TestPrefetchKeepsOrderWithOneHandler(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	p := newProducer(t, c, producer.Config{})
	const n = 500
	for i := range n {
		if _, err := p.Publish(context.Background(), "ahead", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var got []int
	var held atomic.Int64 // entries pending while the first one ran
	runConsumer(t, c, consumer.Config{Topic: "ahead", Concurrency: 1, Prefetch: 16, StartID: "0"},
		consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
			v, _ := strconv.Atoi(string(m.Payload))
			if v == 0 { // the reader fills the read-ahead meanwhile
				for end := time.Now().Add(10 * time.Second); held.Load() < 17 && time.Now().Before(end); {
					held.Store(groupPending(t, srv, "ahead"))
					time.Sleep(time.Millisecond) // polling Redis with a deadline
				}
			}
			mu.Lock()
			got = append(got, v)
			mu.Unlock()
			return nil, nil
		}))
	waitFor(t, 20*time.Second, "every entry handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= n })
	if h := held.Load(); h != 17 {
		t.Fatalf("%d entries held while the first ran; want 17 (1 + Prefetch 16)", h)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, v := range got {
		if v != i {
			t.Fatalf("entry %d handled at position %d (out of order): %v", v, i, got[max(0, i-3):min(len(got), i+3)])
		}
	}
	if len(got) != n {
		t.Fatalf("handled %d entries, want %d", len(got), n)
	}
}

// Entries read ahead wait behind a handler that holds its entry for 3 x
// ClaimIdle: the heartbeat keeps them (and the running one) from another
// worker's reclaim, so each is handled once, in order.
func TestPrefetchedEntriesAreNotReclaimed(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	const claimIdle = 600 * time.Millisecond
	var runs sync.Map // payload -> runs
	var order []string
	var mu sync.Mutex
	var total atomic.Int64
	h := func(slow bool) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
			v, _ := runs.LoadOrStore(string(m.Payload), new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
			mu.Lock()
			order = append(order, string(m.Payload))
			mu.Unlock()
			if slow && string(m.Payload) == "0" {
				select {
				case <-time.After(3 * claimIdle):
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			total.Add(1)
			return nil, nil
		})
	}
	p := newProducer(t, c, producer.Config{})
	for i := range 5 {
		if _, err := p.Publish(context.Background(), "held", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	a := runConsumer(t, c, consumer.Config{Topic: "held", Name: "a", Concurrency: 1, Prefetch: 8, StartID: "0", Reclaim: consumer.ReclaimConfig{ClaimIdle: claimIdle}}, h(true))
	waitFor(t, 5*time.Second, "the first entry to start", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) > 0 })
	b := runConsumer(t, c, consumer.Config{Topic: "held", Name: "b", Reclaim: consumer.ReclaimConfig{ClaimIdle: claimIdle}}, h(false))
	waitFor(t, 15*time.Second, "every entry handled", func() bool { return total.Load() >= 5 })
	waitFor(t, 5*time.Second, "nothing pending", func() bool { return groupPending(t, srv, "held") == 0 })
	time.Sleep(2 * claimIdle) // a negative check needs a window: no late reclaim
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != "[0 1 2 3 4]" {
		t.Fatalf("handled in the order %v; want each once, in order (b reclaimed read-ahead entries?)", order)
	}
	if b.Stats().Reclaimed != 0 || a.Stats().Heartbeats == 0 {
		t.Fatalf("b reclaimed %d, a sent %d heartbeats", b.Stats().Reclaimed, a.Stats().Heartbeats)
	}
}

// Past ShutdownTimeout, entries read ahead are not started (their
// handlers would start with their ctx done): the one running is left, the
// rest handed back uncounted, and Run returns within the timeout's reach.
func TestPrefetchShutdownTimeoutStartsNoMore(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	p := newProducer(t, c, producer.Config{})
	for i := range 5 {
		if _, err := p.Publish(context.Background(), "late", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	var calls atomic.Int64
	started := make(chan struct{}, 8)
	co, err := consumer.New(c, consumer.Config{Topic: "late", Concurrency: 1, Prefetch: 4, StartID: "0", ShutdownTimeout: 200 * time.Millisecond},
		consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
			calls.Add(1)
			started <- struct{}{}
			time.Sleep(300 * time.Millisecond) // a handler that does not heed its ctx
			return nil, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	<-started
	waitFor(t, 5*time.Second, "4 entries read ahead", func() bool { return groupPending(t, srv, "late") == 5 })
	t0 := time.Now()
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("Run took %v to return", d)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d handler calls; want 1 (none started past the timeout)", n)
	}
	if got := co.Stats().HandedBack; got < 4 {
		t.Fatalf("handed back %d, want at least the 4 read ahead", got)
	}
	pend, err := redisx.PendingOf(context.Background(), c.Redis(), "myc:{late}", "workers", "-", "+", 10, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range pend {
		if e.Deliveries > 1 {
			t.Fatalf("entry %s counts %d deliveries after hand-back; want its first not charged", e.ID, e.Deliveries)
		}
	}
}
