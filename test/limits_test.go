package test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// fleet runs n consumers of topic (each slots handlers) calling h, as n
// workers of a fleet would.
func fleet(t *testing.T, c *bus.Client, topic string, n, slots int, h consumer.Handler, tweak func(*consumer.Config)) []*consumer.Consumer {
	t.Helper()
	var cs []*consumer.Consumer
	for i := range n {
		cfg := consumer.Config{Topic: topic, Group: "g", Name: fmt.Sprintf("w%d", i), Concurrency: slots}
		if tweak != nil {
			tweak(&cfg)
		}
		cs = append(cs, runConsumer(t, c, cfg, h))
	}
	return cs
}

// starts records when handlers start and how many run at once.
type starts struct {
	mu      sync.Mutex
	at      []time.Time
	running atomic.Int64
	most    atomic.Int64
}

func (s *starts) begin() {
	n := s.running.Add(1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	s.mu.Lock()
	s.at = append(s.at, time.Now())
	s.mu.Unlock()
}

func (s *starts) end() { s.running.Add(-1) }

func (s *starts) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.at) }

// busiest returns the most starts within any window of length w.
func (s *starts) busiest(w time.Duration) int {
	s.mu.Lock()
	at := slices.Clone(s.at)
	s.mu.Unlock()
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	most, j := 0, 0
	for i := range at {
		for at[i].Sub(at[j]) >= w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func publishN(t *testing.T, p *producer.Producer, topic string, n int, opts ...producer.PublishOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		if _, err := p.Publish(ctx, topic, []byte(strconv.Itoa(i)), opts...); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLimitConcurrencyAcrossWorkers: three workers of 32 slots each never
// run more than the topic's limit of 8 handlers at once, and give every
// lease back when done.
func TestLimitConcurrencyAcrossWorkers(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic, limit, total = "lim-cc", 8, 600
	if err := inspect.New(redistest.RoleClient(t, c, "operator")).SetLimits(ctx, topic, inspect.Limits{Concurrency: limit}); err != nil {
		t.Fatal(err)
	}
	var s starts
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		s.begin()
		defer s.end()
		time.Sleep(5 * time.Millisecond) // the work
		return nil, nil
	})
	cs := fleet(t, c, topic, 3, 32, h, nil)
	publishN(t, newProducer(t, c, producer.Config{}), topic, total)
	waitFor(t, 60*time.Second, "every event handled", func() bool { return s.count() >= total })
	if most := s.most.Load(); most > limit || most < 2 {
		t.Fatalf("at most %d handlers ran at once; want 2 to %d", most, limit)
	}
	var granted uint64
	for _, co := range cs {
		granted += co.Stats().PermitsGranted
	}
	if granted < total {
		t.Fatalf("permits granted %d for %d events", granted, total)
	}
	// Idle workers hold leases only in their waiting reads: never more
	// than the limit.
	if n := leasesHeld(t, c, topic); n > limit {
		t.Fatalf("%d leases held after the run; the limit is %d", n, limit)
	}
	t.Logf("most at once %d (limit %d); permits granted %d", s.most.Load(), limit, granted)
}

// TestLimitRateAcrossWorkers: three workers hold a topic to 100 calls a
// second with a burst of 5: no one-second window sees more than 106
// starts, and 300 events take about 3 s.
func TestLimitRateAcrossWorkers(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic, total = "lim-rate", 300
	if err := inspect.New(redistest.RoleClient(t, c, "operator")).SetLimits(ctx, topic, inspect.Limits{Rate: 100, RateInterval: time.Second, Burst: 5}); err != nil {
		t.Fatal(err)
	}
	var s starts
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		s.begin()
		s.end()
		return nil, nil
	})
	fleet(t, c, topic, 3, 16, h, nil)
	start := time.Now()
	publishN(t, newProducer(t, c, producer.Config{}), topic, total)
	waitFor(t, 60*time.Second, "every event handled", func() bool { return s.count() >= total })
	took := time.Since(start)
	busiest := s.busiest(time.Second)
	t.Logf("%d events in %v; busiest second %d starts", total, took, busiest)
	if busiest > 100+5+1 {
		t.Fatalf("%d starts within one second; the limit allows 105", busiest)
	}
	if took < 2800*time.Millisecond {
		t.Fatalf("%d events took %v; 100/s with a burst of 5 needs at least 2.95 s", total, took)
	}
}

// TestLimitTokensAcrossWorkers: a budget of 2,000 tokens a second, each
// message estimated at 50 by its caller and reported at 100 by the
// handler: 60 messages (6,000 tokens) take about 3 s, not the 1.5 s the
// estimates alone would allow.
func TestLimitTokensAcrossWorkers(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic, total = "lim-tok", 60
	if err := inspect.New(redistest.RoleClient(t, c, "operator")).SetLimits(ctx, topic,
		inspect.Limits{Tokens: 2000, TokensInterval: time.Second, TokensBurst: 200}); err != nil {
		t.Fatal(err)
	}
	var s starts
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		if m.Cost() != 50 {
			return nil, fmt.Errorf("estimate %d, want 50", m.Cost())
		}
		s.begin()
		s.end()
		m.ReportCost(100)
		return nil, nil
	})
	fleet(t, c, topic, 3, 16, h, nil)
	start := time.Now()
	publishN(t, newProducer(t, c, producer.Config{}), topic, total, producer.Cost(50))
	waitFor(t, 60*time.Second, "every event handled", func() bool { return s.count() >= total })
	took := time.Since(start)
	t.Logf("%d messages of 100 tokens in %v (budget 2,000/s, burst 200)", total, took)
	if took < 2500*time.Millisecond {
		t.Fatalf("6,000 tokens took %v; a budget of 2,000/s needs about 2.9 s", took)
	}
}

// TestPauseTopicStopsTheFleet: one handler's PauseTopic (a provider's 429)
// stops every worker of the topic until the pause ends; the paused message
// is retried after it.
func TestPauseTopicStopsTheFleet(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic, pause = "lim-pause", 3 * time.Second
	var s starts
	var paused atomic.Int64 // unix nanos when the handler asked for the pause
	var retried atomic.Bool
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		if string(m.Payload) == "429" {
			if m.Attempt == 1 {
				paused.Store(time.Now().UnixNano())
				return nil, consumer.PauseTopic(errors.New("429 Too Many Requests"), pause)
			}
			retried.Store(true)
			return nil, nil
		}
		s.begin()
		s.end()
		return nil, nil
	})
	// A short read block: an idle worker notices the pause within a second
	// of its next read.
	cs := fleet(t, c, topic, 2, 8, h, func(cfg *consumer.Config) {
		cfg.Block = 100 * time.Millisecond
		cfg.Retry.Backoff = 10 * time.Millisecond
	})
	p := newProducer(t, c, producer.Config{})
	publishN(t, p, topic, 1) // warm: both workers have read once
	waitFor(t, 10*time.Second, "the first event", func() bool { return s.count() == 1 })
	if _, err := p.Publish(ctx, topic, []byte("429")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the pause", func() bool { return cs[0].Stats().Pauses+cs[1].Stats().Pauses > 0 })
	publishN(t, p, topic, 20)
	waitFor(t, 30*time.Second, "the events after the pause", func() bool { return s.count() == 21 })
	waitFor(t, 30*time.Second, "the paused message retried", retried.Load)
	s.mu.Lock()
	at := slices.Clone(s.at[1:])
	s.mu.Unlock()
	// A worker may have been inside a read when the pause began: it sees
	// the pause at its next one, within a second.
	earliest := time.Unix(0, paused.Load()).Add(pause - 1100*time.Millisecond)
	for _, a := range at {
		if a.Before(earliest) {
			t.Fatalf("an event started %v after the pause began; the pause lasts %v", a.Sub(time.Unix(0, paused.Load())), pause)
		}
	}
	var waits uint64
	for _, co := range cs {
		waits += co.Stats().PermitWaits
	}
	if waits == 0 {
		t.Fatal("no worker waited for permits during the pause")
	}
}

// leasesHeld returns the concurrency leases topic's workers hold.
func leasesHeld(t *testing.T, c *bus.Client, topic string) int64 {
	t.Helper()
	vals, err := c.Redis().Do(context.Background(), c.Redis().B().Hvals().Key(bus.Keys{}.LimitLeases(topic)).Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, v := range vals {
		k, _ := strconv.ParseInt(v, 10, 64)
		n += k
	}
	return n
}

// TestBusWorkerLimitLeasesOfAKilledWorkerReturn: a bus-worker SIGKILLed while its
// handlers hold the topic's 4 concurrency leases: another worker can start
// handlers once those leases lapse, within ClaimIdle of the kill.
func TestBusWorkerLimitLeasesOfAKilledWorkerReturn(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic, claimIdle = "lim-kill", 2 * time.Second
	if err := inspect.New(redistest.RoleClient(t, c, "operator")).SetLimits(ctx, topic, inspect.Limits{Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	w := redistest.StartWorker(t, "--redis", srv.URL, "--topic", topic, "--group", "g", "--concurrency", "8",
		"--handler", "sleep:60s", "--claim-idle", claimIdle.String())
	publishN(t, newProducer(t, c, producer.Config{}), topic, 8)
	waitFor(t, 10*time.Second, "the worker holding 4 leases", func() bool { return leasesHeld(t, c, topic) == 4 })
	w.Kill()
	killed := time.Now()
	var first atomic.Int64
	var s starts
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		first.CompareAndSwap(0, time.Now().UnixNano())
		s.begin()
		defer s.end()
		return nil, nil
	})
	sv := runConsumer(t, c, consumer.Config{Topic: topic, Group: "g", Name: "survivor", Concurrency: 8,
		Reclaim: consumer.ReclaimConfig{ClaimIdle: claimIdle}}, h)
	for deadline := time.Now().Add(30 * time.Second); s.count() < 8; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "consumer.(*reader)") || strings.Contains(g, "consumer.(*reclaimer)") {
					t.Log(g)
				}
			}
			t.Fatalf("the survivor handled %d of 8 events within 30s; its stats %+v; leases held %d", s.count(), sv.Stats(), leasesHeld(t, c, topic))
		}
		<-time.After(10 * time.Millisecond) // polling a counter
	}
	after := time.Unix(0, first.Load()).Sub(killed)
	t.Logf("first handler %v after the kill (ClaimIdle %v); most at once %d", after, claimIdle, s.most.Load())
	// The killed worker renewed its leases at most ClaimIdle/3 before it
	// died: they lapse between 2/3 ClaimIdle and ClaimIdle after the kill.
	if after < claimIdle/2 || after > claimIdle+1500*time.Millisecond {
		t.Fatalf("the survivor started %v after the kill; want between %v and ClaimIdle (%v) plus polling", after, claimIdle/2, claimIdle)
	}
	if s.most.Load() > 4 {
		t.Fatalf("%d handlers at once; the limit is 4", s.most.Load())
	}
}

// TestForgedPauseNoticeIsIgnored: a pause notice on the control stream
// (which producers may write) is only a hint; the pause is the one Redis
// keeps, so a forged notice pausing the topic for an hour stops nothing.
func TestForgedPauseNoticeIsIgnored(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic = "lim-forged"
	var s starts
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		s.begin()
		s.end()
		return nil, nil
	})
	fleet(t, c, topic, 1, 8, h, func(cfg *consumer.Config) { cfg.Block = 100 * time.Millisecond })
	p := newProducer(t, c, producer.Config{})
	publishN(t, p, topic, 1)
	waitFor(t, 10*time.Second, "the first event", func() bool { return s.count() == 1 })
	until := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	rc := redistest.RoleClient(t, c, "producer").Redis() // a producer writes the control stream
	if err := rc.Do(ctx, rc.B().Xadd().Key(bus.Keys{}.Control(topic)).Id("*").FieldValue().FieldValue("op", "pause").FieldValue("until", until).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	publishN(t, p, topic, 10)
	waitFor(t, 10*time.Second, "the events after the forged notice", func() bool { return s.count() == 11 })
}

// TestLimitHoldsForDelayedRetries: retries a handler asked for
// (RetryAfter) start handlers too, so they take permits: a worker of 16
// slots never runs more than the topic's limit of 2, first deliveries and
// retries together.
func TestLimitHoldsForDelayedRetries(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic, limit, total = "lim-retry", 2, 40
	if err := inspect.New(redistest.RoleClient(t, c, "operator")).SetLimits(ctx, topic, inspect.Limits{Concurrency: limit}); err != nil {
		t.Fatal(err)
	}
	var s starts
	var done atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		s.begin()
		defer s.end()
		time.Sleep(20 * time.Millisecond) // the work
		if m.Attempt == 1 {
			return nil, consumer.RetryAfter(errors.New("busy"), 10*time.Millisecond)
		}
		done.Add(1)
		return nil, nil
	})
	ws := fleet(t, c, topic, 1, 16, h, func(cfg *consumer.Config) { cfg.Retry.Backoff = 10 * time.Millisecond })
	publishN(t, newProducer(t, c, producer.Config{}), topic, total)
	for deadline := time.Now().Add(60 * time.Second); done.Load() < total; {
		if time.Now().After(deadline) {
			rd := c.Redis()
			retry, _ := rd.Do(ctx, rd.B().Zrange().Key(bus.Keys{}.Retry(topic)).Min("0").Max("-1").Withscores().Build()).ToAny()
			pending, _ := rd.Do(ctx, rd.B().Xpending().Key(bus.Keys{}.Topic(topic)).Group("g").Build()).ToAny()
			meta, _ := rd.Do(ctx, rd.B().Hgetall().Key(bus.Keys{}.Meta(topic)).Build()).ToAny()
			t.Fatalf("%d of %d events handled within 60s; stats %+v; leases held %d; retry set %v; pending %v; meta %v",
				done.Load(), total, ws[0].Stats(), leasesHeld(t, c, topic), retry, pending, meta)
		}
		<-time.After(10 * time.Millisecond) // polling a counter
	}
	if most := s.most.Load(); most > limit {
		t.Fatalf("%d handlers at once (first deliveries and retries); the limit is %d", most, limit)
	}
}

// TestLimitLeasesGoBackAtStop: a fleet that stops gives every concurrency
// lease back at once (the hash of leases is empty), including those a
// permit call cut off by the stop took without the worker hearing of them:
// none waits for ClaimIdle.
func TestLimitLeasesGoBackAtStop(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic = "lim-stop"
	if err := inspect.New(redistest.RoleClient(t, c, "operator")).SetLimits(ctx, topic, inspect.Limits{Concurrency: 4}); err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	t.Run("fleet", func(t *testing.T) {
		fleet(t, c, topic, 3, 8, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
			time.Sleep(2 * time.Millisecond) // the work
			handled.Add(1)
			return nil, nil
		}), nil)
		publishN(t, newProducer(t, c, producer.Config{}), topic, 200)
		waitFor(t, 30*time.Second, "every event handled", func() bool { return handled.Load() >= 200 })
	}) // the fleet's Runs returned with the subtest
	n, err := c.Redis().Do(ctx, c.Redis().B().Hlen().Key(bus.Keys{}.LimitLeases(topic)).Build()).AsInt64()
	if err != nil || n != 0 {
		t.Fatalf("%d consumers still hold leases after the fleet stopped (%v)", n, err)
	}
}

// TestLimitHoldsOnManyPartitions: a concurrency limit of 1 on a topic of 4
// partitions read by one multi-stream XREADGROUP (COUNT is per stream):
// never more than one handler at once.
func TestLimitHoldsOnManyPartitions(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic, total = "lim-parts", 80
	insp := inspect.New(redistest.RoleClient(t, c, "operator"))
	if _, err := insp.SetPartitions(ctx, topic, 4); err != nil {
		t.Fatal(err)
	}
	if err := insp.SetLimits(ctx, topic, inspect.Limits{Concurrency: 1}); err != nil {
		t.Fatal(err)
	}
	publishN(t, newProducer(t, c, producer.Config{}), topic, total)
	var s starts
	fleet(t, c, topic, 2, 8, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		s.begin()
		defer s.end()
		time.Sleep(2 * time.Millisecond) // the work
		return nil, nil
	}), nil)
	waitFor(t, 60*time.Second, "every event handled", func() bool { return s.count() >= total })
	if most := s.most.Load(); most != 1 {
		t.Fatalf("at most %d handlers ran at once; the limit is 1", most)
	}
}
