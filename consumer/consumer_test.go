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

	"go.uber.org/goleak"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, c *bus.Client, cfg consumer.Config, h consumer.Handler, opts ...consumer.Option) *consumer.Consumer {
	t.Helper()
	co, err := consumer.New(c, cfg, h, opts...)
	if err != nil {
		t.Fatalf("consumer.New = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	eventually(t, "group ready", func() bool { return co.Ready(context.Background()) == nil })
	return co
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling with a deadline
	}
}

func add(t *testing.T, c *bus.Client, key string, env *codec.Envelope) {
	t.Helper()
	res := redisx.AddBatch(context.Background(), c.Redis(), []redisx.Add{{Key: key, Data: codec.AppendEnvelope(nil, env)}}, nil, nil)
	if err := res[0].Err; err != nil {
		t.Fatal(err)
	}
}

func TestNewValidates(t *testing.T) {
	_, c := redistest.Mini(t)
	h := consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) { return nil, nil })
	for _, cfg := range []consumer.Config{{}, {Topic: "a{b}"}, {Topic: "t", Concurrency: -1}, {Topic: "t", StartID: "5"}, {Topic: "t", Block: time.Microsecond}, {Topic: "t", Group: "g g"},
		{Topic: "t", Concurrency: consumer.MaxConcurrency + 1}, {Topic: "t", Prefetch: -1}, {Topic: "t", Prefetch: consumer.MaxConcurrency + 1}, {Topic: "t", MaxEntrySize: consumer.MaxEntrySizeCap + 1}, {Topic: "t", Reclaim: consumer.ReclaimConfig{Batch: consumer.MaxReclaimBatch + 1}}} {
		if _, err := consumer.New(c, cfg, h); !errors.Is(err, bus.ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := consumer.New(c, consumer.Config{Topic: "t"}, nil); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Errorf("New(nil handler) = %v, want ErrInvalidConfig", err)
	}
	co, err := consumer.New(c, consumer.Config{Topic: "t"}, h)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := co.Config(); cfg.Group != consumer.DefaultGroup || cfg.Concurrency != consumer.DefaultConcurrency || cfg.Name == "" || cfg.StartID != "0" {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func TestMalformedEntriesAreDeadLettered(t *testing.T) {
	m, c := redistest.Mini(t)
	var handled atomic.Int64
	co := start(t, c, consumer.Config{Topic: "t", MaxEntrySize: 1 << 10}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		handled.Add(1)
		return nil, nil
	}))
	for _, fv := range [][]string{
		{"m", "garbage"},
		{"other", "field", "x", "y"},
		{"m", ""},
		{"m", strings.Repeat("z", 2<<10)},
		{"m", string(codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindReply}))},
	} {
		if _, err := m.XAdd("myc:{t}", "*", fv); err != nil {
			t.Fatal(err)
		}
	}
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("good")})
	eventually(t, "5 dead letters and 1 handled", func() bool { return co.Stats().DeadLettered == 5 && handled.Load() == 1 })
	dlq, err := m.Stream("myc:{t}:dlq")
	if err != nil || len(dlq) != 5 {
		t.Fatalf("dead-letter stream has %d entries, %v", len(dlq), err)
	}
	reasons := map[string]string{}
	for _, e := range dlq {
		f := map[string]string{}
		for i := 0; i+1 < len(e.Values); i += 2 {
			f[e.Values[i]] = e.Values[i+1]
		}
		if f[redisx.DLQReason] != "malformed" || f[redisx.DLQTopic] != "t" || f[redisx.DLQOriginalID] == "" || f[redisx.DLQConsumer] != co.Name() {
			t.Errorf("dead letter %v lacks its context", f)
		}
		reasons[f[redisx.DLQOriginalID]] = f[redisx.DLQError]
		if f["f.other"] == "field" && f["f.x"] != "y" {
			t.Errorf("raw fields not kept: %v", f)
		}
		if strings.Contains(f[redisx.DLQError], "exceeds MaxEntrySize") {
			// Oversized: its size and first bytes, not its data.
			if _, hasData := f[redisx.Field]; hasData || f[redisx.DLQSize] != "2048" || len(f[redisx.DLQPrefix]) != redisx.OversizedPrefix {
				t.Errorf("oversized dead letter keeps %d bytes of data, size %q, prefix of %d bytes; want size 2048, a 1 KiB prefix, no data",
					len(f[redisx.Field]), f[redisx.DLQSize], len(f[redisx.DLQPrefix]))
			}
		}
	}
	all := strings.Join(func() []string {
		var s []string
		for _, r := range reasons {
			s = append(s, r)
		}
		return s
	}(), " | ")
	for _, want := range []string{"not a msgpack array", `no "m" field`, "exceeds MaxEntrySize", "kind reply"} {
		if !strings.Contains(all, want) {
			t.Errorf("dead-letter reasons %q lack %q", all, want)
		}
	}
	// Dead letters and the good event are acknowledged: nothing stays pending.
	eventually(t, "nothing pending", func() bool {
		p, _, err := redisx.GroupDetail(context.Background(), c.Redis(), "myc:{t}", "workers")
		if err != nil {
			t.Fatal(err)
		}
		return p.Count == 0
	})
}

func TestFailedEventIsDeadLetteredWithItsEnvelope(t *testing.T) {
	m, c := redistest.Mini(t)
	co := start(t, c, consumer.Config{Topic: "t"}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		return nil, fmt.Errorf("downstream said no: %w", bus.ErrSkipRetry)
	}))
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("work"), Headers: map[string]string{"k": "v"}})
	eventually(t, "dead letter", func() bool { return co.Stats().DeadLettered == 1 })
	dlq, _ := m.Stream("myc:{t}:dlq")
	f := map[string]string{}
	for i := 0; i+1 < len(dlq[0].Values); i += 2 {
		f[dlq[0].Values[i]] = dlq[0].Values[i+1]
	}
	var env codec.Envelope
	if err := codec.DecodeEnvelope(f[redisx.Field], &env); err != nil || string(env.Payload) != "work" || env.Headers["k"] != "v" {
		t.Fatalf("dead letter envelope = %+v, %v", env, err)
	}
	if f[redisx.DLQReason] != "handler_error" || !strings.Contains(f[redisx.DLQError], "downstream said no") {
		t.Fatalf("dead letter = %v", f)
	}

	// Replayed (a script on miniredis too, as under make run), it fails
	// again and comes back as a new dead letter carrying its origin.
	firstID := dlq[0].ID // dlq shares miniredis's storage: read it before the replay
	insp := inspect.New(c)
	if n, err := insp.ReplayDeadLetters(context.Background(), "t"); n != 1 || err != nil {
		t.Fatalf("ReplayDeadLetters = %d, %v", n, err)
	}
	eventually(t, "the replayed event dead-lettered again", func() bool { return co.Stats().DeadLettered == 2 })
	letters, err := insp.DeadLetters(context.Background(), "t", 10)
	if err != nil || len(letters) != 1 || letters[0].Envelope == nil || letters[0].Envelope.Headers[inspect.ReplayedFromHeader] != firstID {
		t.Fatalf("dead letters after the replay = %+v, %v; want one, replayed from %s", letters, err, firstID)
	}
}

func TestFailingEventIsRetriedThenDeadLettered(t *testing.T) {
	m, c := redistest.Mini(t)
	var attempts []int
	var mu sync.Mutex
	co := start(t, c, consumer.Config{Topic: "t", Reclaim: consumer.ReclaimConfig{ClaimIdle: 300 * time.Millisecond}, Retry: consumer.RetryConfig{MaxDeliveries: 3}},
		consumer.HandlerFunc(func(_ context.Context, msg *consumer.Message) ([]byte, error) {
			mu.Lock()
			attempts = append(attempts, msg.Attempt)
			mu.Unlock()
			return nil, errors.New("flaky downstream")
		}))
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("work")})
	eventually(t, "dead letter after 3 deliveries", func() bool { return co.Stats().DeadLettered == 1 })
	mu.Lock()
	got := fmt.Sprint(attempts)
	mu.Unlock()
	if got != "[1 2 3]" {
		t.Fatalf("handler saw attempts %s, want [1 2 3]", got)
	}
	dlq, _ := m.Stream("myc:{t}:dlq")
	f := map[string]string{}
	for i := 0; i+1 < len(dlq[0].Values); i += 2 {
		f[dlq[0].Values[i]] = dlq[0].Values[i+1]
	}
	if f[redisx.DLQReason] != "max_deliveries" || f[redisx.DLQAttempts] != "3" || !strings.Contains(f[redisx.DLQError], "flaky downstream") {
		t.Fatalf("dead letter = %v", f)
	}
	eventually(t, "the dead-lettered entry released", func() bool { return co.Stats().InFlight == 0 })
	if s := co.Stats(); s.Retried != 2 || s.Reclaimed != 2 {
		t.Fatalf("stats = %+v, want 2 retries via 2 reclaims", s)
	}
}

func TestRequestReplyAndExpiry(t *testing.T) {
	m, c := redistest.Mini(t)
	var calls atomic.Int64
	co := start(t, c, consumer.Config{Topic: "t"}, consumer.HandlerFunc(func(ctx context.Context, msg *consumer.Message) ([]byte, error) {
		calls.Add(1)
		if dl, ok := ctx.Deadline(); !ok || !dl.Equal(msg.Deadline) {
			return nil, errors.New("handler ctx lacks the caller's deadline")
		}
		if string(msg.Payload) == "panic" {
			panic("kaboom")
		}
		return append([]byte("re:"), msg.Payload...), nil
	}))
	ctx := context.Background()
	// The reply stream must exist: consumers never create one (NOMKSTREAM).
	if _, err := m.XAdd("myc:{r.p}", "*", []string{"m", "x"}); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Minute).UnixNano()
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: "1", ReplyTo: "myc:{r.p}", Deadline: future, Payload: []byte("a")})
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: "2", ReplyTo: "myc:{r.p}", Deadline: future, Payload: []byte("panic")})
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: "3", ReplyTo: "myc:{r.p}", Deadline: time.Now().Add(-time.Second).UnixNano()})
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: "4", ReplyTo: "myc:{r.gone}", Deadline: future, Payload: []byte("b")})
	eventually(t, "all four acknowledged", func() bool { return co.Stats().Acked == 4 })
	s := co.Stats()
	if s.Expired != 1 || s.Replied != 2 || s.ReplyDropped != 1 || s.Panics != 1 || calls.Load() != 3 {
		t.Fatalf("stats = %+v, calls %d", s, calls.Load())
	}
	if m.Exists("myc:{r.gone}") {
		t.Fatal("a reply created a reply stream whose producer is gone")
	}
	replies, _ := redisx.Read(ctx, c.Redis(), "myc:{r.p}", "0-0", 10, time.Millisecond)
	got := map[string]codec.Envelope{}
	for _, e := range replies[1:] {
		var env codec.Envelope
		if err := codec.DecodeEnvelope(e.Data, &env); err != nil {
			t.Fatal(err)
		}
		got[env.ID] = env
	}
	if string(got["1"].Payload) != "re:a" || got["2"].ErrCode != string(bus.CodePanic) || !strings.Contains(got["2"].ErrMsg, "kaboom") {
		t.Fatalf("replies = %+v", got)
	}
}

func TestRecreatesGroupAfterStreamLoss(t *testing.T) {
	m, c := redistest.Mini(t)
	var handled atomic.Int64
	co := start(t, c, consumer.Config{Topic: "t", Block: 20 * time.Millisecond}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		handled.Add(1)
		return nil, nil
	}))
	m.FlushAll()
	eventually(t, "group recreated", func() bool { return co.Stats().GroupsCreated >= 2 })
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("after")})
	eventually(t, "event after flush handled", func() bool { return handled.Load() == 1 })
}

func TestRunTwiceAndReadiness(t *testing.T) {
	_, c := redistest.Mini(t)
	co := start(t, c, consumer.Config{Topic: "t"}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) { return nil, nil }))
	if err := co.Run(context.Background()); !errors.Is(err, bus.ErrRunning) {
		t.Fatalf("second Run = %v, want bus.ErrRunning", err)
	}
	select {
	case <-co.Serving():
	default:
		t.Fatal("Serving not closed while the consumer runs and is ready")
	}
	var logs redistest.SyncBuffer
	other, _ := consumer.New(c, consumer.Config{Topic: "never"}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) { return nil, nil }),
		consumer.WithLogger(zerolog.New(&logs)))
	if err := other.Ready(context.Background()); !errors.Is(err, bus.ErrNotServing) {
		t.Fatalf("Ready before Run = %v, want bus.ErrNotServing", err)
	}
	// Run ending (here at once: its ctx is done) closes Serving too, so
	// nobody waits on it forever.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := other.Run(ctx); err != nil {
		t.Fatal(err)
	}
	<-other.Serving()
	// It never joined, so it has nothing to leave (and says nothing of it).
	if strings.Contains(logs.String(), "leave") || strings.Contains(logs.String(), "left") {
		t.Fatalf("a consumer that never joined tried to leave:\n%s", logs.String())
	}
}

func TestChainOrder(t *testing.T) {
	var order []string
	mw := func(name string) consumer.Middleware {
		return func(next consumer.Handler) consumer.Handler {
			return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
				order = append(order, name)
				return next.Handle(ctx, m)
			})
		}
	}
	h := consumer.Chain(consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		order = append(order, "handler")
		return nil, nil
	}), mw("outer"), mw("inner"))
	_, _ = h.Handle(context.Background(), &consumer.Message{})
	if strings.Join(order, ",") != "outer,inner,handler" {
		t.Fatalf("order = %v", order)
	}
}

// The handler's ctx for a request ends at the caller's deadline
// (DeadlineExceeded) or, for a longer deadline, when the shutdown grace
// period ends (Canceled); either way the handler sees Done close.
func TestRequestHandlerCtxEnds(t *testing.T) {
	m, c := redistest.Mini(t)
	if _, err := m.XAdd("myc:{r.p}", "*", []string{"m", "x"}); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 2)
	started := make(chan struct{}, 2)
	co, err := consumer.New(c, consumer.Config{Topic: "t", Concurrency: 2, ShutdownTimeout: 50 * time.Millisecond},
		consumer.HandlerFunc(func(ctx context.Context, msg *consumer.Message) ([]byte, error) {
			started <- struct{}{}
			<-ctx.Done()
			ended <- ctx.Err()
			return nil, ctx.Err()
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	eventually(t, "group ready", func() bool { return co.Ready(context.Background()) == nil })

	soon := time.Now().Add(100 * time.Millisecond)
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: "1", ReplyTo: "myc:{r.p}", Deadline: soon.UnixNano(), Payload: []byte("a")})
	select {
	case err := <-ended:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("handler ctx ended with %v, want DeadlineExceeded", err)
		}
		if time.Now().Before(soon) {
			t.Fatal("handler ctx ended before the caller's deadline")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler ctx did not end at the caller's deadline")
	}

	<-started
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: "2", ReplyTo: "myc:{r.p}", Deadline: time.Now().Add(time.Hour).UnixNano(), Payload: []byte("b")})
	<-started
	cancel() // the handler outlives the 50 ms grace period: its ctx is cancelled
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx ended with %v at shutdown, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler ctx not cancelled when the shutdown grace period ended")
	}
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

type runKey struct{}

// Values of the ctx given to Run reach every handler, through the plain
// handler ctx (events) and the lazily armed deadline ctx (requests).
func TestHandlerCtxCarriesRunValues(t *testing.T) {
	m, c := redistest.Mini(t)
	if _, err := m.XAdd("myc:{r.p}", "*", []string{"m", "x"}); err != nil {
		t.Fatal(err)
	}
	seen := make(chan any, 2)
	co, err := consumer.New(c, consumer.Config{Topic: "t"}, consumer.HandlerFunc(func(ctx context.Context, msg *consumer.Message) ([]byte, error) {
		seen <- ctx.Value(runKey{})
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), runKey{}, "from Run"))
	done := make(chan error, 1)
	go func() { done <- co.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	eventually(t, "group ready", func() bool { return co.Ready(context.Background()) == nil })
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("e")})
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: "1", ReplyTo: "myc:{r.p}", Deadline: time.Now().Add(time.Minute).UnixNano(), Payload: []byte("r")})
	for range 2 {
		select {
		case v := <-seen:
			if v != "from Run" {
				t.Fatalf("handler ctx value = %v, want the one given to Run", v)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("handler not called")
		}
	}
}

// TestWorkerTellsItsStory: failed handlers, dead letters and malformed
// entries are logged at warn with topic, entry, attempt and reason.
func TestWorkerTellsItsStory(t *testing.T) {
	m, c := redistest.Mini(t)
	var logs redistest.SyncBuffer
	co := start(t, c, consumer.Config{Topic: "t", Reclaim: consumer.ReclaimConfig{ClaimIdle: 300 * time.Millisecond}, Retry: consumer.RetryConfig{MaxDeliveries: 2}},
		consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
			return nil, errors.New("backend refused the connection")
		}), consumer.WithLogger(zerolog.New(&logs).Level(zerolog.InfoLevel)))
	add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("work")})
	if _, err := m.XAdd("myc:{t}", "*", []string{"m", "garbage"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both dead-lettered", func() bool { return co.Stats().DeadLettered == 2 })
	out := logs.String()
	for _, want := range []string{
		`"level":"warn","topic":"t"`,
		`"attempt":1,"reason":"retry","request":false,"error":"backend refused the connection","message":"handler failed: the event is delivered again after ClaimIdle"`,
		`"attempt":2,"reason":"max_deliveries"`, `"message":"handler failed on the last delivery: dead-lettered"`,
		`"reason":"malformed","error":"mycelium: malformed envelope`, `"message":"malformed entry: dead-lettered"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %s:\n%s", want, out)
		}
	}
}
