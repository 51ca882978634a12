package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// setScheduling gives topic its priority levels (and partitions) as an
// operator does.
func setScheduling(t *testing.T, c *bus.Client, topic string, partitions int, s inspect.Scheduling) {
	t.Helper()
	insp := inspect.New(redistest.RoleClient(t, c, "operator"))
	ctx := context.Background()
	if _, err := insp.CreateTopic(ctx, topic, partitions); err != nil {
		t.Fatal(err)
	}
	if _, err := insp.SetScheduling(ctx, topic, s); err != nil {
		t.Fatal(err)
	}
}

// levelOf returns the level a test payload "<level>:<n>" names.
func levelOf(m *consumer.Message) int {
	l, _, _ := strings.Cut(string(m.Payload), ":")
	n, _ := strconv.Atoi(l)
	return n
}

// publishAt publishes n events "<level>:<i>" at level.
func publishAt(t *testing.T, p *producer.Producer, topic string, level, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if _, err := p.Publish(ctx, topic, fmt.Appendf(nil, "%d:%d", level, i), producer.Priority(level)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPriorityStrictOrder: in strict mode, with every level backlogged
// before the worker starts, the worker (one slot) handles all of level 0,
// then all of level 1, then level 2, each in the order written; on two
// partitions too.
func TestPriorityStrictOrder(t *testing.T) {
	for _, parts := range []int{1, 2} {
		t.Run(fmt.Sprint(parts, " partitions"), func(t *testing.T) {
			srv := redistest.Start(t)
			c := srv.Client(t)
			topic := fmt.Sprint("strict", parts)
			setScheduling(t, c, topic, parts, inspect.Scheduling{Levels: 3, Strict: true})
			p := newProducer(t, c, producer.Config{})
			for _, l := range []int{2, 1, 0} {
				publishAt(t, p, topic, l, 30)
			}
			var mu sync.Mutex
			var got []string
			runConsumer(t, c, consumer.Config{Topic: topic, Concurrency: 1}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
				mu.Lock()
				got = append(got, string(m.Payload))
				mu.Unlock()
				return nil, nil
			}))
			waitFor(t, 20*time.Second, "90 events handled", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) == 90
			})
			mu.Lock()
			defer mu.Unlock()
			next := map[int]int{}
			last := 0
			for k, s := range got {
				l, n, _ := strings.Cut(s, ":")
				level, _ := strconv.Atoi(l)
				if level < last {
					t.Fatalf("entry %d (%s) at level %d after level %d: %v", k, s, level, last, got)
				}
				last = level
				if parts == 1 { // one stream per level: in the order written
					if want := strconv.Itoa(next[level]); n != want {
						t.Fatalf("entry %d is %s, want %d:%s", k, s, level, want)
					}
					next[level]++
				}
			}
		})
	}
}

// TestPriorityWeightedShares: weighted mode (4:2:1) with every level
// backlogged: of the first 1,400 entries handled, each level's share is
// within 5 points of its weight's (57%, 29%, 14%), and no level starves.
func TestPriorityWeightedShares(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	const topic, each, counted = "weighted", 1500, 1400
	setScheduling(t, c, topic, 1, inspect.Scheduling{Levels: 3})
	p := newProducer(t, c, producer.Config{})
	for l := range 3 {
		publishAt(t, p, topic, l, each)
	}
	var mu sync.Mutex
	var seen [3]int
	total := 0
	co := runConsumer(t, c, consumer.Config{Topic: topic, Concurrency: 1}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		mu.Lock()
		if total < counted {
			seen[levelOf(m)]++
			total++
		}
		mu.Unlock()
		return nil, nil
	}))
	waitFor(t, 60*time.Second, "1,400 entries handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return total == counted
	})
	mu.Lock()
	defer mu.Unlock()
	for l, w := range []float64{4.0 / 7, 2.0 / 7, 1.0 / 7} {
		share := float64(seen[l]) / counted
		if share < w-0.05 || share > w+0.05 {
			t.Errorf("level %d: %.1f%% of the entries handled, want %.1f%% ± 5 (counts %v)", l, 100*share, 100*w, seen)
		}
	}
	if s := co.Stats(); len(s.ReadsByLevel) != 3 || s.ReadsByLevel[2] == 0 {
		t.Errorf("Stats.ReadsByLevel = %v, want 3 levels, each read", s.ReadsByLevel)
	}
}

// TestPriorityOptions: Priority on a topic without levels writes to its
// stream; a level beyond the topic's goes to its least urgent level; a
// level out of [0, 9] is refused before anything is sent; a request at a
// level is answered.
func TestPriorityOptions(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	p := newProducer(t, c, producer.Config{})
	rd := c.Redis()
	xlen := func(key string) int64 {
		n, err := rd.Do(ctx, rd.B().Xlen().Key(key).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	k := bus.Keys{}
	if _, err := p.Publish(ctx, "plain", []byte("x"), producer.Priority(3)); err != nil {
		t.Fatal(err)
	}
	if n := xlen(k.Topic("plain")); n != 1 {
		t.Fatalf("a topic without levels: %d entries on its stream, want 1", n)
	}
	setScheduling(t, c, "levels", 1, inspect.Scheduling{Levels: 2})
	if _, err := p.Publish(ctx, "levels", []byte("x"), producer.Priority(7)); err != nil {
		t.Fatal(err)
	}
	if n := xlen(k.Level("levels", 1)); n != 1 {
		t.Fatalf("level 7 of 2: %d entries on level 1's stream, want 1", n)
	}
	for _, bad := range []int{-1, 10} {
		if _, err := p.Publish(ctx, "levels", []byte("x"), producer.Priority(bad)); !errors.Is(err, bus.ErrInvalidConfig) {
			t.Fatalf("Publish(Priority(%d)) = %v, want ErrInvalidConfig", bad, err)
		}
		if _, err := p.Request(ctx, "levels", []byte("x"), producer.Priority(bad)); !errors.Is(err, bus.ErrInvalidConfig) {
			t.Fatalf("Request(Priority(%d)) = %v, want ErrInvalidConfig", bad, err)
		}
	}
	if _, err := p.Publish(ctx, "levels", []byte("x"), producer.Tenant("bad tenant\n")); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("Publish(Tenant(bad)) = %v, want ErrInvalidConfig", err)
	}
	runConsumer(t, c, consumer.Config{Topic: "levels"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		return []byte(m.Headers[bus.PriorityHeader]), nil
	}))
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := p.Request(rctx, "levels", []byte("q"), producer.Priority(1))
	if err != nil || string(got) != "1" {
		t.Fatalf("Request at level 1 = %q, %v; want the header 1", got, err)
	}
	// Levels are never lowered.
	if _, err := inspect.New(redistest.RoleClient(t, c, "operator")).SetScheduling(ctx, "levels", inspect.Scheduling{Levels: 1}); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("lowering the levels = %v, want ErrInvalidConfig", err)
	}
}

// TestPriorityDeadLetterReplayedToItsLevel: an entry of level 2 that
// fails for good is dead-lettered, and replayed to level 2's stream,
// where it is handled.
func TestPriorityDeadLetterReplayedToItsLevel(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic = "prio-dlq"
	setScheduling(t, c, topic, 1, inspect.Scheduling{Levels: 3})
	var mu sync.Mutex
	fail := true
	var handled []string
	runConsumer(t, c, consumer.Config{Topic: topic, Retry: consumer.RetryConfig{MaxDeliveries: 1}}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errors.New("no") // MaxDeliveries 1: dead-lettered at once
		}
		handled = append(handled, string(m.Payload))
		return nil, nil
	}))
	p := newProducer(t, c, producer.Config{})
	publishAt(t, p, topic, 2, 1)
	insp := inspect.New(redistest.RoleClient(t, c, "operator"))
	waitFor(t, 10*time.Second, "the dead letter", func() bool {
		d, err := insp.DeadLetters(ctx, topic, 10)
		return err == nil && len(d) == 1
	})
	mu.Lock()
	fail = false
	mu.Unlock()
	rd := c.Redis()
	xlen := func() int64 {
		n, err := rd.Do(ctx, rd.B().Xlen().Key(bus.Keys{}.Level(topic, 2)).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := xlen()
	if n, err := insp.ReplayDeadLetters(ctx, topic); err != nil || n != 1 {
		t.Fatalf("ReplayDeadLetters = %d, %v", n, err)
	}
	if after := xlen(); after != before+1 {
		t.Fatalf("level 2's stream: %d entries before the replay, %d after; want one more", before, after)
	}
	waitFor(t, 10*time.Second, "the replayed entry handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == 1
	})
	tp, err := insp.Topic(ctx, topic)
	if err != nil || tp.Levels != 3 || len(tp.ByLevel) != 3 || tp.ByLevel[2].Length != 2 {
		t.Fatalf("Topic = levels %d, by level %+v, %v; want level 2 of length 2", tp.Levels, tp.ByLevel, err)
	}
}

// TestPriorityWithDelayAndCache: a delayed event at level 1 is moved to
// level 1's stream when due (and handled there); two identical cached
// requests at level 1 make one handler call, and a third is answered
// from the cache.
func TestPriorityWithDelayAndCache(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic = "prio-more"
	setScheduling(t, c, topic, 1, inspect.Scheduling{Levels: 2})
	var mu sync.Mutex
	calls := map[string]int{}
	levels := map[string]string{}
	release := make(chan struct{})
	runConsumer(t, c, consumer.Config{Topic: topic}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		mu.Lock()
		calls[string(m.Payload)]++
		levels[string(m.Payload)] = m.Headers[bus.PriorityHeader]
		mu.Unlock()
		if string(m.Payload) == "prompt" {
			select { // holds the leader until its twin joined it
			case <-release:
			case <-ctx.Done():
			}
		}
		return []byte("answer"), nil
	}))
	p := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{topic: {LocalTTL: -1}}})
	if _, err := p.Publish(ctx, topic, []byte("later"), producer.After(200*time.Millisecond), producer.Priority(1)); err != nil {
		t.Fatal(err)
	}
	rd := c.Redis()
	n, err := rd.Do(ctx, rd.B().Zcard().Key(bus.Keys{}.LevelDelayed(topic, 1)).Build()).AsInt64()
	if err != nil || n != 1 {
		t.Fatalf("level 1's delayed set holds %d, %v; want the event", n, err)
	}
	waitFor(t, 10*time.Second, "the delayed event handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls["later"] == 1
	})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Go(func() {
			got, err := p.Request(rctx, topic, []byte("prompt"), producer.Priority(1))
			if err == nil && string(got) != "answer" {
				err = fmt.Errorf("reply %q", got)
			}
			errs <- err
		})
	}
	waitFor(t, 10*time.Second, "the leader handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls["prompt"] == 1
	})
	tp, err := inspect.New(redistest.RoleClient(t, c, "operator")).Topic(ctx, topic)
	if err != nil || len(tp.ByLevel) != 2 || tp.ByLevel[1].Length != 2 {
		t.Fatalf("Topic by level = %+v, %v; want level 1 holding the delayed event and the prompt", tp.ByLevel, err)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var info producer.CacheInfo
	if _, err := p.Request(rctx, topic, []byte("prompt"), producer.Priority(1), producer.WithCacheInfo(&info)); err != nil || info.Source != producer.SourceShared {
		t.Fatalf("third request: %v, source %v; want the shared cache", err, info.Source)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls["prompt"] != 1 || levels["later"] != "1" || levels["prompt"] != "1" {
		t.Fatalf("calls %v, levels %v; want one call for the prompt, both at level 1", calls, levels)
	}
}

// TestTenantShards: on a topic with tenant fairness (8 partitions, 2 per
// tenant) a tenant's entries land in its shard set only, on both its
// shards; without fairness they go round robin over all 8.
func TestTenantShards(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	setScheduling(t, c, "fair", 8, inspect.Scheduling{Levels: 1, Shards: 2})
	setScheduling(t, c, "unfair", 8, inspect.Scheduling{Levels: 1})
	p := newProducer(t, c, producer.Config{})
	for _, topic := range []string{"fair", "unfair"} {
		for i := range 64 {
			if _, err := p.Publish(ctx, topic, fmt.Appendf(nil, "%d", i), producer.Tenant("A")); err != nil {
				t.Fatal(err)
			}
		}
	}
	rd := c.Redis()
	used := func(topic string) map[int]int64 {
		out := map[int]int64{}
		for k := range 8 {
			n, err := rd.Do(ctx, rd.B().Xlen().Key(bus.Keys{}.Topic(bus.Partition(topic, k))).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			if n > 0 {
				out[k] = n
			}
		}
		return out
	}
	set := producer.ShardSet("A", 8, 2)
	fair := used("fair")
	if len(fair) != 2 || fair[set[0]] == 0 || fair[set[1]] == 0 {
		t.Fatalf("tenant A's entries by partition %v, want both of its shards %v only", fair, set)
	}
	if u := used("unfair"); len(u) != 8 {
		t.Fatalf("without fairness: entries by partition %v, want all 8", u)
	}
	// The header names the tenant.
	tp, err := inspect.New(redistest.RoleClient(t, c, "operator")).Partitions(ctx, "fair")
	if err != nil || tp.Shards != 2 {
		t.Fatalf("Partitions = %+v, %v; want 2 shards", tp, err)
	}
}

// TestBusWorkerPriorities: the operator's and the caller's commands:
// topic create with levels and weights, levels never lowered, publish at
// a level for a tenant, stats by level, and bad flags refused with one
// line.
func TestBusWorkerPriorities(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	bin := buildCmd(t, "bus-worker")
	run := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append(args, "--redis", srv.URL)...).CombinedOutput()
		return string(out), err
	}
	out, err := run("topic", "create", "--topic", "pt", "--priorities", "3", "--weights", "6,3,1", "--json")
	if err != nil {
		t.Fatalf("topic create: %v\n%s", err, out)
	}
	var p inspect.Partitions
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.Levels != 3 || !slices.Equal(p.Weights, []int{6, 3, 1}) || len(p.Streams) != 3 {
		t.Fatalf("topic create --json = %s (%v)", out, err)
	}
	var ee *exec.ExitError
	if out, err := run("topic", "set-scheduling", "--topic", "pt", "--priorities", "2"); !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(out, "never lowered") {
		t.Fatalf("lowering the levels: %v\n%s", err, out)
	}
	// set-scheduling changes what its flags name and keeps the rest.
	if out, err := run("topic", "set-scheduling", "--topic", "pt", "--strict", "--json"); err != nil || !strings.Contains(out, `"priority_weights":[6,3,1]`) || !strings.Contains(out, `"priority_strict":true`) {
		t.Fatalf("set-scheduling --strict: %v\n%s", err, out)
	}
	if out, err := run("publish", "--topic", "pt", "--data", "x", "--priority", "2", "--tenant", "acme"); err != nil {
		t.Fatalf("publish --priority 2: %v\n%s", err, out)
	}
	rd := c.Redis()
	if n, err := rd.Do(ctx, rd.B().Xlen().Key(bus.Keys{}.Level("pt", 2)).Build()).AsInt64(); err != nil || n != 1 {
		t.Fatalf("level 2's stream holds %d, %v; want the event", n, err)
	}
	out, err = run("stats", "--json")
	if err != nil {
		t.Fatalf("stats --json: %v\n%s", err, out)
	}
	var st struct {
		Topics []struct {
			Topic      string                 `json:"topic"`
			Length     int64                  `json:"length"`
			Priorities []inspect.LevelFigures `json:"priorities"`
		} `json:"topics"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Topics) != 1 || len(st.Topics[0].Priorities) != 3 ||
		st.Topics[0].Priorities[2].Length != 1 || st.Topics[0].Priorities[0].Weight != 6 || st.Topics[0].Length != 1 {
		t.Fatalf("stats --json = %s (%v)", out, err)
	}
	if !strings.Contains(out, `"priority_strict":true`) {
		t.Fatalf("stats --json does not say the levels are strict: %s", out)
	}
	if out, err := run("stats"); err != nil || !strings.Contains(out, "pt: 3 priority levels, strict") {
		t.Fatalf("stats: %v\n%s", err, out)
	}
	for _, bad := range [][]string{
		{"publish", "--topic", "pt", "--data", "x", "--priority", "10"},
		{"request", "--topic", "pt", "--data", "x", "--tenant", "a b"},
		{"topic", "create", "--topic", "pu", "--priorities", "3", "--weights", "1,2"},
		{"topic", "create", "--topic", "pu", "--priorities", "11"},
		{"topic", "create", "--topic", "pu", "--partitions", "4", "--fair-shards", "5"},
		{"topic", "set-scheduling", "--topic", "pu"},
	} {
		out, err := run(bad...)
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("%v: exit %v, want 2 and one line:\n%s", bad, err, out)
		}
	}
}

// TestPriorityBatchesStreamsCancel: PublishBatch and RequestBatch write
// to their level; a streamed reply at level 1 arrives whole; a request at
// level 1 cancelled by its caller cancels its handler.
func TestPriorityBatchesStreamsCancel(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	const topic = "prio-verbs"
	setScheduling(t, c, topic, 1, inspect.Scheduling{Levels: 2})
	started := make(chan struct{}, 1)
	cancelled := make(chan error, 1)
	runConsumer(t, c, consumer.Config{Topic: topic, Concurrency: 4}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		switch string(m.Payload) {
		case "stream":
			for i := range 3 {
				if err := m.Send(ctx, fmt.Appendf(nil, "%d", i)); err != nil {
					return nil, err
				}
			}
			return nil, nil
		case "slow":
			started <- struct{}{}
			<-ctx.Done()
			cancelled <- context.Cause(ctx)
			return nil, ctx.Err()
		}
		return []byte(m.Headers[bus.PriorityHeader]), nil
	}))
	p := newProducer(t, c, producer.Config{})
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := p.PublishBatch(rctx, topic, [][]byte{[]byte("a"), []byte("b")}, producer.Priority(1)); err != nil {
		t.Fatal(err)
	}
	replies, err := p.RequestBatch(rctx, topic, [][]byte{[]byte("c"), []byte("d")}, producer.Priority(1))
	if err != nil || len(replies) != 2 || string(replies[0].Payload) != "1" || string(replies[1].Payload) != "1" {
		t.Fatalf("RequestBatch at level 1 = %+v, %v", replies, err)
	}
	rd := c.Redis()
	if n, err := rd.Do(ctx, rd.B().Xlen().Key(bus.Keys{}.Level(topic, 1)).Build()).AsInt64(); err != nil || n != 4 {
		t.Fatalf("level 1's stream holds %d, %v; want the 2 events and 2 requests", n, err)
	}
	st, err := p.Stream(rctx, topic, []byte("stream"), producer.Priority(1))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		chunk, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %v: %v", got, err)
		}
		got = append(got, string(chunk))
	}
	if !slices.Equal(got, []string{"0", "1", "2"}) {
		t.Fatalf("streamed chunks %v", got)
	}
	sctx, scancel := context.WithCancel(rctx)
	done := make(chan error, 1)
	go func() {
		_, err := p.Request(sctx, topic, []byte("slow"), producer.Priority(1))
		done <- err
	}()
	<-started
	scancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Request = %v, want context.Canceled", err)
	}
	select {
	case cause := <-cancelled:
		if !errors.Is(cause, bus.ErrCancelled) {
			t.Fatalf("handler's cause %v, want ErrCancelled", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler at level 1 was not cancelled")
	}
}
