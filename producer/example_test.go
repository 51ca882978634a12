package producer_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/producer"
)

// A worker answers reasoning requests on a topic; a service sends one and
// waits for the answer. Point bus.Config.URL at your Redis instead of the
// in-process miniredis used here.
func Example() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	ctx := context.Background()

	client, err := bus.Connect(ctx, bus.Config{URL: "redis://" + mr.Addr()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	// The worker side (normally another process, e.g. bus-worker).
	worker, _ := consumer.New(client, consumer.Config{Topic: "reasoning"},
		consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
			return []byte(strings.ToUpper(string(m.Payload))), nil
		}))
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.Run(wctx) }()
	defer func() { stop(); <-done }()
	<-worker.Serving() // joined: a request now finds it (before, it would fail with bus.ErrNoResponders)

	// The service side.
	p, _ := producer.New(client, producer.Config{})
	defer p.Close(ctx)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reply, err := p.Request(rctx, "reasoning", []byte("is the bus fast?"))
	fmt.Println(string(reply), err)
	// Output: IS THE BUS FAST? <nil>
}

// A cached topic: the second identical request is answered from this
// process's memory, without the worker; a caller-chosen key makes two
// phrasings of one question the same request.
func Example_cache() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	ctx := context.Background()
	client, err := bus.Connect(ctx, bus.Config{URL: "redis://" + mr.Addr()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	var calls atomic.Int32
	worker, _ := consumer.New(client, consumer.Config{Topic: "reasoning", Concurrency: 1},
		consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
			calls.Add(1)
			return []byte("42"), nil
		}))
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.Run(wctx) }()
	defer func() { stop(); <-done }()
	<-worker.Serving()

	p, _ := producer.New(client, producer.Config{
		Cache: map[string]producer.CacheConfig{"reasoning": {TTL: 10 * time.Minute}},
	})
	defer p.Close(ctx)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	key := producer.CacheKey("model=m1 q=meaning-of-life")
	for _, prompt := range []string{"What is the meaning of life?", "meaning of life, please"} {
		var info producer.CacheInfo
		answer, err := p.Request(rctx, "reasoning", []byte(prompt), key, producer.WithCacheInfo(&info))
		fmt.Println(string(answer), info.Source, err)
	}
	fmt.Println("handler calls:", calls.Load())
	// Output:
	// 42 handler <nil>
	// 42 local <nil>
	// handler calls: 1
}

// A partitioned topic: the count lives in Redis (an operator sets it once:
// bus-worker topic create --topic orders --partitions 4); entries with one
// PartitionKey land in one partition, in order; a worker reads them all.
// On Redis Cluster the partitions spread over the masters: give the
// bus.Config URL several seed hosts (docs/cluster.md).
func ExamplePartitionKey() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	ctx := context.Background()
	client, err := bus.Connect(ctx, bus.Config{URL: "redis://" + mr.Addr()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	if _, err := inspect.New(client).CreateTopic(ctx, "orders", 4); err != nil {
		fmt.Println(err)
		return
	}

	var mu sync.Mutex
	byCustomer := map[string][]string{}
	worker, _ := consumer.New(client, consumer.Config{Topic: "orders", Concurrency: 1},
		consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
			customer, order, _ := strings.Cut(string(m.Payload), ":")
			mu.Lock()
			byCustomer[customer] = append(byCustomer[customer], fmt.Sprintf("%s@p%d", order, m.Partition))
			mu.Unlock()
			return nil, nil
		}))
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.Run(wctx) }()
	defer func() { stop(); <-done }()

	p, _ := producer.New(client, producer.Config{})
	defer p.Close(ctx)
	for _, order := range []string{"ada:1", "bob:1", "ada:2", "ada:3", "bob:2"} {
		customer, _, _ := strings.Cut(order, ":")
		if _, err := p.Publish(ctx, "orders", []byte(order), producer.PartitionKey(customer)); err != nil {
			fmt.Println(err)
			return
		}
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(byCustomer["ada"]) + len(byCustomer["bob"])
		mu.Unlock()
		if n == 5 {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Println("ada:", byCustomer["ada"], "partition", producer.PartitionOf("ada", 4))
	fmt.Println("bob:", byCustomer["bob"], "partition", producer.PartitionOf("bob", 4))
	// Output:
	// ada: [1@p3 2@p3 3@p3] partition 3
	// bob: [1@p0 2@p0] partition 0
}
