package producer_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/faults"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// The producer's behaviour when Redis fails, on miniredis through the
// fault-injecting port (internal/faults), without a redis-server: what
// each verb returns (a sentinel a caller can branch on, within its own
// deadline), and that what a verb said was written is in the stream and
// what it said failed is not. (test/chaos kills a real redis-server.)

// faultProducer is a producer of topic "t" with faults between it and
// Redis, answered by a replier (no faults on its side).
func faultProducer(t *testing.T) (*miniredis.Miniredis, *bus.Client, *faults.Faults, *producer.Producer) {
	t.Helper()
	m, c := redistest.Mini(t)
	f := faults.NewFaults()
	p, err := producer.New(c, producer.Config{WaitForResponders: true}, producer.WithFaults(f))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	t.Cleanup(func() { // before Close (cleanups run last first)
		f.Resume()
		f.Up()
		f.ClearReplies()
	})
	stop := replier(t, m, c, "t", func(env *codec.Envelope) *codec.Envelope {
		return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, Payload: append([]byte("re:"), env.Payload...)}
	})
	t.Cleanup(stop)
	return m, c, f, p
}

// ask makes one request with timeout d and checks its answer when it
// expects one.
func ask(t *testing.T, p *producer.Producer, d time.Duration, payload string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	got, err := p.Request(ctx, "t", []byte(payload))
	if err == nil && string(got) != "re:"+payload {
		t.Fatalf("Request(%s) = %q, want re:%s", payload, got, payload)
	}
	return err
}

// streamLen is how many entries topic t's stream holds.
func streamLen(t *testing.T, m *miniredis.Miniredis, topic string) int {
	t.Helper()
	s, err := m.Stream("myc:{" + topic + "}")
	if err != nil {
		return 0
	}
	return len(s)
}

// Redis paused: a request ends at its caller's deadline with
// bus.ErrTimeout (its write is still queued), and once Redis answers
// again the producer works without a restart.
func TestFaultRedisPaused(t *testing.T) {
	_, _, f, p := faultProducer(t)
	if err := ask(t, p, 5*time.Second, "before"); err != nil {
		t.Fatalf("before the pause: %v", err)
	}
	f.Pause()
	err := ask(t, p, 200*time.Millisecond, "paused")
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Request while Redis is paused = %v, want bus.ErrTimeout", err)
	}
	f.Resume()
	if err := ask(t, p, 5*time.Second, "after"); err != nil {
		t.Fatalf("after the pause: %v", err)
	}
	if s := p.Stats(); s.Timeouts != 1 {
		t.Fatalf("Stats.Timeouts = %d, want 1", s.Timeouts)
	}
}

// Writes failing on a dropped connection: Publish and Request return
// bus.ErrUnavailable at once (not a timeout), nothing is in the stream,
// and writes go through again once the connection is back.
func TestFaultWritesDropped(t *testing.T) {
	m, _, f, p := faultProducer(t)
	f.Down("XADD")
	ctx := context.Background()
	if _, err := p.Publish(ctx, "t", []byte("e")); !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("Publish with XADD dropped = %v, want bus.ErrUnavailable", err)
	}
	if err := ask(t, p, 30*time.Second, "q"); !errors.Is(err, bus.ErrUnavailable) || errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("Request with XADD dropped = %v, want bus.ErrUnavailable and no timeout", err)
	}
	if n := streamLen(t, m, "t"); n != 0 {
		t.Fatalf("%d entries in the stream after failed writes, want 0", n)
	}
	f.Up()
	if _, err := p.Publish(ctx, "t", []byte("e")); err != nil {
		t.Fatalf("Publish after the connection is back: %v", err)
	}
	if err := ask(t, p, 5*time.Second, "q"); err != nil {
		t.Fatalf("Request after the connection is back: %v", err)
	}
}

// A user without the right to XADD: the caller gets bus.ErrPermission,
// which says what to fix (not ErrUnavailable: trying again will not help).
func TestFaultWriteRefused(t *testing.T) {
	_, _, f, p := faultProducer(t)
	f.Reply("XADD", "NOPERM this user has no permissions to access one of the keys used as arguments", -1)
	if _, err := p.Publish(context.Background(), "t", []byte("e")); !errors.Is(err, bus.ErrPermission) || errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("Publish refused by NOPERM = %v, want bus.ErrPermission", err)
	}
	if err := ask(t, p, 30*time.Second, "q"); !errors.Is(err, bus.ErrPermission) {
		t.Fatalf("Request refused by NOPERM = %v, want bus.ErrPermission", err)
	}
}

// A connection cut in the middle of a PublishBatch's pipeline: the batch
// is one MULTI/EXEC, so it is written whole or not at all: no id returned,
// a *PublishError saying ErrUnavailable for every payload, nothing in the
// stream; sent again, it is written whole.
func TestFaultBatchCut(t *testing.T) {
	m, _, f, p := faultProducer(t)
	payloads := make([][]byte, 6)
	for i := range payloads {
		payloads[i] = fmt.Appendf(nil, "e%d", i)
	}
	f.Cut(2)
	ids, err := p.PublishBatch(context.Background(), "t", payloads)
	if f.Cuts() != 1 {
		t.Fatalf("%d pipelines cut, want 1", f.Cuts())
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != len(payloads) {
		t.Fatalf("PublishBatch through a cut pipeline = %v, want one error per payload", err)
	}
	for i, e := range joined.Unwrap() {
		var pe *producer.PublishError
		if !errors.As(e, &pe) || pe.Index != i || !errors.Is(pe, bus.ErrUnavailable) || ids[i] != "" {
			t.Fatalf("payload %d: %v (id %q), want a PublishError with ErrUnavailable and no id", i, e, ids[i])
		}
	}
	if n := streamLen(t, m, "t"); n != 0 {
		t.Fatalf("%d entries in the stream after a cut batch, want 0", n)
	}
	ids, err = p.PublishBatch(context.Background(), "t", payloads)
	if err != nil || len(ids) != len(payloads) || streamLen(t, m, "t") != len(payloads) {
		t.Fatalf("PublishBatch after the cut = %v, %v; stream holds %d", ids, err, streamLen(t, m, "t"))
	}
}

// The reply stream unreadable for a while (XREAD dropped): a request
// answered meanwhile is delivered once the reader reads again, within
// its caller's deadline; nothing is counted late or lost.
func TestFaultRepliesUnreadable(t *testing.T) {
	m, _, f, p := faultProducer(t)
	if err := ask(t, p, 5*time.Second, "warm"); err != nil {
		t.Fatal(err)
	}
	f.Down("XREAD")
	// The read blocked before the fault may return a reply: wait until the
	// reader's next read was dropped.
	giveUp := time.Now().Add(20 * time.Second)
	for f.Dropped("XREAD") == 0 {
		if time.Now().After(giveUp) {
			t.Fatal("the reply reader read nothing in 20s")
		}
		time.Sleep(time.Millisecond) // polling the fault's counter
	}
	dropped := f.Dropped("XREAD")
	done := make(chan error, 1)
	go func() { done <- ask(t, p, 30*time.Second, "q") }()
	// The replier answered (its reply is in the reply stream) and the
	// reader tried and failed again since: then bring XREAD back.
	for {
		s, _ := m.Stream(p.ReplyStream())
		if len(s) >= 3 && f.Dropped("XREAD") > dropped {
			break
		}
		if time.Now().After(giveUp) {
			t.Fatalf("in 20s: %d entries in the reply stream, %d reads dropped", len(s), f.Dropped("XREAD"))
		}
		select {
		case err := <-done:
			t.Fatalf("Request returned while its reply was unreadable: %v", err)
		case <-time.After(5 * time.Millisecond): // polling miniredis for the reply
		}
	}
	f.Up()
	if err := <-done; err != nil {
		t.Fatalf("Request answered while the reply stream was unreadable: %v", err)
	}
	if s := p.Stats(); s.Late != 0 || s.Timeouts != 0 || s.InFlight != 0 {
		t.Fatalf("Stats = %+v, want nothing late, timed out or in flight", s)
	}
}

// Redis answering slower than the caller's deadline: the caller gets its
// own deadline (bus.ErrTimeout) before Redis has the write, not when Redis
// answers; the write lands later, its reply is counted late, and the
// callers after it are not held up.
func TestFaultSlowWrites(t *testing.T) {
	m, _, f, p := faultProducer(t)
	if err := ask(t, p, 5*time.Second, "warm"); err != nil {
		t.Fatal(err)
	}
	f.Slow("XADD", 3*time.Second)
	err := ask(t, p, 100*time.Millisecond, "slow")
	if !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("Request with XADD 3s slow = %v, want bus.ErrTimeout", err)
	}
	if n := streamLen(t, m, "t"); n != 1 {
		t.Fatalf("the stream holds %d entries when the caller's deadline passed, want 1 (the slow write still on its way)", n)
	}
	f.Slow("XADD", 0)
	if err := ask(t, p, 30*time.Second, "fast"); err != nil {
		t.Fatalf("after XADD is fast again: %v", err)
	}
	for p.Stats().Late != 1 {
		time.Sleep(5 * time.Millisecond) // polling a counter: the slow write lands, its reply comes late
	}
}
