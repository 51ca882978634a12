package test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestIdempotentPublishAcrossProducers (flow-control issue, point 4): two
// producers publish 10,000 events each over 1,000 idempotency keys, at the
// same time, to a topic of 4 partitions: 1,000 entries are written, every
// other publish is flagged a duplicate and gets the id of the key's one
// entry.
func TestIdempotentPublishAcrossProducers(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := inspect.New(c).CreateTopic(ctx, "once", 4); err != nil {
		t.Fatal(err)
	}
	const perProducer, keys = 10_000, 1_000
	var (
		mu   sync.Mutex
		ids  = map[string]string{} // key -> the id every publish of it got
		dups int
		wg   sync.WaitGroup
	)
	for w := range 2 {
		p := newProducer(t, c, producer.Config{})
		for g := range 8 { // concurrent callers per producer
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; i < perProducer; i += 8 {
					key := fmt.Sprintf("order-%d", (i*7+w)%keys)
					var info producer.PublishInfo
					id, err := p.Publish(ctx, "once", []byte(key), producer.IdempotencyKey(key), producer.WithPublishInfo(&info))
					if err != nil {
						t.Errorf("publish %s: %v", key, err)
						return
					}
					mu.Lock()
					if prev, ok := ids[key]; ok && prev != id {
						t.Errorf("key %s got ids %s and %s", key, prev, id)
					}
					ids[key] = id
					if info.Duplicate {
						dups++
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	var total int64
	for i := range 4 {
		n, err := c.Redis().Do(ctx, c.Redis().B().Xlen().Key(bus.Keys{}.Topic(bus.Partition("once", i))).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != keys || len(ids) != keys || dups != 2*perProducer-keys {
		t.Fatalf("entries %d, keys %d, duplicates %d; want %d, %d, %d", total, len(ids), dups, keys, keys, 2*perProducer-keys)
	}
}
