package producer_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
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
