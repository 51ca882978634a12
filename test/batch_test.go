package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// TestBatchReachesABlockedReaderWhole checks why redisx.DoBatch wraps a batch
// in MULTI/EXEC: Redis serves a blocked XREAD after each top-level command,
// so a plain pipeline of XADDs would hand the reader the first entry alone.
func TestBatchReachesABlockedReaderWhole(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t).Redis()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const key, n = "batch-reader", 8

	got := make(chan int, 1)
	go func() {
		entries, err := redisx.Read(ctx, c, key, "0-0", 100, 5*time.Second)
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
		cmds[i] = xadd(c, key, string([]byte{byte(i)}))
	}
	for i, r := range redisx.DoBatch(ctx, c, cmds) {
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
	c := srv.Client(t).Redis()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	xadd := func(key string) rueidis.Completed { return xadd(c, key, "v") }
	withID := func(id string) rueidis.Completed {
		return c.B().Xadd().Key("s").Id(id).FieldValue().FieldValue(redisx.Field, "v").Build()
	}

	// One stream, one transaction: the middle XADD's id is below the
	// first's, which Redis refuses only when it runs.
	res := redisx.DoBatch(ctx, c, rueidis.Commands{withID("5-0"), withID("1-0"), withID("6-0")}, c.B().Xlen().Key("s").Build())
	if err := res[1].Error(); !redisx.IsRedisReply(err) || !strings.Contains(err.Error(), "smaller") {
		t.Errorf("XADD below the top id = %v, want Redis's refusal", err)
	}
	if n, err := res[3].AsInt64(); err != nil || n != 2 {
		t.Errorf("XLEN after the batch = %d, %v; want 2 (the others were written)", n, err)
	}

	bad := c.B().Arbitrary("XADD").Keys("s").Build() // wrong number of arguments
	res = redisx.DoBatch(ctx, c, rueidis.Commands{xadd("s"), bad}, c.B().Xlen().Key("s").Build())
	if err := res[0].Error(); !redisx.IsRedisReply(err) || !strings.Contains(err.Error(), "EXECABORT") {
		t.Errorf("XADD in an aborted transaction = %v, want EXECABORT", err)
	}
	if err := res[1].Error(); !redisx.IsRedisReply(err) || !strings.Contains(strings.ToLower(err.Error()), "wrong number") {
		t.Errorf("bad command = %v, want its own queue-time error", err)
	}
	if n, err := res[2].AsInt64(); err != nil || n != 2 {
		t.Errorf("XLEN after the aborted batch = %d, %v; want still 2", n, err)
	}
}

// TestBatchUnderACLs checks the two ways an ACL meets DoBatch: a user
// denied one stream gets NOPERM there without failing the writes to the
// streams it may use (a transaction per key), and a user without
// @transaction still gets every write done (MULTI refused, the commands
// run one by one).
func TestBatchUnderACLs(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t).Redis()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, acl := range [][]string{
		{"keys", "on", ">pw", "~ok*", "+@all"},
		{"notx", "on", ">pw", "~*", "+@all", "-@transaction"},
	} {
		if err := admin.Do(ctx, admin.B().Arbitrary("ACL", "SETUSER").Args(acl...).Build()).Error(); err != nil {
			t.Fatalf("ACL SETUSER %v: %v", acl, err)
		}
	}
	as := func(user string) rueidis.Client {
		c, err := bus.Connect(ctx, bus.Config{URL: "redis://" + user + ":pw@" + srv.Addr})
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(c.Close)
		return c.Redis()
	}
	xadd := func(c rueidis.Client, key string) rueidis.Completed { return xadd(c, key, "v") }
	xlen := func(key string) int64 {
		n, err := admin.Do(ctx, admin.B().Xlen().Key(key).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	c := as("keys")
	res := redisx.DoBatch(ctx, c, rueidis.Commands{xadd(c, "ok1"), xadd(c, "no"), xadd(c, "ok1"), xadd(c, "no"), xadd(c, "ok2")})
	for _, i := range []int{0, 2, 4} {
		if _, err := res[i].ToString(); err != nil {
			t.Errorf("XADD %d to a permitted stream = %v, want an id", i, err)
		}
	}
	for _, i := range []int{1, 3} {
		if err := res[i].Error(); !redisx.IsRedisReply(err) {
			t.Errorf("XADD %d to a denied stream = %v, want a Redis error", i, err)
		}
	}
	if err := res[1].Error(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("XADD to a denied stream = %v, want NOPERM", err)
	}
	if n1, n2 := xlen("ok1"), xlen("ok2"); n1 != 2 || n2 != 1 {
		t.Errorf("XLEN ok1, ok2 = %d, %d; want 2, 1", n1, n2)
	}

	c = as("notx")
	res = redisx.DoBatch(ctx, c, rueidis.Commands{xadd(c, "s"), xadd(c, "s"), xadd(c, "s")})
	for i, r := range res {
		if _, err := r.ToString(); err != nil {
			t.Errorf("XADD %d without @transaction = %v, want an id", i, err)
		}
	}
	if n := xlen("s"); n != 3 {
		t.Errorf("XLEN s = %d, want 3", n)
	}
}

// TestBatchingCounters checks the batching counters end to end: a batch of
// events written in one PublishBatch reaches a consumer blocked in
// XREADGROUP as one read (the transaction at work), and one request costs
// one write and one reply read.
func TestBatchingCounters(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	co := runConsumer(t, c, consumer.Config{Topic: "batched", Concurrency: 32}, echo)
	p := newProducer(t, c, producer.Config{})
	waitFor(t, 5*time.Second, "the consumer to block in XREADGROUP", func() bool {
		// (its control-stream XREAD blocks too: look for the XREADGROUP)
		list, err := c.Redis().Do(ctx, c.Redis().B().ClientList().Build()).ToString()
		if err != nil {
			return false
		}
		for _, l := range strings.Split(list, "\n") {
			if strings.Contains(l, "flags=b") && strings.Contains(l, "cmd=xreadgroup") {
				return true
			}
		}
		return false
	})

	const n = 10
	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = []byte{byte(i)}
	}
	if _, err := p.PublishBatch(ctx, "batched", payloads); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the batch acknowledged", func() bool { return co.Stats().Acked == n })
	if s := co.Stats(); s.Received != n || s.Reads != 1 || s.Flushes < 1 || s.Flushes > n {
		t.Errorf("consumer stats = %+v; want %d entries in 1 read and 1..%d flushes", s, n, n)
	}
	if s := p.Stats(); s.Published != n || s.Writes != 1 {
		t.Errorf("producer stats = %+v; want %d published in 1 write", s, n)
	}

	if _, err := p.Request(ctx, "batched", []byte("ping")); err != nil {
		t.Fatal(err)
	}
	// The reply reader's first read may return the stream's control entry
	// alone (the reader starts before the reply lands), hence 1 or 2 reads.
	if s := p.Stats(); s.Requests != 1 || s.Writes != 2 || s.Replies != 1 || s.ReplyReads < 1 || s.ReplyReads > 2 {
		t.Errorf("producer stats after one request = %+v; want 2 writes and 1 or 2 reply reads", s)
	}
}

// xadd builds XADD key * m v.
func xadd(c rueidis.Client, key, v string) rueidis.Completed {
	return c.B().Xadd().Key(key).Id("*").FieldValue().FieldValue(redisx.Field, v).Build()
}
