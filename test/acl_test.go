package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
	"github.com/egos/mycelium/prom"
)

// aclUsers creates one user per role with the rules bus-worker acl prints
// (password "pw") and returns a client per role.
func aclUsers(t *testing.T, srv *redistest.Server) map[string]*bus.Client {
	t.Helper()
	rc := srv.Client(t).Redis()
	out := map[string]*bus.Client{}
	for _, role := range redisx.ACLRoles {
		rule, err := redisx.ACLRule(redisx.ACLSpec{Role: role, Prefix: bus.DefaultPrefix, User: "myc-" + role})
		if err != nil {
			t.Fatal(err)
		}
		args := append(append([]string{"myc-" + role}, rule...), ">pw")
		if err := rc.Do(context.Background(), rc.B().Arbitrary("ACL", "SETUSER").Args(args...).Build()).Error(); err != nil {
			t.Fatalf("ACL SETUSER %s: %v", strings.Join(args, " "), err)
		}
		out[role] = redistest.Connect(t, bus.Config{URL: srv.URL, Username: "myc-" + role, Password: "pw"})
	}
	// The operator loads the bus's functions; the other roles may only
	// call them.
	if err := redisx.LoadFunctions(context.Background(), out["operator"].Redis()); err != nil {
		t.Fatalf("loading the functions as the operator: %v", err)
	}
	return out
}

// TestACLRolesSuffice: the bus's paths run as the least-privilege users of
// bus-worker acl: requests, events, batches, the cache and coalescing as
// the producer; serving, dead letters, reclaim, the cache's settle and the
// metrics as the worker; stats, dead-letter replay and purge, cache flushes
// as the operator.
func TestACLRolesSuffice(t *testing.T) {
	srv := redistest.Start(t)
	users := aclUsers(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var calls int
	h := consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		calls++
		if strings.HasPrefix(string(m.Payload), "poison") {
			return nil, fmt.Errorf("poison: %w", bus.ErrSkipRetry)
		}
		return m.Payload, nil
	})
	co := runConsumer(t, users["worker"], consumer.Config{Topic: "acl", Concurrency: 1, Reclaim: consumer.ReclaimConfig{ClaimIdle: 200 * time.Millisecond}, Retention: consumer.RetentionConfig{MaxLen: 1000}}, h)
	p := newProducer(t, users["producer"], producer.Config{Cache: map[string]producer.CacheConfig{"acl": {}}})

	if got, err := p.Request(ctx, "acl", []byte("q")); err != nil || string(got) != "q" {
		t.Fatalf("Request as the producer user = %q, %v", got, err)
	}
	var info producer.CacheInfo
	if _, err := p.Request(ctx, "acl", []byte("q"), producer.WithCacheInfo(&info), producer.NoCache()); err != nil || info.Source != producer.SourceHandler {
		t.Fatalf("cached Request (no-cache) = %v, %v", info.Source, err)
	}
	out, err := p.RequestBatch(ctx, "acl", [][]byte{[]byte("a"), []byte("b")})
	if err != nil || out[0].Err != nil || out[1].Err != nil {
		t.Fatalf("RequestBatch = %+v, %v", out, err)
	}
	if _, err := p.Publish(ctx, "acl", []byte("poison-1")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.PublishBatch(ctx, "acl", [][]byte{[]byte("e1"), []byte("e2")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dead letter", func() bool { return co.Stats().DeadLettered == 1 })
	if err := co.Ready(ctx); err != nil {
		t.Fatalf("Ready as the worker user = %v", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(prom.NewStreamCollector(inspect.New(users["worker"]), "acl"), prom.NewCacheCollector(inspect.New(users["worker"]), "acl"))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"mycelium_redis_up", "mycelium_stream_length", "mycelium_group_pending", "mycelium_cache_shared_entries"} {
		if !names[want] {
			t.Errorf("metrics as the worker user lack %s (have %v)", want, names)
		}
	}

	insp := inspect.New(users["operator"])
	if _, err := insp.Overview(ctx); err != nil {
		t.Fatalf("Overview as the operator = %v", err)
	}
	if _, err := insp.Pending(ctx, "acl", consumer.DefaultGroup, "", 10); err != nil {
		t.Fatalf("Pending as the operator = %v", err)
	}
	if _, err := insp.Server(ctx); err != nil {
		t.Fatalf("Server as the operator = %v", err)
	}
	letters, err := insp.DeadLetters(ctx, "acl", 10)
	if err != nil || len(letters) != 1 {
		t.Fatalf("DeadLetters as the operator = %v, %v", letters, err)
	}
	if n, err := insp.ReplayDeadLetters(ctx, "acl", letters[0].ID); err != nil || n != 1 {
		t.Fatalf("ReplayDeadLetters as the operator = %d, %v", n, err)
	}
	waitFor(t, 10*time.Second, "the replayed entry dead-lettered again", func() bool { return co.Stats().DeadLettered == 2 })
	// Purging by age trims (XTRIM MINID): none is a day old.
	if n, err := insp.PurgeDeadLetters(ctx, "acl", 24*time.Hour); err != nil || n != 0 {
		t.Fatalf("PurgeDeadLetters(older than 24h) as the operator = %d, %v", n, err)
	}
	if n, err := insp.PurgeDeadLetters(ctx, "acl", 0); err != nil || n != 1 {
		t.Fatalf("PurgeDeadLetters as the operator = %d, %v", n, err)
	}
	if _, err := insp.CacheStats(ctx, "acl"); err != nil {
		t.Fatalf("CacheStats as the operator = %v", err)
	}
	if _, err := insp.FlushCacheEntry(ctx, "acl", bus.HashPayload([]byte("q"))); err != nil {
		t.Fatalf("FlushCacheEntry as the operator = %v", err)
	}
	if _, err := insp.FlushCache(ctx, "acl"); err != nil {
		t.Fatalf("FlushCache as the operator = %v", err)
	}
	// And the producer cannot do the operator's work: least privilege.
	if _, err := inspect.New(users["producer"]).FlushCache(ctx, "acl"); err == nil {
		t.Fatal("FlushCache as the producer succeeded: the producer role is not least privilege")
	}
}
