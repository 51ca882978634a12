package producer_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/goleak"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newProducer builds a producer for tests that answer requests by hand
// (replier: no consumer group, so no worker announces itself): it writes
// requests whether or not a worker serves the topic.
func newProducer(t *testing.T, c *bus.Client, cfg producer.Config) *producer.Producer {
	t.Helper()
	cfg.WaitForResponders = true
	p, err := producer.New(c, cfg)
	if err != nil {
		t.Fatalf("producer.New(%+v) = %v", cfg, err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

// replier answers requests on topic t like a consumer would, by hand, so the
// producer is tested alone.
func replier(t *testing.T, m *miniredis.Miniredis, c *bus.Client, topic string, answer func(env *codec.Envelope) *codec.Envelope) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := "0-0"
		for ctx.Err() == nil {
			entries, err := redisx.Read(ctx, c.Redis(), "myc:{"+topic+"}", last, 100, 50*time.Millisecond)
			if err != nil {
				continue
			}
			for _, e := range entries {
				last = e.ID
				var env codec.Envelope
				if err := codec.DecodeEnvelope(e.Data, &env); err != nil {
					continue
				}
				if r := answer(&env); r != nil {
					b := codec.AppendEnvelope(nil, r)
					redisx.AddBatch(ctx, c.Redis(), []redisx.Add{{Key: env.ReplyTo, NoMkStream: true, Data: b}}, nil, nil)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

func TestNewValidates(t *testing.T) {
	_, c := redistest.Mini(t)
	for _, cfg := range []producer.Config{{ID: "a b"}, {MaxInFlight: -1}, {ReplyTTL: time.Second}, {RequestTimeout: -1},
		{MaxInFlight: producer.MaxInFlightCap + 1}, {MaxPayload: producer.MaxPayloadCap + 1}, {ReplyBatch: producer.MaxReplyBatch + 1}, {Owner: "a.b"}} {
		if _, err := producer.New(c, cfg); !errors.Is(err, bus.ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := producer.New(nil, producer.Config{}); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Errorf("New(nil client) = %v, want ErrInvalidConfig", err)
	}
}

func TestRequestReplyAndRemoteError(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{})
	stop := replier(t, m, c, "t", func(env *codec.Envelope) *codec.Envelope {
		if string(env.Payload) == "fail" {
			return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, ErrCode: "quota", ErrMsg: "no tokens"}
		}
		if env.Deadline == 0 || env.ReplyTo != p.ReplyStream() || env.Headers["trace"] != "abc" {
			return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, ErrCode: "bad", ErrMsg: "envelope lacks deadline, reply-to or headers"}
		}
		return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, Payload: append([]byte("re:"), env.Payload...)}
	})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := p.Request(ctx, "t", []byte("hi"), producer.WithHeaders(map[string]string{"trace": "abc"}))
	if err != nil || string(got) != "re:hi" {
		t.Fatalf("Request = %q, %v; want re:hi", got, err)
	}
	_, err = p.Request(ctx, "t", []byte("fail"), producer.WithHeaders(map[string]string{"trace": "abc"}))
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "quota" || re.Message != "no tokens" {
		t.Fatalf("Request(fail) = %v, want RemoteError quota", err)
	}
	// Requests counts writes Redis accepted, recorded by the flusher, which
	// may finish after the reply reached the caller.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := p.Stats()
		if s.Requests == 2 && s.Replies == 1 && s.RemoteErrors == 1 && s.InFlight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Stats = %+v", s)
		}
		time.Sleep(time.Millisecond) // polling a counter with a deadline
	}
}

func TestReplyStreamTTLRefreshAndClose(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{ReplyTTL: 3 * time.Second})
	ctx := context.Background()
	rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := p.Request(rctx, "nobody", []byte("x"))
	cancel()
	if !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("Request with no consumer = %v, want ErrTimeout", err)
	}
	key := p.ReplyStream()
	if ttl := m.TTL(key); ttl <= 0 || ttl > 3*time.Second {
		t.Fatalf("reply stream TTL = %v, want (0, 3s]", ttl)
	}
	// The stream vanishes (FLUSHALL, restart): the reader recreates it.
	m.Del(key)
	deadline := time.Now().Add(10 * time.Second)
	for !m.Exists(key) {
		if time.Now().After(deadline) {
			t.Fatal("reply stream was not recreated after it vanished")
		}
		time.Sleep(10 * time.Millisecond) // waiting on the reader's own timer; nothing to select on
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if m.Exists(key) {
		t.Fatal("Close left the reply stream behind")
	}
	if _, err := p.Request(ctx, "t", nil); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Request after Close = %v, want ErrClosed", err)
	}
	if _, err := p.Publish(ctx, "t", nil); !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestCloseWakesWaitingRequests(t *testing.T) {
	_, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{})
	errc := make(chan error, 1)
	go func() {
		_, err := p.Request(context.Background(), "nobody", []byte("x"))
		errc <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Requests == 0 {
		if time.Now().After(deadline) {
			t.Fatal("request never sent")
		}
		time.Sleep(time.Millisecond) // polling a counter with a deadline
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, bus.ErrClosed) {
		t.Fatalf("waiting Request after Close = %v, want ErrClosed", err)
	}
}

// holdOnlySlot makes a request to a topic nobody serves, with a ctx of its
// own (a minute, so Config.RequestTimeout does not end it), and returns once
// it holds p's only in-flight slot. Closing the returned channel cancels it.
func holdOnlySlot(t *testing.T, p *producer.Producer) (release chan struct{}) {
	t.Helper()
	release = make(chan struct{})
	started := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		go func() { <-release; cancel() }()
		close(started)
		_, _ = p.Request(ctx, "nobody", []byte("holds the only slot"))
	}()
	<-started
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().InFlight != 1 {
		if time.Now().After(deadline) {
			t.Fatal("first request never took its slot")
		}
		time.Sleep(time.Millisecond) // polling a counter with a deadline
	}
	return release
}

func TestMaxInFlightBoundsWaiters(t *testing.T) {
	_, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{MaxInFlight: 1})
	release := holdOnlySlot(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	_, err := p.Request(ctx, "nobody", []byte("second"))
	cancel()
	if !errors.Is(err, bus.ErrTimeout) || !strings.Contains(err.Error(), "in-flight slot") {
		t.Fatalf("second Request at MaxInFlight 1 = %v, want a timeout waiting for a slot", err)
	}
	close(release)
}

// A ctx without a deadline gets Config.RequestTimeout, enforced by the
// producer's own per-waiter timer: waiting for the reply and for a slot both
// end with ErrTimeout, the envelope carries the deadline, and the waiter
// (with its timer) is reused cleanly by the requests after.
func TestRequestTimeoutWithoutCtxDeadline(t *testing.T) {
	m, c := redistest.Mini(t)
	const timeout = 150 * time.Millisecond
	p := newProducer(t, c, producer.Config{RequestTimeout: timeout, MaxInFlight: 1})
	deadlines := make(chan int64, 10)
	stop := replier(t, m, c, "t", func(env *codec.Envelope) *codec.Envelope {
		deadlines <- env.Deadline
		if string(env.Payload) == "ignore" {
			return nil
		}
		return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, Payload: env.Payload}
	})
	defer stop()

	start := time.Now()
	_, err := p.Request(context.Background(), "t", []byte("ignore"))
	took := time.Since(start)
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for the reply") {
		t.Fatalf("Request with no reply = %v, want ErrTimeout (DeadlineExceeded) waiting for the reply", err)
	}
	if took < timeout || took > timeout+5*time.Second {
		t.Fatalf("timed out after %v, want about %v", took, timeout)
	}
	if d := time.Unix(0, <-deadlines).Sub(start); d < timeout || d > timeout+time.Second {
		t.Fatalf("envelope deadline = start + %v, want start + %v", d, timeout)
	}
	// Reuse: many requests after the timeout, none timing out early.
	for i := range 20 {
		got, err := p.Request(context.Background(), "t", []byte("ok"))
		if err != nil || string(got) != "ok" {
			t.Fatalf("Request %d after a timeout = %q, %v", i, got, err)
		}
		<-deadlines
	}
	if s := p.Stats(); s.Timeouts != 1 {
		t.Fatalf("Timeouts = %d, want 1", s.Timeouts)
	}

	// The only slot held: the next request, with no ctx deadline, times out
	// waiting for the slot.
	release := holdOnlySlot(t, p)
	_, err = p.Request(context.Background(), "t", []byte("second"))
	if !errors.Is(err, bus.ErrTimeout) || !strings.Contains(err.Error(), "in-flight slot") {
		t.Fatalf("Request at MaxInFlight 1 = %v, want a timeout waiting for a slot", err)
	}
	close(release)
}

func TestLateReplyIsDroppedAndCounted(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{})
	hold := make(chan *codec.Envelope, 1)
	stop := replier(t, m, c, "slow", func(env *codec.Envelope) *codec.Envelope {
		hold <- env
		return nil
	})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := p.Request(ctx, "slow", []byte("x"))
	cancel()
	if !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("Request = %v, want ErrTimeout", err)
	}
	env := <-hold
	b := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindReply, ID: env.ID, Payload: []byte("late")})
	if err := redisx.AddBatch(context.Background(), c.Redis(), []redisx.Add{{Key: env.ReplyTo, NoMkStream: true, Data: b}}, nil, nil)[0].Err; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Late != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("late reply not counted: %+v", p.Stats())
		}
		time.Sleep(time.Millisecond) // polling a counter with a deadline
	}
}

func TestPublishAndBatch(t *testing.T) {
	m, c := redistest.Mini(t)
	// No backpressure: its XLEN on the string key below makes miniredis
	// answer twice (REDIS-NOTES), and rueidis then panics.
	p := newProducer(t, c, producer.Config{StreamMaxLen: 1000, Backpressure: producer.Backpressure{MaxBacklog: -1}})
	ctx := context.Background()
	id, err := p.Publish(ctx, "ev", []byte("one"))
	if err != nil || !strings.Contains(id, "-") {
		t.Fatalf("Publish = %q, %v", id, err)
	}
	ids, err := p.PublishBatch(ctx, "ev", [][]byte{[]byte("a"), []byte("b"), []byte("c")})
	if err != nil || len(ids) != 3 || ids[2] == "" {
		t.Fatalf("PublishBatch = %v, %v", ids, err)
	}
	entries, err := m.Stream("myc:{ev}")
	if err != nil || len(entries) != 4 {
		t.Fatalf("stream has %d entries, %v; want 4", len(entries), err)
	}
	var env codec.Envelope
	if err := codec.DecodeEnvelope(entries[3].Values[1], &env); err != nil || string(env.Payload) != "c" || env.Kind != codec.KindEvent {
		t.Fatalf("last entry = %+v, %v", env, err)
	}
	if _, err := p.Publish(ctx, "bad topic", nil); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("Publish(bad topic) = %v, want ErrInvalidConfig", err)
	}
	// A write Redis refuses comes back per entry.
	m.Set("myc:{str}", "not a stream")
	ids, err = p.PublishBatch(ctx, "str", [][]byte{[]byte("a")})
	var pe *producer.PublishError
	if !errors.As(err, &pe) || pe.Index != 0 || ids[0] != "" {
		t.Fatalf("PublishBatch onto a string key = %v, %v; want a PublishError for entry 0", ids, err)
	}
	if _, err := p.Publish(ctx, "str", []byte("b")); err == nil {
		t.Fatal("Publish onto a string key succeeded")
	}
	if s := p.Stats(); s.Published != 4 || s.WriteErrors != 2 {
		t.Fatalf("Stats = %+v, want 4 published and 2 write errors", s)
	}
}

func TestStreamMaxAgeTrimsOnWrite(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{StreamMaxAge: time.Hour})
	ctx := context.Background()
	m.SetTime(time.Now().Add(-2 * time.Hour)) // entries written two hours ago
	for range 3 {
		if _, err := m.XAdd("myc:{aged}", "*", []string{"m", "old"}); err != nil {
			t.Fatal(err)
		}
	}
	m.SetTime(time.Now())
	if _, err := p.Publish(ctx, "aged", []byte("new")); err != nil {
		t.Fatal(err)
	}
	entries, _ := m.Stream("myc:{aged}")
	if len(entries) != 1 {
		t.Fatalf("stream has %d entries after a write with StreamMaxAge 1h, want only the new one", len(entries))
	}
}

// TestHeaderLimits: too many headers, or too many header bytes, fail at
// once with ErrPayloadTooLarge and nothing is written.
func TestHeaderLimits(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{})
	many := map[string]string{}
	for i := range producer.MaxHeaders + 1 {
		many["h"+strconv.Itoa(i)] = "v"
	}
	big := map[string]string{"x": strings.Repeat("v", producer.MaxHeaderBytes)}
	ctx := context.Background()
	for name, h := range map[string]map[string]string{"1025 headers": many, "a 64 KiB value": big} {
		opt := producer.WithHeaders(h)
		if _, err := p.Publish(ctx, "t", []byte("x"), opt); !errors.Is(err, bus.ErrPayloadTooLarge) {
			t.Errorf("Publish with %s = %v, want ErrPayloadTooLarge", name, err)
		}
		if _, err := p.PublishBatch(ctx, "t", [][]byte{[]byte("x")}, opt); !errors.Is(err, bus.ErrPayloadTooLarge) {
			t.Errorf("PublishBatch with %s = %v, want ErrPayloadTooLarge", name, err)
		}
		if _, err := p.Request(ctx, "t", []byte("x"), opt); !errors.Is(err, bus.ErrPayloadTooLarge) {
			t.Errorf("Request with %s = %v, want ErrPayloadTooLarge", name, err)
		}
		if _, err := p.RequestBatch(ctx, "t", [][]byte{[]byte("x")}, opt); !errors.Is(err, bus.ErrPayloadTooLarge) {
			t.Errorf("RequestBatch with %s = %v, want ErrPayloadTooLarge", name, err)
		}
	}
	if m.Exists("myc:{t}") {
		t.Fatal("an entry was written")
	}
}

// TestDelayedSetFull: a delayed publish into a delayed set that holds
// StreamMaxLen entries fails with ErrDelayedFull (it was reported as
// ErrPayloadTooLarge, which it is not) and writes nothing.
func TestDelayedSetFull(t *testing.T) {
	m, c := redistest.Mini(t)
	p := newProducer(t, c, producer.Config{StreamMaxLen: 2})
	ctx := context.Background()
	for i := range 2 {
		if _, err := p.Publish(ctx, "later", []byte{byte(i)}, producer.After(time.Hour)); err != nil {
			t.Fatalf("delayed publish %d: %v", i, err)
		}
	}
	_, err := p.Publish(ctx, "later", []byte("third"), producer.After(time.Hour))
	if !errors.Is(err, bus.ErrDelayedFull) || errors.Is(err, bus.ErrPayloadTooLarge) {
		t.Fatalf("third delayed publish = %v, want ErrDelayedFull (and not ErrPayloadTooLarge)", err)
	}
	if n, _ := m.ZMembers("myc:{later}:delayed"); len(n) != 2 {
		t.Errorf("delayed set holds %d entries, want 2", len(n))
	}
}
