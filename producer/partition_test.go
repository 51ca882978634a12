package producer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestPartitionOf pins the partition function: it is part of the wire
// contract (docs/wire.md), so clients in other languages compute the same.
func TestPartitionOf(t *testing.T) {
	for key, want := range map[string]int{"": 1, "a": 4, "user-42": 3, "k1": 9} {
		if got := producer.PartitionOf(key, 12); got != want {
			t.Errorf("PartitionOf(%q, 12) = %d, want %d (FNV-1a 32 mod 12)", key, got, want)
		}
	}
	if producer.PartitionOf("anything", 1) != 0 || producer.PartitionOf("anything", 0) != 0 {
		t.Error("one partition (or none) must map every key to 0")
	}
}

// TestPublishPartitions: keyed events land in their key's partition,
// unkeyed ones go round robin over all, a batch puts each entry in its
// partition, and a count changed in Redis is followed within a few seconds.
func TestPublishPartitions(t *testing.T) {
	_, c := redistest.Mini(t)
	ctx := context.Background()
	if _, err := inspect.New(c).CreateTopic(ctx, "pt", 4); err != nil {
		t.Fatal(err)
	}
	p := newProducer(t, c, producer.Config{})
	length := func(part int) int { return xlen(t, c, bus.Partition("pt", part)) }
	for range 8 {
		if _, err := p.Publish(ctx, "pt", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		if length(i) != 2 {
			t.Errorf("partition %d holds %d of 8 round-robin events; want 2", i, length(i))
		}
	}
	want := producer.PartitionOf("user-7", 4)
	for range 5 {
		if _, err := p.Publish(ctx, "pt", []byte("k"), producer.PartitionKey("user-7")); err != nil {
			t.Fatal(err)
		}
	}
	if length(want) != 7 {
		t.Errorf("partition %d holds %d; want its 2 round-robin events and the 5 keyed ones", want, length(want))
	}
	ids, err := p.PublishBatch(ctx, "pt", [][]byte{[]byte("b1"), []byte("b2"), []byte("b3"), []byte("b4")})
	if err != nil || len(ids) != 4 {
		t.Fatalf("PublishBatch = %v, %v", ids, err)
	}
	total := 0
	for i := range 4 {
		total += length(i)
	}
	if total != 17 {
		t.Errorf("%d entries over the partitions; want 17", total)
	}
	// The count changes in Redis; the producer follows within about a second.
	if _, err := inspect.New(c).SetPartitions(ctx, "pt", 6); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 5*time.Second, "partitions 4 and 5 written", func() bool {
		_, _ = p.Publish(ctx, "pt", []byte("y"))
		return length(4) > 0 && length(5) > 0
	})
}

// TestRoundRobinSkipsOpenBreakers: with one partition's breaker open,
// unkeyed requests go to the others.
func TestRoundRobinSkipsOpenBreakers(t *testing.T) {
	_, c := redistest.Mini(t)
	ctx := context.Background()
	if _, err := inspect.New(c).CreateTopic(ctx, "rr", 3); err != nil {
		t.Fatal(err)
	}
	p := newProducer(t, c, producer.Config{Breaker: breaker.Config{MinCalls: 2, OpenTimeout: time.Hour}, RequestTimeout: 50 * time.Millisecond})
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("k%d", i); producer.PartitionOf(k, 3) == 1 {
			key = k
		}
	}
	// Nobody answers: requests to partition 1 time out until its breaker opens.
	for range 4 {
		_, _ = p.Request(ctx, "rr", []byte("q"), producer.PartitionKey(key))
	}
	if _, err := p.Request(ctx, "rr", []byte("q"), producer.PartitionKey(key)); err == nil {
		t.Fatal("request to partition 1 answered")
	}
	before := xlen(t, c, bus.Partition("rr", 1))
	for range 9 {
		if _, err := p.Publish(ctx, "rr", []byte("e")); err != nil {
			t.Fatalf("unkeyed publish with partition 1's breaker open: %v", err)
		}
	}
	if after := xlen(t, c, bus.Partition("rr", 1)); after != before {
		t.Errorf("round robin wrote %d events to the partition whose breaker is open", after-before)
	}
}

// xlen is the length of a partition's stream (0 when missing).
func xlen(t *testing.T, c *bus.Client, part string) int {
	t.Helper()
	n, err := c.Redis().Do(context.Background(), c.Redis().B().Xlen().Key(c.Keys().Topic(part)).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}
