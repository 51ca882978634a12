package consumer_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
)

// TestPartitionsReadAndLeft: a consumer of a 3-partition topic handles
// entries of every partition (one multi-stream read on a single server),
// tells the handler which, and on a clean stop leaves the group of every
// partition.
func TestPartitionsReadAndLeft(t *testing.T) {
	_, c := redistest.Mini(t)
	ctx := context.Background()
	insp := inspect.New(c)
	if _, err := insp.CreateTopic(ctx, "pt", 3); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[int]int{}
	co, err := consumer.New(c, consumer.Config{Topic: "pt", Concurrency: 2}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		mu.Lock()
		seen[m.Partition]++
		mu.Unlock()
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- co.Run(rctx) }()
	eventually(t, "ready on every partition", func() bool { return co.Ready(ctx) == nil })
	for p := range 3 {
		for range 4 {
			add(t, c, c.Keys().Topic(bus.Partition("pt", p)), &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("e")})
		}
	}
	eventually(t, "4 events of each partition handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[0] == 4 && seen[1] == 4 && seen[2] == 4
	})
	// A handler's return comes before its acknowledgement is written:
	// wait for every partition to hold nothing pending.
	eventually(t, "every partition acknowledged, one consumer in each", func() bool {
		tp, err := insp.Topic(ctx, "pt")
		if err != nil || len(tp.Parts) != 3 {
			return false
		}
		for _, pt := range tp.Parts {
			if len(pt.Groups) != 1 || len(pt.Groups[0].Consumers) != 1 || pt.Groups[0].Pending != 0 {
				return false
			}
		}
		return true
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	tp, err := insp.Topic(ctx, "pt")
	if err != nil || len(tp.Parts) != 3 {
		t.Fatalf("Topic after the stop = %d parts, %v", len(tp.Parts), err)
	}
	for _, pt := range tp.Parts {
		if len(pt.Groups) == 1 && len(pt.Groups[0].Consumers) != 0 {
			t.Errorf("partition %d still lists consumers %+v after a clean stop", pt.Partition, pt.Groups[0].Consumers)
		}
	}
}
