package topology

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// fakeRedis is a Reader whose answers a test sets, counting reads.
type fakeRedis struct {
	mu    sync.Mutex
	n     int
	err   error
	reads atomic.Int32
	// block, when set, holds each read until it is closed or ctx ends.
	block chan struct{}
	// deadline records whether a read's ctx carried a deadline.
	deadline atomic.Bool
}

func (f *fakeRedis) read(ctx context.Context, _ string) (redisx.PartitionMeta, error) {
	f.reads.Add(1)
	if _, ok := ctx.Deadline(); ok {
		f.deadline.Store(true)
	}
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return redisx.PartitionMeta{}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return redisx.PartitionMeta{}, f.err
	}
	return redisx.PartitionMeta{N: f.n, Drain: f.n, Set: true}, nil
}

func (f *fakeRedis) set(n int, err error) {
	f.mu.Lock()
	f.n, f.err = n, err
	f.mu.Unlock()
}

// owner is a Spawner that tracks its goroutines and stops them.
type owner struct {
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	spawned atomic.Int32
	stopped atomic.Bool
}

func newOwner(t *testing.T) *owner {
	o := &owner{}
	o.ctx, o.cancel = context.WithCancel(context.Background())
	t.Cleanup(o.stop)
	return o
}

func (o *owner) spawn(fn func(ctx context.Context)) bool {
	if o.stopped.Load() {
		return false
	}
	o.spawned.Add(1)
	o.wg.Go(func() { fn(o.ctx) })
	return true
}

func (o *owner) stop() {
	o.stopped.Store(true)
	o.cancel()
	o.wg.Wait()
}

func count(t *testing.T, tp *Topic, now time.Time) int {
	t.Helper()
	n, err := tp.Count(context.Background(), now.UnixNano())
	if err != nil {
		t.Fatalf("Count = %v", err)
	}
	return n
}

// TestCountReadsOnceThenInBackground: the first Count reads; later ones
// answer from memory, and one that finds the count Refresh old starts a
// background read and answers with the old count meanwhile.
func TestCountReadsOnceThenInBackground(t *testing.T) {
	f := &fakeRedis{n: 4}
	o := newOwner(t)
	var failed []error
	w := New(f.read, o.spawn, Config{Refresh: time.Minute, RefreshFailed: func(_ string, err error) { failed = append(failed, err) }})
	tp := w.Topic("orders")
	if w.Topic("orders") != tp {
		t.Fatal("Topic returned two handles for one name")
	}
	now := time.Now()
	if got := count(t, tp, now); got != 4 || f.reads.Load() != 1 {
		t.Fatalf("first Count = %d after %d reads, want 4 after 1", got, f.reads.Load())
	}
	if got := count(t, tp, now.Add(30*time.Second)); got != 4 || f.reads.Load() != 1 {
		t.Fatalf("Count of a fresh count = %d after %d reads, want 4 after 1", got, f.reads.Load())
	}
	f.set(6, nil)
	if got := count(t, tp, now.Add(2*time.Minute)); got != 4 {
		t.Fatalf("Count of a stale count = %d, want the old 4 while it is read again", got)
	}
	o.wg.Wait()
	if f.reads.Load() != 2 || o.spawned.Load() != 1 {
		t.Fatalf("%d reads on %d goroutines, want 2 reads, 1 in the background", f.reads.Load(), o.spawned.Load())
	}
	if got := count(t, tp, time.Now()); got != 6 {
		t.Fatalf("Count after the background read = %d, want 6", got)
	}
	if m, ok := tp.Meta(); !ok || m.N != 6 || m.Drain != 6 {
		t.Fatalf("Meta = %+v, %v; want the metadata read", m, ok)
	}
	// A failed background read keeps the last count and is reported.
	boom := errors.New("boom")
	f.set(9, boom)
	count(t, tp, time.Now().Add(2*time.Minute))
	o.wg.Wait()
	if got := count(t, tp, time.Now()); got != 6 || len(failed) != 1 || !errors.Is(failed[0], boom) {
		t.Fatalf("after a failed refresh Count = %d, failures %v; want 6 and one boom", got, failed)
	}
}

// TestOneBackgroundReadAtATime: however many calls find the count stale,
// one read runs at a time; once the owner stops, none starts.
func TestOneBackgroundReadAtATime(t *testing.T) {
	f := &fakeRedis{n: 2}
	o := newOwner(t)
	w := New(f.read, o.spawn, Config{Refresh: time.Millisecond})
	tp := w.Topic("t")
	count(t, tp, time.Now())
	f.block = make(chan struct{})
	later := time.Now().Add(time.Hour)
	for range 100 {
		count(t, tp, later)
	}
	if o.spawned.Load() != 1 {
		t.Fatalf("%d background reads started for 100 stale calls, want 1", o.spawned.Load())
	}
	close(f.block)
	o.wg.Wait()
	o.stop()
	count(t, tp, later.Add(time.Hour))
	if o.spawned.Load() != 1 || tp.refreshing.Load() {
		t.Fatalf("after the owner stopped: %d spawned, refreshing %v; want 1 and false", o.spawned.Load(), tp.refreshing.Load())
	}
}

// TestFirstReadKeepsTheDeadlineFromRedis: the caller's deadline does not
// reach the Reader (redisx.Detach); the call still ends with its ctx, and a
// failed first read is the caller's error.
func TestFirstReadKeepsTheDeadlineFromRedis(t *testing.T) {
	f := &fakeRedis{n: 3, block: make(chan struct{})}
	o := newOwner(t)
	w := New(f.read, o.spawn, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := w.Topic("t").Count(ctx, time.Now().UnixNano()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Count with Redis not answering = %v, want the caller's deadline", err)
	}
	if f.deadline.Load() {
		t.Fatal("the caller's deadline reached the Reader")
	}
	f.block = nil
	boom := errors.New("boom")
	f.set(0, boom)
	if _, err := w.Topic("t").Count(context.Background(), time.Now().UnixNano()); !errors.Is(err, boom) {
		t.Fatalf("Count with a failing read = %v, want its error", err)
	}
	if _, ok := w.Topic("t").Meta(); ok {
		t.Fatal("Meta reports a reading after every read failed")
	}
}

// TestRead: Read reads now (every call), without the caller's deadline,
// keeps what it read for Count and Meta, and keeps the last reading when
// Redis fails.
func TestRead(t *testing.T) {
	f := &fakeRedis{n: 3}
	refuse := func(func(context.Context)) bool { return false }
	tp := New(f.read, refuse, Config{Refresh: time.Hour}).Topic("t")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if m, err := tp.Read(ctx); err != nil || m.N != 3 {
		t.Fatalf("Read = %+v, %v; want 3 partitions", m, err)
	}
	if f.deadline.Load() {
		t.Fatal("the caller's deadline reached the reader")
	}
	f.set(5, nil)
	if m, err := tp.Read(ctx); err != nil || m.N != 5 || f.reads.Load() != 2 {
		t.Fatalf("a second Read = %+v, %v after %d reads; want 5 partitions, read again", m, err, f.reads.Load())
	}
	if n, err := tp.Count(ctx, time.Now().UnixNano()); err != nil || n != 5 || f.reads.Load() != 2 {
		t.Fatalf("Count after Read = %d, %v after %d reads; want 5 without a read", n, err, f.reads.Load())
	}
	boom := errors.New("boom")
	f.set(0, boom)
	if _, err := tp.Read(ctx); !errors.Is(err, boom) {
		t.Fatalf("Read with Redis failing = %v", err)
	}
	if m, ok := tp.Meta(); !ok || m.N != 5 {
		t.Fatalf("Meta after a failed Read = %+v, %v; want the last reading", m, ok)
	}
}
