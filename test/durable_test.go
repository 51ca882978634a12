package test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// startReplicated starts a master and a replica of it, in sync.
func startReplicated(t testing.TB) (master, replica *redistest.Server) {
	master = redistest.Start(t)
	replica = redistest.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	rc := replica.Client(t)
	waitFor(t, 10*time.Second, "replica in sync", func() bool {
		info, err := rc.Redis().Do(context.Background(), rc.Redis().B().Info().Section("replication").Build()).ToString()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	return master, replica
}

// TestWaitReplicas: with WaitReplicas 1, writes succeed while the replica
// acknowledges them, and fail with bus.ErrNotReplicated (saying 0 of 1)
// once it stops doing so; the entries were written all the same.
func TestWaitReplicas(t *testing.T) {
	master, replica := startReplicated(t)
	c := master.Client(t)
	ctx := context.Background()
	runConsumer(t, c, consumer.Config{Topic: "durable", Group: "g"}, echo)
	p := newProducer(t, c, producer.Config{WaitReplicas: 1, WaitTimeout: 300 * time.Millisecond})
	if _, err := p.Publish(ctx, "durable", []byte("e1")); err != nil {
		t.Fatalf("Publish with a replica in sync: %v", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	got, err := p.Request(rctx, "durable", []byte("q1"))
	cancel()
	if err != nil || string(got) != "q1" {
		t.Fatalf("Request with a replica in sync = %q, %v", got, err)
	}
	if _, err := p.PublishBatch(ctx, "durable", [][]byte{[]byte("b1"), []byte("b2")}); err != nil {
		t.Fatalf("PublishBatch with a replica in sync: %v", err)
	}

	replica.Signal(syscall.SIGSTOP) // alive, but acknowledges nothing
	t.Cleanup(func() { replica.Signal(syscall.SIGCONT) })
	start := time.Now()
	_, err = p.Publish(ctx, "durable", []byte("e2"))
	took := time.Since(start)
	var nr *bus.NotReplicatedError
	if !errors.Is(err, bus.ErrNotReplicated) || !errors.As(err, &nr) || nr.Want != 1 || nr.Got != 0 {
		t.Fatalf("Publish with the replica stopped = %v; want ErrNotReplicated (0 of 1)", err)
	}
	if errors.Is(err, bus.ErrUnavailable) {
		t.Errorf("ErrNotReplicated also reads as ErrUnavailable: %v", err)
	}
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("Publish waited %v for the replica; want about WaitTimeout (300ms)", took)
	}
	rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	_, err = p.Request(rctx, "durable", []byte("q2"))
	cancel()
	if !errors.Is(err, bus.ErrNotReplicated) {
		t.Errorf("Request with the replica stopped = %v; want ErrNotReplicated", err)
	}
	ids, err := p.PublishBatch(ctx, "durable", [][]byte{[]byte("b3"), []byte("b4")})
	if !errors.Is(err, bus.ErrNotReplicated) || len(ids) != 2 || ids[0] == "" {
		t.Errorf("PublishBatch with the replica stopped = %v, %v; want ErrNotReplicated and the ids written", ids, err)
	}
	n, err := c.Redis().Do(ctx, c.Redis().B().Xlen().Key(c.Keys().Topic("durable")).Build()).AsInt64()
	if err != nil || n != 8 {
		t.Errorf("stream length %d, %v; want 8 (the unreplicated writes are written)", n, err)
	}
}

// TestWaitReplicasOnCluster: on a cluster, writes to 12 partitions on 3
// masters each wait for their own master's replica.
func TestWaitReplicasOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client(t)
	ctx := context.Background()
	p := newProducer(t, c, producer.Config{WaitReplicas: 1})
	var batch [][]byte
	for i := range 24 {
		batch = append(batch, fmt.Appendf(nil, "d%d", i))
	}
	if _, err := inspect.New(c).CreateTopic(ctx, "dur12", 12); err != nil {
		t.Fatal(err)
	}
	if ids, err := p.PublishBatch(ctx, "dur12", batch); err != nil || len(ids) != 24 {
		t.Fatalf("PublishBatch to 12 partitions waiting for replicas = %d ids, %v", len(ids), err)
	}
	for i := range 12 {
		if _, err := p.Publish(ctx, "dur12", fmt.Appendf(nil, "p%d", i)); err != nil {
			t.Fatalf("Publish waiting for a replica: %v", err)
		}
	}
}

// BenchmarkPublishReplicated: Publish round trips on a master with one
// replica, without and with WaitReplicas 1 (what the durability level
// costs; docs/cluster.md), serial and from 64 goroutines.
func BenchmarkPublishReplicated(b *testing.B) {
	master, _ := startReplicated(b)
	c := master.Client(b)
	for _, wait := range []int{0, 1} {
		p := newProducer(b, c, producer.Config{WaitReplicas: wait})
		payload := make([]byte, 256)
		b.Run(fmt.Sprintf("wait=%d/serial", wait), func(b *testing.B) {
			for b.Loop() {
				if _, err := p.Publish(context.Background(), "bench-durable", payload); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("wait=%d/parallel64", wait), func(b *testing.B) {
			b.SetParallelism(32) // 64 goroutines on 2 CPUs
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := p.Publish(context.Background(), "bench-durable", payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
