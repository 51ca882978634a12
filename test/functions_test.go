package test

import (
	"context"
	"errors"
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

// aclUser creates the ACL user spec describes, with the rule bus-worker
// acl prints (password "pw"), and connects as it.
func aclUser(t *testing.T, srv *redistest.Server, spec redisx.ACLSpec) *bus.Client {
	t.Helper()
	if spec.Prefix == "" {
		spec.Prefix = bus.DefaultPrefix
	}
	rule, err := redisx.ACLRule(spec)
	if err != nil {
		t.Fatal(err)
	}
	rc := srv.Client(t).Redis()
	args := append(append([]string{spec.User}, rule...), ">pw")
	if err := rc.Do(context.Background(), rc.B().Arbitrary("ACL", "SETUSER").Args(args...).Build()).Error(); err != nil {
		t.Fatalf("ACL SETUSER %s: %v", strings.Join(args, " "), err)
	}
	return redistest.Connect(t, bus.Config{URL: srv.URL, Username: spec.User, Password: "pw"})
}

// commandCalls returns INFO commandstats' calls of cmd ("fcall", "evalsha").
func commandCalls(t *testing.T, c *bus.Client, cmd string) int64 {
	t.Helper()
	rc := c.Redis()
	info, err := rc.Do(context.Background(), rc.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _, _ := strings.Cut(rest, ",")
			var v int64
			for _, d := range n {
				v = v*10 + int64(d-'0')
			}
			return v
		}
	}
	return 0
}

// TestScriptsRunAsFunctions: on Redis 7 the bus's scripts run by FCALL
// from one library it loads itself when its user may (the default user):
// cached requests, delayed events and retries, partitions, dead-letter
// replay; never EVAL. A restart without persistence loses the library: it
// is loaded again at the next call.
func TestScriptsRunAsFunctions(t *testing.T) {
	if redistest.Secure() {
		t.Skip("makes its own connections as the default user")
	}
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runConsumer(t, c, consumer.Config{Topic: "fn"}, echo)
	p := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{"fn": {}}})
	for range 2 {
		if got, err := p.Request(ctx, "fn", []byte("q")); err != nil || string(got) != "q" {
			t.Fatalf("cached Request = %q, %v", got, err)
		}
	}
	if _, err := p.Publish(ctx, "fn", []byte("later"), producer.After(10*time.Millisecond)); err != nil {
		t.Fatalf("delayed Publish = %v", err)
	}
	libs, err := redisx.ListFunctions(ctx, c.Redis())
	if err != nil || len(libs) != 1 || !libs[0].Current || len(libs[0].Functions) < 8 {
		t.Fatalf("libraries after the first calls = %+v, %v; want this build's, loaded by the client", libs, err)
	}
	if n := commandCalls(t, c, "fcall"); n < 2 {
		t.Fatalf("FCALL calls = %d, want the scripts run as functions", n)
	}
	if n := commandCalls(t, c, "evalsha") + commandCalls(t, c, "eval"); n != 0 {
		t.Fatalf("EVAL/EVALSHA calls = %d, want none on Redis 7", n)
	}
	// Redis restarted without persistence: no library until a call loads it.
	// (Nor the producer's reply stream until its reader's next refresh,
	// within min(ReplyTTL/3, 5 s): a reply written before that is dropped,
	// the README's delivery guarantees.)
	srv.Restart()
	waitFor(t, 10*time.Second, "Redis back", func() bool { return c.Ping(ctx) == nil })
	waitFor(t, 15*time.Second, "the producer's reply stream recreated", func() bool {
		n, err := c.Redis().Do(ctx, c.Redis().B().Exists().Key(p.ReplyStream()).Build()).AsInt64()
		return err == nil && n == 1
	})
	if _, err := p.Request(ctx, "fn", []byte("again"), producer.CacheKey("k2")); err != nil {
		t.Fatalf("cached Request after a restart = %v", err)
	}
	if libs, err := redisx.ListFunctions(ctx, c.Redis()); err != nil || len(libs) != 1 {
		t.Fatalf("libraries after the restart = %+v, %v; want this build's, loaded again", libs, err)
	}
}

// TestFunctionsLoadedByTheOperator: the producer and worker roles may run
// the bus's functions but neither load them nor run scripts: with the
// library missing their scripts fail with bus.ErrPermission naming the
// fix; the operator loads it (idempotently) and they work. Old releases'
// libraries are listed and deleted.
func TestFunctionsLoadedByTheOperator(t *testing.T) {
	if redistest.Secure() {
		t.Skip("makes its own users")
	}
	srv := redistest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prod := aclUser(t, srv, redisx.ACLSpec{Role: "producer", User: "alice"})
	work := aclUser(t, srv, redisx.ACLSpec{Role: "worker", User: "w"})
	op := aclUser(t, srv, redisx.ACLSpec{Role: "operator", User: "op"})
	runConsumer(t, work, consumer.Config{Topic: "fn"}, echo)
	p := newProducer(t, prod, producer.Config{Cache: map[string]producer.CacheConfig{"fn": {}}})
	_, err := p.Request(ctx, "fn", []byte("q"))
	if !errors.Is(err, bus.ErrPermission) || !strings.Contains(err.Error(), "bus-worker functions load") {
		t.Fatalf("cached Request without the library = %v; want ErrPermission saying to load the functions", err)
	}
	for _, c := range []*bus.Client{prod, work} {
		if err := redisx.LoadFunctions(ctx, c.Redis()); !redisx.IsPermission(err) {
			t.Fatalf("FUNCTION LOAD as %s = %v, want NOPERM", c.User(), err)
		}
	}
	for range 2 { // idempotent
		if err := redisx.LoadFunctions(ctx, op.Redis()); err != nil {
			t.Fatalf("FUNCTION LOAD as the operator = %v", err)
		}
	}
	if got, err := p.Request(ctx, "fn", []byte("q")); err != nil || string(got) != "q" {
		t.Fatalf("cached Request once loaded = %q, %v", got, err)
	}
	// An older release's library stays until pruned.
	rc := srv.Client(t).Redis()
	old := "#!lua name=mycelium_00000000\nredis.register_function('myc_x_00000000', function(KEYS, ARGV) return 1 end)"
	if err := rc.Do(ctx, rc.B().FunctionLoad().FunctionCode(old).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	libs, err := redisx.ListFunctions(ctx, op.Redis())
	if err != nil || len(libs) != 2 {
		t.Fatalf("ListFunctions = %+v, %v; want 2 libraries", libs, err)
	}
	deleted, err := redisx.DeleteOldFunctions(ctx, op.Redis())
	if err != nil || len(deleted) != 1 || deleted[0] != "mycelium_00000000" {
		t.Fatalf("DeleteOldFunctions = %v, %v", deleted, err)
	}
	if libs, _ := redisx.ListFunctions(ctx, op.Redis()); len(libs) != 1 || !libs[0].Current {
		t.Fatalf("after pruning: %+v", libs)
	}
}

// TestNoRoleRunsItsOwnScripts: no role's user can run a script of its
// choosing (security issue, high 1: a producer ran EVAL "while true do
// end" 0 and every client got BUSY; a variant that wrote first could only
// be ended by SHUTDOWN NOSAVE).
func TestNoRoleRunsItsOwnScripts(t *testing.T) {
	if redistest.Secure() {
		t.Skip("makes its own users")
	}
	srv := redistest.Start(t)
	ctx := context.Background()
	for _, spec := range []redisx.ACLSpec{{Role: "producer", User: "alice"}, {Role: "worker", User: "w"}, {Role: "operator", User: "op"}} {
		c := aclUser(t, srv, spec)
		rc := c.Redis()
		for _, cmd := range []rueidis.Completed{
			rc.B().Eval().Script("while true do end").Numkeys(0).Build(),
			rc.B().Eval().Script("redis.call('SET', KEYS[1], 'x') while true do end").Numkeys(1).Key("myc:{t}:x").Build(),
			rc.B().ScriptLoad().Script("return 1").Build(),
			rc.B().FunctionLoad().Replace().FunctionCode("#!lua name=evil\nredis.register_function('evil', function() while true do end end)").Build(),
		} {
			name := strings.Join(cmd.Commands()[:2], " ") // before Do: it recycles cmd
			err := rc.Do(ctx, cmd).Error()
			if spec.Role == "operator" && strings.HasPrefix(name, "FUNCTION") {
				// The operator loads libraries (the bus's); Redis cannot
				// tell which. Its user is the one to guard.
				continue
			}
			if !redisx.IsPermission(err) {
				t.Errorf("%s: %s = %v, want NOPERM", spec.Role, name, err)
			}
		}
	}
	// Redis answers everyone still.
	if err := srv.Client(t).Ping(ctx); err != nil {
		t.Fatal(err)
	}
}
