package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/faults"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// The consumer's behaviour when Redis fails, on miniredis through the
// fault-injecting port (internal/faults), without a redis-server. Each
// scenario asserts what the callers see and that nothing is lost: every
// request answered, nothing left pending. (The real-server chaos suite,
// test/chaos, kills and restarts redis-server itself.)

// faultRig is a worker of topic "f" with faults between it and Redis, and
// a producer (without faults) asking it.
type faultRig struct {
	m     *miniredis.Miniredis
	c     *bus.Client
	f     *faults.Faults
	co    *consumer.Consumer
	p     *producer.Producer
	calls atomic.Int64
	run   chan error // Run's result
	stop  context.CancelFunc
}

func newFaultRig(t *testing.T, cfg consumer.Config) *faultRig {
	t.Helper()
	m, c := redistest.Mini(t)
	r := &faultRig{m: m, c: c, f: faults.NewFaults(), run: make(chan error, 1)}
	cfg.Topic = "f"
	h := consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		r.calls.Add(1)
		return append([]byte("re:"), m.Payload...), nil
	})
	co, err := consumer.New(c, cfg, h, consumer.WithFaults(r.f))
	if err != nil {
		t.Fatal(err)
	}
	r.co = co
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() { r.run <- co.Run(ctx) }()
	t.Cleanup(func() {
		r.f.Resume()
		r.f.Up()
		r.f.ClearReplies()
		cancel()
		<-r.run
	})
	eventually(t, "worker serving", func() bool { return co.Ready(context.Background()) == nil })
	p, err := producer.New(c, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	r.p = p
	return r
}

// ask sends n requests at once and returns a channel of their errors
// (closed when all returned); each answer is checked.
func (r *faultRig) ask(t *testing.T, n int) <-chan error {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			want := fmt.Sprintf("q%d", i)
			got, err := r.p.Request(ctx, "f", []byte(want))
			if err == nil && string(got) != "re:"+want {
				err = fmt.Errorf("request %s answered %q", want, got)
			}
			errs <- err
		})
	}
	go func() { wg.Wait(); close(errs) }()
	return errs
}

// allAnswered fails the test unless every request of errs succeeded.
func allAnswered(t *testing.T, errs <-chan error, n int) {
	t.Helper()
	got := 0
	for err := range errs {
		if err != nil {
			t.Errorf("request: %v", err)
		}
		got++
	}
	if got != n {
		t.Fatalf("%d requests returned, want %d", got, n)
	}
}

// nothingPending waits until the group holds no pending entry (every
// request acknowledged).
func (r *faultRig) nothingPending(t *testing.T) {
	t.Helper()
	eventually(t, "nothing pending", func() bool {
		n, err := r.pending()
		return err == nil && n == 0
	})
}

// pending returns how many entries the group holds pending.
func (r *faultRig) pending() (int64, error) {
	p, _, err := redisx.GroupDetail(context.Background(), r.c.Redis(), "myc:{f}", "workers")
	return p.Count, err
}

// TestFaultRedisPaused: while Redis does not answer the worker, requests
// wait in the stream, unhandled; once it answers again every one is
// answered and acknowledged.
func TestFaultRedisPaused(t *testing.T) {
	r := newFaultRig(t, consumer.Config{})
	r.f.Pause()
	errs := r.ask(t, 20)
	eventually(t, "the requests in the stream", func() bool {
		es, err := r.m.Stream("myc:{f}")
		return err == nil && len(es) == 20
	})
	if n := r.calls.Load(); n != 0 {
		t.Fatalf("handled %d requests while Redis was paused", n)
	}
	r.f.Resume()
	allAnswered(t, errs, 20)
	r.nothingPending(t)
}

// TestFaultRepliesFailing: while the worker's writes fail (its connection
// drops every XADD and XACK, and the transactions that hold them), the
// handled requests' replies wait in the acker, which retries; once writes
// work again every caller gets its answer and every request is
// acknowledged, once.
func TestFaultRepliesFailing(t *testing.T) {
	r := newFaultRig(t, consumer.Config{})
	r.f.Down("XADD", "XACK")
	errs := r.ask(t, 20)
	eventually(t, "every request handled", func() bool { return r.calls.Load() == 20 })
	if s := r.co.Stats(); s.Replied != 0 || s.Acked != 0 {
		t.Fatalf("replied %d, acked %d while writes failed", s.Replied, s.Acked)
	}
	r.f.Up()
	allAnswered(t, errs, 20)
	r.nothingPending(t)
	eventually(t, "20 acknowledged", func() bool { return r.co.Stats().Acked == 20 }) // Redis applied them before the acker counts them
	if s := r.co.Stats(); s.Replied != 20 || r.calls.Load() != 20 {
		t.Errorf("replied %d, handled %d: want 20 each (no retry of the handlers)", s.Replied, r.calls.Load())
	}
}

// TestFaultSlowReads: a Redis slow to answer the worker's reads slows it,
// and loses nothing.
func TestFaultSlowReads(t *testing.T) {
	r := newFaultRig(t, consumer.Config{})
	r.f.Slow("XREADGROUP", 100*time.Millisecond)
	allAnswered(t, r.ask(t, 30), 30)
	r.nothingPending(t)
}

// TestFaultGroupLost: a read answered NOGROUP (Redis restarted without
// persistence, FLUSHALL) makes the worker create its group again and go
// on; the requests are answered.
func TestFaultGroupLost(t *testing.T) {
	r := newFaultRig(t, consumer.Config{})
	before := r.co.Stats().GroupsCreated
	r.f.Reply("XREADGROUP", "NOGROUP No such key 'myc:{f}' or consumer group 'workers' in XREADGROUP with GROUP option", 1)
	eventually(t, "the group created again", func() bool { return r.co.Stats().GroupsCreated > before })
	allAnswered(t, r.ask(t, 10), 10)
	r.nothingPending(t)
}

// TestFaultAckRefused: Redis refusing XACK for good (an ACL without it)
// stops Run with an error that wraps bus.ErrPermission and names XACK; the
// handled requests stay pending, for a worker that may acknowledge them.
func TestFaultAckRefused(t *testing.T) {
	r := newFaultRig(t, consumer.Config{})
	r.f.Reply("XACK", "NOPERM User worker has no permissions to run the 'xack' command", -1)
	errs := r.ask(t, 5)
	var err error
	select {
	case err = <-r.run:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not stop on a refused XACK")
	}
	r.run <- nil // for the cleanup
	if !errors.Is(err, bus.ErrPermission) || !strings.Contains(err.Error(), "XACK") {
		t.Fatalf("Run = %v, want an error wrapping bus.ErrPermission naming XACK", err)
	}
	pending, perr := r.pending()
	if perr != nil || pending == 0 {
		t.Fatalf("pending after the refusal = %d, %v: the handled requests must stay pending", pending, perr)
	}
	r.stop()
	for range errs { // the callers hear of it by their deadline, or by the replies written before the XACKs
	}
}

// TestFaultPipelineCut: the worker's connection drops in the middle of a
// flush (replies and acknowledgements in one pipeline): the acker sends
// the flush again, every caller gets its answer, every request is
// acknowledged.
func TestFaultPipelineCut(t *testing.T) {
	r := newFaultRig(t, consumer.Config{})
	r.f.Cut(1)
	allAnswered(t, r.ask(t, 20), 20)
	r.nothingPending(t)
	if r.f.Cuts() != 1 {
		t.Fatalf("%d pipelines cut, want 1", r.f.Cuts())
	}
	// Redis applied the XACKs before the acker counts them.
	eventually(t, "20 acknowledged", func() bool { return r.co.Stats().Acked == 20 })
}
