package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/test/redistest"
)

// TestBatchReachesABlockedReaderWhole checks why bus.DoBatch wraps a batch
// in MULTI/EXEC: Redis serves a blocked XREAD after each top-level command,
// so a plain pipeline of XADDs would hand the reader the first entry alone.
func TestBatchReachesABlockedReaderWhole(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const key, n = "batch-reader", 8

	got := make(chan int, 1)
	go func() {
		entries, err := bus.Read(ctx, c, key, "0-0", 100, 5*time.Second)
		if err != nil {
			t.Errorf("XREAD = %v", err)
		}
		got <- len(entries)
	}()
	waitFor(t, 5*time.Second, "the reader to block", func() bool {
		info, err := c.Do(ctx, c.B().Info().Section("clients").Build()).ToString()
		return err == nil && strings.Contains(info, "blocked_clients:1\r")
	})
	cmds := make(rueidis.Commands, n)
	for i := range cmds {
		cmds[i] = bus.AddCmd(c, key, bus.Cap{}, false, []byte{byte(i)})
	}
	for i, r := range bus.DoBatch(ctx, c, cmds) {
		if err := r.Error(); err != nil {
			t.Fatalf("XADD %d = %v", i, err)
		}
	}
	if k := <-got; k != n {
		t.Fatalf("the blocked reader got %d entries in its read, want all %d", k, n)
	}
}

// TestBatchErrorsOnRedis checks the per-command results against the real
// server: a command failing while running fails alone, one refused when
// queued aborts the transaction, and the tail runs either way.
func TestBatchErrorsOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	xadd := func(key string) rueidis.Completed { return bus.AddCmd(c, key, bus.Cap{}, false, []byte("v")) }
	if err := c.Do(ctx, c.B().Set().Key("str").Value("x").Build()).Error(); err != nil {
		t.Fatal(err)
	}

	res := bus.DoBatch(ctx, c, rueidis.Commands{xadd("s"), xadd("str"), xadd("s")}, c.B().Xlen().Key("s").Build())
	if err := res[1].Error(); !bus.IsRedisReply(err) || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("XADD to a string = %v, want WRONGTYPE", err)
	}
	if n, err := res[3].AsInt64(); err != nil || n != 2 {
		t.Errorf("XLEN after the batch = %d, %v; want 2 (the others were written)", n, err)
	}

	bad := c.B().Arbitrary("XADD").Keys("s").Build() // wrong number of arguments
	res = bus.DoBatch(ctx, c, rueidis.Commands{xadd("s"), bad}, c.B().Xlen().Key("s").Build())
	if err := res[0].Error(); !bus.IsRedisReply(err) || !strings.Contains(err.Error(), "EXECABORT") {
		t.Errorf("XADD in an aborted transaction = %v, want EXECABORT", err)
	}
	if err := res[1].Error(); !bus.IsRedisReply(err) || !strings.Contains(strings.ToLower(err.Error()), "wrong number") {
		t.Errorf("bad command = %v, want its own queue-time error", err)
	}
	if n, err := res[2].AsInt64(); err != nil || n != 2 {
		t.Errorf("XLEN after the aborted batch = %d, %v; want still 2", n, err)
	}
}
