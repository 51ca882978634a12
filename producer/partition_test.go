package producer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
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

// TestShardSet: the wire contract's values (clients in other languages
// compute the same), m distinct partitions, m clamped to [1, n], and
// every partition reachable by some tenant.
func TestShardSet(t *testing.T) {
	for _, tt := range []struct {
		tenant string
		n, m   int
		want   []int
	}{
		{"A", 16, 2, []int{12, 1}}, {"B", 16, 2, []int{2, 4}}, {"tenant-42", 16, 4, []int{5, 8, 1, 7}},
		{"A", 16, 0, []int{12}}, {"A", 3, 9, nil},
	} {
		got := producer.ShardSet(tt.tenant, tt.n, tt.m)
		if tt.want != nil && !slices.Equal(got, tt.want) {
			t.Errorf("ShardSet(%q, %d, %d) = %v, want %v", tt.tenant, tt.n, tt.m, got, tt.want)
		}
		if want := min(max(tt.m, 1), tt.n); len(got) != want {
			t.Errorf("ShardSet(%q, %d, %d) has %d partitions, want %d", tt.tenant, tt.n, tt.m, len(got), want)
		}
		seen := map[int]bool{}
		for _, p := range got {
			if p < 0 || p >= tt.n || seen[p] {
				t.Errorf("ShardSet(%q, %d, %d) = %v: out of range or repeated", tt.tenant, tt.n, tt.m, got)
			}
			seen[p] = true
		}
	}
	// Every pair of 16 partitions is some tenant's set (a tenant's second
	// shard does not follow from its first: FNV-1a alone, modulo 16, made
	// 16 sets of the 120).
	sets := map[[2]int]bool{}
	for i := range 20000 {
		s := producer.ShardSet(fmt.Sprint("t", i), 16, 2)
		sets[[2]int{min(s[0], s[1]), max(s[0], s[1])}] = true
	}
	if len(sets) != 120 {
		t.Errorf("20,000 tenants make %d distinct shard sets of 2 among 16, want all 120", len(sets))
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

// TestRequestBatchAdmitsPerPartition: each request of a RequestBatch is
// admitted by the breaker of the partition it goes to, like a Request (issue
// 25, point 2: the batch was admitted by the topic's breaker, partition 0's,
// while its requests went to every partition). With partition 0's breaker
// open, an unkeyed batch goes to the other partitions and is answered; a
// batch keyed to partition 0 is refused as a whole; the timeouts of a batch
// keyed to another partition open that partition's breaker, not partition
// 0's.
func TestRequestBatchAdmitsPerPartition(t *testing.T) {
	m, c := redistest.Mini(t)
	ctx := context.Background()
	if _, err := inspect.New(c).CreateTopic(ctx, "rb", 3); err != nil {
		t.Fatal(err)
	}
	p := newProducer(t, c, producer.Config{Breaker: breaker.Config{MinCalls: 2, OpenTimeout: time.Hour}, RequestTimeout: 50 * time.Millisecond})
	keyOf := func(part int) string {
		for i := 0; ; i++ {
			if k := fmt.Sprintf("k%d", i); producer.PartitionOf(k, 3) == part {
				return k
			}
		}
	}
	// Nobody answers partition 0: its requests time out until its breaker
	// (the topic's own, partition 0's) opens.
	for range 2 {
		_, _ = p.Request(ctx, "rb", []byte("q"), producer.PartitionKey(keyOf(0)))
	}
	if st, _ := p.BreakerState("rb"); st != breaker.Open {
		t.Fatalf("partition 0's breaker = %v after 2 timeouts, want open", st)
	}
	// Partitions 1 and 2 are served.
	echo := func(env *codec.Envelope) *codec.Envelope {
		return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, Payload: append([]byte("re:"), env.Payload...)}
	}
	for _, part := range []int{1, 2} {
		stop := replier(t, m, c, bus.Partition("rb", part), echo)
		defer stop()
	}
	before := xlen(t, c, "rb")
	payloads := [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("d"), []byte("e"), []byte("f")}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := p.RequestBatch(rctx, "rb", payloads)
	if err != nil {
		t.Fatalf("unkeyed RequestBatch with partition 0's breaker open = %v, want it written to partitions 1 and 2", err)
	}
	for i, r := range out {
		if r.Err != nil || string(r.Payload) != "re:"+string(payloads[i]) {
			t.Errorf("reply %d = %q, %v; want %q", i, r.Payload, r.Err, "re:"+string(payloads[i]))
		}
	}
	if after := xlen(t, c, "rb"); after != before {
		t.Errorf("the batch wrote %d requests to partition 0, whose breaker is open", after-before)
	}
	if n1, n2 := xlen(t, c, bus.Partition("rb", 1)), xlen(t, c, bus.Partition("rb", 2)); n1+n2 != len(payloads) || n1 == 0 || n2 == 0 {
		t.Errorf("partitions 1 and 2 hold %d and %d requests, want the %d of the batch spread over both", n1, n2, len(payloads))
	}
	rejected := p.Stats().BreakerRejected
	if _, err := p.RequestBatch(rctx, "rb", payloads[:2], producer.PartitionKey(keyOf(0))); !errors.Is(err, bus.ErrBreakerOpen) {
		t.Fatalf("RequestBatch keyed to partition 0 = %v, want ErrBreakerOpen", err)
	}
	if got := p.Stats().BreakerRejected - rejected; got != 2 {
		t.Errorf("BreakerRejected grew by %d for a refused batch of 2, want 2 (one per request)", got)
	}

	// A fresh producer: a batch keyed to an unserved partition times out;
	// its outcome goes to that partition's breaker, not the topic's.
	q := newProducer(t, c, producer.Config{Breaker: breaker.Config{MinCalls: 2, OpenTimeout: time.Hour}, RequestTimeout: 50 * time.Millisecond})
	if _, err := inspect.New(c).CreateTopic(ctx, "rc", 3); err != nil {
		t.Fatal(err)
	}
	out, err = q.RequestBatch(ctx, "rc", payloads[:2], producer.PartitionKey(keyOf(2)))
	if err != nil || !errors.Is(out[0].Err, bus.ErrTimeout) || !errors.Is(out[1].Err, bus.ErrTimeout) {
		t.Fatalf("RequestBatch to an unserved partition = %+v, %v; want two timeouts", out, err)
	}
	if st, _ := q.BreakerState("rc"); st != breaker.Closed {
		t.Fatalf("partition 0's breaker = %v after timeouts on partition 2, want closed", st)
	}
	before2 := xlen(t, c, bus.Partition("rc", 2))
	for range 6 {
		if _, err := q.Publish(ctx, "rc", []byte("e")); err != nil {
			t.Fatalf("unkeyed publish: %v", err)
		}
	}
	if after := xlen(t, c, bus.Partition("rc", 2)); after != before2 {
		t.Errorf("round robin wrote %d events to partition 2, whose breaker the batch's timeouts opened", after-before2)
	}
}
