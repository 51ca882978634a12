package test

import (
	"context"
	"fmt"
	"slices"
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

// partSeen records which partitions a handler saw entries from.
type partSeen struct {
	mu    sync.Mutex
	parts map[int]int
	order map[string][]string // per partition key: payloads in handling order
}

func newPartSeen() *partSeen { return &partSeen{parts: map[int]int{}, order: map[string][]string{}} }

func (s *partSeen) Handle(_ context.Context, m *consumer.Message) ([]byte, error) {
	s.mu.Lock()
	s.parts[m.Partition]++
	if k, v, ok := strings.Cut(string(m.Payload), "/"); ok && !m.Request {
		s.order[k] = append(s.order[k], v)
	}
	s.mu.Unlock()
	return append([]byte("re:"), m.Payload...), nil
}

func (s *partSeen) seen() map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int]int{}
	for k, v := range s.parts {
		out[k] = v
	}
	return out
}

// TestPartitionedTopic: a topic of 4 partitions spreads requests and events
// over its streams; two workers read every partition; a partition key keeps
// one key's events in one partition, in order; a cached request works per
// partition; operators see the sum and each partition.
func TestPartitionedTopic(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	insp := inspect.New(c)
	if _, err := insp.CreateTopic(ctx, "parts", 4); err != nil {
		t.Fatal(err)
	}
	if _, err := insp.CreateTopic(ctx, "parts", 5); err == nil {
		t.Fatal("CreateTopic with another count succeeded; want ErrTopicExists")
	}
	h := newPartSeen()
	runConsumer(t, c, consumer.Config{Topic: "parts", Group: "g", Concurrency: 4}, h)
	runConsumer(t, c, consumer.Config{Topic: "parts", Group: "g", Concurrency: 4}, h)
	p := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{"parts-cached": {}}})

	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 200 {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			want := fmt.Sprintf("q%d", i)
			got, err := p.Request(rctx, "parts", []byte(want))
			if err != nil || string(got) != "re:"+want {
				failed.Add(1)
				t.Errorf("request %s = %q, %v", want, got, err)
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	seen := h.seen()
	for i := range 4 {
		if seen[i] == 0 {
			t.Errorf("partition %d handled nothing: %v (round robin should reach every partition)", i, seen)
		}
	}
	// One key, one partition, in order.
	var ids []string
	for i := range 50 {
		id, err := p.Publish(ctx, "parts", fmt.Appendf(nil, "k1/%03d", i), producer.PartitionKey("k1"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	want := producer.PartitionOf("k1", 4)
	waitFor(t, 10*time.Second, "50 keyed events handled", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.order["k1"]) == 50
	})
	tp, err := insp.Topic(ctx, "parts")
	if err != nil {
		t.Fatal(err)
	}
	if tp.Partitions != 4 || len(tp.Parts) != 4 {
		t.Fatalf("Topic: %d partitions, %d parts; want 4, 4", tp.Partitions, len(tp.Parts))
	}
	var sum int64
	for _, pt := range tp.Parts {
		sum += pt.Length
	}
	if sum != tp.Length || tp.Length != 250 {
		t.Errorf("Topic length %d, parts sum to %d; want 250", tp.Length, sum)
	}
	// The keyed events are in that partition's stream, in publish order.
	if n := tp.Parts[want].Length; n < 50 {
		t.Errorf("partition %d of key k1 holds %d entries; want at least the 50 keyed ones", want, n)
	}
	if !slices.IsSortedFunc(ids, compareIDs) {
		t.Errorf("ids of one key's events are not increasing: %v", ids)
	}
	// Handled comes before acknowledged: wait for nothing pending.
	waitFor(t, 10*time.Second, "one group with nothing pending", func() bool {
		tp, err := insp.Topic(ctx, "parts")
		return err == nil && len(tp.Groups) == 1 && tp.Groups[0].Pending == 0
	})

	// A cached, partitioned topic: the answer is stored in the partition
	// its cache key chose, and served from there.
	if _, err := insp.CreateTopic(ctx, "parts-cached", 3); err != nil {
		t.Fatal(err)
	}
	hc := newCounting()
	runConsumer(t, c, consumer.Config{Topic: "parts-cached", Group: "g"}, hc)
	for i := range 6 {
		for range 2 {
			got, _ := request(t, p, "parts-cached", fmt.Sprintf("same%d", i))
			if got != fmt.Sprintf("re:same%d", i) {
				t.Fatalf("cached request = %q", got)
			}
		}
		if n := hc.count(fmt.Sprintf("same%d", i)); n != 1 {
			t.Errorf("payload same%d: %d handler calls; want 1 (the second call a cache hit)", i, n)
		}
	}
	cs, err := insp.CacheStats(ctx, "parts-cached")
	if err != nil || cs.Entries != 6 {
		t.Errorf("CacheStats = %+v, %v; want 6 entries over the partitions", cs, err)
	}
	if _, err := insp.FlushCache(ctx, "parts-cached"); err != nil {
		t.Fatal(err)
	}
	// The shared entries are gone at once (a fresh producer has no local
	// copies; the first one's go within a second).
	p2 := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{"parts-cached": {}}})
	for i := range 6 {
		request(t, p2, "parts-cached", fmt.Sprintf("same%d", i))
	}
	if n := hc.total.Load(); n != 12 {
		t.Errorf("after a flush, %d handler calls in all; want 12 (each payload asked again)", n)
	}
}

// compareIDs orders stream ids.
func compareIDs(a, b string) int {
	var am, as, bm, bs uint64
	fmt.Sscanf(a, "%d-%d", &am, &as)
	fmt.Sscanf(b, "%d-%d", &bm, &bs)
	switch {
	case am != bm:
		return cmpU(am, bm)
	default:
		return cmpU(as, bs)
	}
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestPartitionsFairWhenSlotsAreScarce: a worker with 2 handler slots on a
// topic of 6 partitions, with entries only in the last, handles them
// promptly: idle partitions do not sit on the slots.
func TestPartitionsFairWhenSlotsAreScarce(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	if _, err := inspect.New(c).CreateTopic(ctx, "scarce", 6); err != nil {
		t.Fatal(err)
	}
	h := newPartSeen()
	runConsumer(t, c, consumer.Config{Topic: "scarce", Group: "g", Concurrency: 2}, h)
	p := newProducer(t, c, producer.Config{})
	key := ""
	for i := range 1000 {
		if k := fmt.Sprintf("k%d", i); producer.PartitionOf(k, 6) == 5 {
			key = k
			break
		}
	}
	for i := range 20 {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		got, err := p.Request(rctx, "scarce", fmt.Appendf(nil, "x%d", i), producer.PartitionKey(key))
		cancel()
		if err != nil || string(got) != fmt.Sprintf("re:x%d", i) {
			t.Fatalf("request %d to partition 5 = %q, %v (starved by idle partitions?)", i, got, err)
		}
	}
	if s := h.seen(); s[5] != 20 {
		t.Errorf("partitions seen %v; want 20 in partition 5", s)
	}
}

// TestPartitionsRaisedAndLoweredUnderLoad: requests flow while the count
// goes 2 → 6 → 1; every request is answered, the removed partitions are
// drained and then forgotten (their streams deleted), and nothing is left
// pending.
func TestPartitionsRaisedAndLoweredUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the forget grace (15 s)")
	}
	srv := redistest.Start(t)
	c := srv.Client(t)
	testRepartition(t, c, redistest.RoleClient(t, c, "operator"))
}

// TestClusterPartitionsRaisedAndLoweredUnderLoad: the same on a 3-master
// cluster, where each partition is read apart.
func TestClusterPartitionsRaisedAndLoweredUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the forget grace (15 s)")
	}
	c := redistest.StartCluster(t).Client(t)
	testRepartition(t, c, c)
}

func testRepartition(t *testing.T, c, operator *bus.Client) {
	ctx := context.Background()
	insp := inspect.New(operator)
	if _, err := insp.CreateTopic(ctx, "repart", 2); err != nil {
		t.Fatal(err)
	}
	h := newPartSeen()
	runConsumer(t, c, consumer.Config{Topic: "repart", Group: "g", Concurrency: 8}, h)
	runConsumer(t, c, consumer.Config{Topic: "repart", Group: "g", Concurrency: 8}, h)
	p := newProducer(t, c, producer.Config{})

	stop := make(chan struct{})
	var sent, ok atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				want := fmt.Sprintf("w%d-%d", w, i)
				got, err := p.Request(rctx, "repart", []byte(want))
				cancel()
				if err != nil || string(got) != "re:"+want {
					t.Errorf("request %s = %q, %v", want, got, err)
					return
				}
				ok.Add(1)
			}
		})
	}
	step := func(n int) {
		t.Helper()
		before := ok.Load()
		if _, err := insp.SetPartitions(ctx, "repart", n); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "requests flow after the change", func() bool { return ok.Load() > before+200 })
	}
	step(6)
	waitFor(t, 10*time.Second, "partition 5 used", func() bool { return h.seen()[5] > 0 })
	step(1)
	close(stop)
	wg.Wait()
	if ok.Load() != sent.Load() {
		t.Fatalf("%d of %d requests answered", ok.Load(), sent.Load())
	}
	// The removed partitions are forgotten once drained and the grace passed.
	waitFor(t, 40*time.Second, "removed partitions forgotten", func() bool {
		ps, err := insp.Partitions(ctx, "repart")
		return err == nil && ps.Count == 1 && ps.Draining == 0
	})
	for k := 1; k < 6; k++ {
		key := c.Keys().Topic(bus.Partition("repart", k))
		waitFor(t, 5*time.Second, "stream of forgotten partition deleted", func() bool {
			n, err := c.Redis().Do(ctx, c.Redis().B().Exists().Key(key).Build()).AsInt64()
			return err == nil && n == 0
		})
	}
	tp, err := insp.Topic(ctx, "repart")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range tp.Groups {
		if g.Pending != 0 {
			t.Errorf("group %s has %d pending after the run", g.Name, g.Pending)
		}
	}
}
