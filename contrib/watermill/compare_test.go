package watermill_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// TestCompareRedisstream measures the adapter against watermill-redisstream
// on the suite's redis-server, side by side in one run (make
// bench-watermill; MYCELIUM_WATERMILL_BENCH=1): publish throughput at 1, 16
// and 256 publishers, consume throughput of one subscriber, and end-to-end
// latency through a Watermill Router handler; each point the median of
// MYCELIUM_WATERMILL_RUNS (3) alternating runs.
func TestCompareRedisstream(t *testing.T) {
	if os.Getenv("MYCELIUM_WATERMILL_BENCH") != "1" {
		t.Skip("a benchmark: make bench-watermill (MYCELIUM_WATERMILL_BENCH=1)")
	}
	runs := 3
	if n, err := strconv.Atoi(os.Getenv("MYCELIUM_WATERMILL_RUNS")); err == nil && n > 0 {
		runs = n
	}
	const messages = 20000
	systems := []struct {
		name string
		make func(t *testing.T, group string) (message.Publisher, message.Subscriber)
	}{
		{"mycelium", func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
			return newPubSub(t, group, 0, false) // the defaults: no Deduplicate
		}},
		{"redisstream", redisstreamPubSub},
	}
	type point struct{ what, system string }
	results := map[point][]float64{}
	for r := range runs {
		for _, s := range systems {
			for _, pubs := range []int{1, 16, 256} {
				topic := fmt.Sprintf("cmp-%s-%d-%d", s.name, pubs, r)
				pub, sub := s.make(t, "g")
				pubRate := publishAll(t, pub, topic, messages, pubs)
				results[point{fmt.Sprintf("publish, %d publishers (msg/s)", pubs), s.name}] = append(results[point{fmt.Sprintf("publish, %d publishers (msg/s)", pubs), s.name}], pubRate)
				if pubs == 16 {
					results[point{"consume, 1 subscriber (msg/s)", s.name}] = append(results[point{"consume, 1 subscriber (msg/s)", s.name}], consumeAll(t, sub, topic, messages))
				}
				_ = pub.Close()
				_ = sub.Close()
			}
			p50, p99 := routerLatency(t, s.make, fmt.Sprintf("cmp-router-%s-%d", s.name, r))
			results[point{"router end to end p50 (µs)", s.name}] = append(results[point{"router end to end p50 (µs)", s.name}], p50)
			results[point{"router end to end p99 (µs)", s.name}] = append(results[point{"router end to end p99 (µs)", s.name}], p99)
		}
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	t.Logf("%d messages per run, medians of %d alternating runs", messages, runs)
	t.Logf("%-34s %14s %14s %8s", "point", "mycelium", "redisstream", "ratio")
	for _, what := range []string{"publish, 1 publishers (msg/s)", "publish, 16 publishers (msg/s)", "publish, 256 publishers (msg/s)",
		"consume, 1 subscriber (msg/s)", "router end to end p50 (µs)", "router end to end p99 (µs)"} {
		m, r := median(results[point{what, "mycelium"}]), median(results[point{what, "redisstream"}])
		t.Logf("%-34s %14.0f %14.0f %7.2fx", what, m, r, m/r)
	}
}

func redisstreamPubSub(t *testing.T, group string) (message.Publisher, message.Subscriber) {
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opt)
	t.Cleanup(func() { _ = rc.Close() })
	pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: rc}, wm.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{Client: rc, ConsumerGroup: group, Consumer: wm.NewShortUUID()}, wm.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	return pub, sub
}

// publishAll publishes n messages from pubs goroutines and returns
// messages per second.
func publishAll(t *testing.T, pub message.Publisher, topic string, n, pubs int) float64 {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range pubs {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := pub.Publish(topic, message.NewMessage(wm.NewUUID(), []byte("0123456789abcdef0123456789abcdef"))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// consumeAll reads n messages of topic with one subscription, acknowledging
// each, and returns messages per second.
func consumeAll(t *testing.T, sub message.Subscriber, topic string, n int) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range n {
		select {
		case m := <-msgs:
			m.Ack()
		case <-ctx.Done():
			t.Fatalf("consumed %d of %d", i, n)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// routerLatency sends 2,000 messages (16 publishers, 500/s in all) through
// a Router handler and returns the p50 and p99 of publish-to-handler time
// in microseconds.
func routerLatency(t *testing.T, mk func(*testing.T, string) (message.Publisher, message.Subscriber), topic string) (float64, float64) {
	const n = 2000
	pub, sub := mk(t, "router")
	defer pub.Close()
	router, err := message.NewRouter(message.RouterConfig{}, wm.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lat []float64
	done := make(chan struct{})
	router.AddConsumerHandler("h", topic, sub, func(m *message.Message) error {
		sent, _ := strconv.ParseInt(m.Metadata.Get("sent"), 10, 64)
		mu.Lock()
		lat = append(lat, float64(time.Now().UnixNano()-sent)/1e3)
		if len(lat) == n {
			close(done)
		}
		mu.Unlock()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()
	tick := time.NewTicker(2 * time.Millisecond) // 500/s
	defer tick.Stop()
	var wg sync.WaitGroup
	for range n {
		<-tick.C
		wg.Go(func() {
			m := message.NewMessage(wm.NewUUID(), []byte("x"))
			m.Metadata.Set("sent", strconv.FormatInt(time.Now().UnixNano(), 10))
			if err := pub.Publish(topic, m); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the router did not handle every message within a minute")
	}
	_ = router.Close()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}
