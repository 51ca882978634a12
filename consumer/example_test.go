package consumer_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
)

// A backend that batches inference: the worker hands it the requests that
// arrive together, up to 8 at a time; each caller gets its own answer.
func ExampleBatch() {
	mr, _ := miniredis.Run()
	defer mr.Close()
	ctx := context.Background()
	client, err := bus.Connect(ctx, bus.Config{URL: "redis://" + mr.Addr()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	infer := consumer.BatchHandlerFunc(func(ctx context.Context, msgs []*consumer.Message) []consumer.Result {
		out := make([]consumer.Result, len(msgs))
		for i, m := range msgs { // one model call for all of them, in a real backend
			out[i].Payload = []byte(strings.ToUpper(string(m.Payload)))
		}
		return out
	})
	worker, _ := consumer.New(client, consumer.Config{Topic: "infer", Concurrency: 16},
		consumer.Batch(infer, consumer.BatchConfig{Size: 8, Window: 10 * time.Millisecond}))
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker.Run(wctx) }()
	defer func() { stop(); <-done }()
	<-worker.Serving()

	p, _ := producer.New(client, producer.Config{})
	defer p.Close(ctx)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	replies, err := p.RequestBatch(rctx, "infer", [][]byte{[]byte("a"), []byte("b"), []byte("c")})
	for _, r := range replies {
		fmt.Println(string(r.Payload), r.Err)
	}
	fmt.Println(err)
	// Output:
	// A <nil>
	// B <nil>
	// C <nil>
	// <nil>
}
