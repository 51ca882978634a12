package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
	"github.com/egos/mycelium/prom"
)

// TestCraftedReplyToNeverReachesForeignKeys: a request whose reply-to names
// a key that is not one of the bus's reply streams (a foreign stream,
// another topic) is dead-lettered as malformed; the key is neither written
// nor trimmed.
func TestCraftedReplyToNeverReachesForeignKeys(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	co := runConsumer(t, c, consumer.Config{Topic: "demo", Retention: consumer.RetentionConfig{ReplyMaxLen: 10}}, echo)
	rc := c.Redis()
	ctx := context.Background()
	for i := range 50 {
		for _, k := range []string{"other:audit", c.Keys().Topic("victim")} {
			if err := rc.Do(ctx, rc.B().Xadd().Key(k).Id("*").FieldValue().FieldValue("n", strconv.Itoa(i)).Build()).Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, target := range []string{"other:audit", c.Keys().Topic("victim"), "", "myc:{r.}"} {
		env := codec.Envelope{Kind: codec.KindRequest, ID: "x1", ReplyTo: target, Deadline: time.Now().Add(time.Minute).UnixNano(), Payload: []byte("forged")}
		if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().Topic("demo")).Id("*").FieldValue().FieldValue("m", string(codec.AppendEnvelope(nil, &env))).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "4 dead letters", func() bool { return co.Stats().DeadLettered == 4 })
	for _, k := range []string{"other:audit", c.Keys().Topic("victim")} {
		if n, err := rc.Do(ctx, rc.B().Xlen().Key(k).Build()).AsInt64(); err != nil || n != 50 {
			t.Fatalf("XLEN %s = %d, %v; want 50 (untouched)", k, n, err)
		}
	}
	letters, err := inspect.New(c).DeadLetters(ctx, "demo", 10)
	if err != nil || len(letters) != 4 || letters[0].Reason != "malformed" {
		t.Fatalf("dead letters = %+v, %v; want 4 malformed", letters, err)
	}
	if s := co.Stats(); s.Replied != 0 || s.Handled != 0 {
		t.Fatalf("consumer stats = %+v: the handler ran or a reply was written", s)
	}
}

// TestPasswordFromFileOrEnvNeverPrinted: bus-worker takes the password from
// --redis-password-file or MYCELIUM_REDIS_PASSWORD (never needed in argv),
// and no output of a failing command shows it.
func TestPasswordFromFileOrEnvNeverPrinted(t *testing.T) {
	const pw = "S3cretPW-42"
	srv := redistest.Start(t, "--requirepass", pw)
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := buildCmd(t, "bus-worker")
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for name, tc := range map[string]struct {
		env  []string
		args []string
		ok   bool
	}{
		"file":           {nil, []string{"stats", "--redis", srv.URL, "--redis-password-file", file}, true},
		"env":            {[]string{"MYCELIUM_REDIS_PASSWORD=" + pw}, []string{"stats", "--redis", srv.URL}, true},
		"file from env":  {[]string{"MYCELIUM_REDIS_PASSWORD_FILE=" + file}, []string{"cache", "stats", "--redis", srv.URL, "--topic", "t"}, true},
		"none":           {nil, []string{"stats", "--redis", srv.URL}, false},
		"wrong":          {[]string{"MYCELIUM_REDIS_PASSWORD=" + pw + "x"}, []string{"dlq", "list", "--redis", srv.URL}, false},
		"bad URL":        {nil, []string{"stats", "--redis", "redis://:" + pw + "@127.0.0.1:abc"}, false},
		"bad URL in env": {[]string{"MYCELIUM_REDIS=redis://:" + pw + "@[::1"}, []string{"request", "--data", "x"}, false},
		"missing file":   {nil, []string{"request", "--redis", srv.URL, "--redis-password-file", file + ".none", "--data", "x"}, false},
		"publish wrong":  {[]string{"MYCELIUM_REDIS_PASSWORD=nope"}, []string{"publish", "--redis", "redis://:" + pw + "@" + srv.Addr, "--redis-password-file", file + ".none", "--data", "x"}, false},
		"serve bad URL":  {nil, []string{"serve", "--redis", "redis://u:" + pw + "@127.0.0.1:0x"}, false},
		"serve wrong":    {[]string{"MYCELIUM_REDIS_PASSWORD=" + pw + "x"}, []string{"serve", "--redis", srv.URL, "--http-addr", ""}, false},
		"cache flush":    {nil, []string{"cache", "flush", "--redis", "redis://:" + pw + "@" + srv.Addr, "--topic", "t"}, true},
	} {
		out, err := run(tc.env, tc.args...)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v\n%s", name, err, tc.ok, out)
		}
		if strings.Contains(out, pw) || strings.Contains(out, "S3cret") {
			t.Errorf("%s: output shows the password:\n%s", name, out)
		}
	}
}

// TestCLIOutputHygieneAndPayloadSources: text from Redis reaches the
// terminal escaped (a dead letter's error with an escape sequence), and
// payloads come from stdin or a file as well as --data.
func TestCLIOutputHygieneAndPayloadSources(t *testing.T) {
	srv := redistest.Start(t)
	redistest.StartWorker(t, "--redis", srv.URL, "--topic", "e2e")
	c := srv.Client(t)
	rc := c.Redis()
	ctx := context.Background()
	if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().DeadLetter("e2e")).Id("*").FieldValue().
		FieldValue("id", "1-1").FieldValue("reason", "malformed").FieldValue("error", "evil \x1b]0;pwned\x07 text").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	bin := buildCmd(t, "bus-worker")
	out, err := exec.Command(bin, "dlq", "list", "--redis", srv.URL, "--topic", "e2e").CombinedOutput()
	if err != nil || strings.ContainsAny(string(out), "\x1b\x07") || !strings.Contains(string(out), `evil \x1b]0;pwned\x07 text`) {
		t.Fatalf("dlq list = %v\n%q\nwant the error escaped", err, out)
	}
	cmd := exec.Command(bin, "request", "--redis", srv.URL, "--topic", "e2e", "--data", "-")
	cmd.Stdin = strings.NewReader("from stdin\nline two")
	if out, err := cmd.Output(); err != nil || string(out) != "from stdin\nline two\n" {
		t.Fatalf("request --data - = %q, %v", out, err)
	}
	file := filepath.Join(t.TempDir(), "payload")
	if err := os.WriteFile(file, []byte("from a file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "request", "--redis", srv.URL, "--topic", "e2e", "--data-file", file).Output(); err != nil || string(out) != "from a file\n" {
		t.Fatalf("request --data-file = %q, %v", out, err)
	}
	if out, err := exec.Command(bin, "request", "--redis", srv.URL+"/", "--topic", "e2e", "--data", "x").Output(); err != nil || string(out) != "x\n" {
		t.Fatalf("request with a trailing slash in the URL = %q, %v", out, err)
	}
}

// TestPermissionRefusalStopsTheConsumer: a worker whose ACL user lacks a
// command it needs stops with a clear error (bus.ErrPermission, naming the
// command) instead of retrying forever; without XACK it does not
// dead-letter the same entry again and again.
func TestPermissionRefusalStopsTheConsumer(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	rc := admin.Redis()
	ctx := context.Background()
	for _, rule := range [][]string{
		{"noread", "on", ">pw", "~*", "+@all", "-xreadgroup"},
		{"noack", "on", ">pw", "~*", "+@all", "-xack"},
		{"noinfo", "on", ">pw", "~*", "+@all", "-xinfo"},
	} {
		if err := rc.Do(ctx, rc.B().Arbitrary("ACL", "SETUSER").Args(rule...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	run := func(user, topic string, h consumer.Handler) (*consumer.Consumer, chan error) {
		c := redistest.Connect(t, bus.Config{URL: srv.URL, Username: user, Password: "pw"})
		co, err := consumer.New(c, consumer.Config{Topic: topic, Reclaim: consumer.ReclaimConfig{ClaimIdle: 200 * time.Millisecond}, Retry: consumer.RetryConfig{MaxDeliveries: 2}}, h)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- co.Run(ctx) }()
		return co, done
	}
	wait := func(done chan error) error {
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("Run kept going after a permission refusal")
			return nil
		}
	}
	co, done := run("noread", "a", echo)
	if err := wait(done); !errors.Is(err, bus.ErrPermission) || !strings.Contains(err.Error(), "XREADGROUP") {
		t.Fatalf("Run without XREADGROUP = %v, want ErrPermission naming XREADGROUP", err)
	}
	if err := co.Ready(ctx); !errors.Is(err, bus.ErrPermission) {
		t.Fatalf("Ready after the refusal = %v, want ErrPermission", err)
	}

	p := newProducer(t, admin, producer.Config{})
	for i := range 2 {
		if _, err := p.Publish(ctx, "b", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	_, done = run("noack", "b", consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		return nil, fmt.Errorf("poison: %w", bus.ErrSkipRetry)
	}))
	if err := wait(done); !errors.Is(err, bus.ErrPermission) || !strings.Contains(err.Error(), "XACK") {
		t.Fatalf("Run without XACK = %v, want ErrPermission naming XACK", err)
	}
	if n, err := rc.Do(ctx, rc.B().Xlen().Key(admin.Keys().DeadLetter("b")).Build()).AsInt64(); err != nil || n > 2 {
		t.Fatalf("dead letters = %d, %v; want at most one per entry", n, err)
	}

	// Without XINFO the stream gauges are left out, but Redis is up.
	noinfo := redistest.Connect(t, bus.Config{URL: srv.URL, Username: "noinfo", Password: "pw"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(prom.NewStreamCollector(inspect.New(noinfo), "b"))
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`# HELP mycelium_redis_up 1 when Redis answered the last reading of the streams, else 0 (a refused command, such as an ACL without XINFO, leaves that topic's gauges out but Redis up).
# TYPE mycelium_redis_up gauge
mycelium_redis_up 1
`), "mycelium_redis_up"); err != nil {
		t.Fatal(err)
	}
}

// TestForgedRequestCannotAnswerAnotherCaller: someone who can read and
// write the topic copies a waiting caller's correlation id and reply stream
// into a request of their own; the worker answers it, and the caller drops
// that answer (it answers an entry the caller did not write) and gets its
// own.
func TestForgedRequestCannotAnswerAnotherCaller(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	release := make(chan struct{})
	runConsumer(t, c, consumer.Config{Topic: "demo", Concurrency: 4}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		if string(m.Payload) == "real" {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return append([]byte("re:"), m.Payload...), nil
	}))
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := requestAsync(ctx, p, "demo", []byte("real"))
	rc := c.Redis()
	victim := firstRequest(t, ctx, c, "demo")
	forged := victim
	forged.Payload = []byte("forged")
	if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().Topic("demo")).Id("*").FieldValue().FieldValue("m", string(codec.AppendEnvelope(nil, &forged))).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the forged answer dropped", func() bool { return p.Stats().Forged == 1 })
	close(release)
	if reply := <-got; reply != "re:real" {
		t.Fatalf("the caller got %q, want its own answer re:real", reply)
	}
}

// TestSecureModeRunsAsRoles: in make test-secure the suite's servers speak
// TLS only and its producers and workers are the least-privilege users.
func TestSecureModeRunsAsRoles(t *testing.T) {
	if !redistest.Secure() {
		t.Skip("checks make test-secure's setup; runs there")
	}
	srv := redistest.Start(t)
	if !strings.HasPrefix(srv.URL, "rediss://") {
		t.Fatalf("secure mode server at %s, want rediss://", srv.URL)
	}
	pc := redistest.RoleClient(t, srv.Client(t), "producer")
	rc := pc.Redis()
	if err := rc.Do(context.Background(), rc.B().Flushall().Build()).Error(); !redisx.IsPermission(err) {
		t.Fatalf("FLUSHALL as the producer user = %v, want NOPERM", err)
	}
}

// TestAttacksReplayedWithRedisCLI: the two attacks of the security review,
// replayed as an attacker would, with redis-cli against bus-worker serve: a
// crafted reply-to naming a foreign stream (untouched; the entry
// dead-lettered), and a copied correlation id answering a waiting
// bus-worker request (the forged answer is not printed).
func TestAttacksReplayedWithRedisCLI(t *testing.T) {
	srv := redistest.Start(t)
	if srv.TLS != nil {
		t.Skip("redis-cli here speaks plain TCP")
	}
	w := redistest.StartWorker(t, "--redis", srv.URL, "--topic", "demo", "--handler", "sleep:1s")
	cli := func(stdin []byte, args ...string) string {
		t.Helper()
		cmd := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(srv.Port)}, args...)...)
		if stdin != nil {
			cmd.Stdin = strings.NewReader(string(stdin))
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for i := range 20 {
		cli(nil, "XADD", "other:audit", "*", "n", strconv.Itoa(i))
	}
	crafted := codec.Envelope{Kind: codec.KindRequest, ID: "x1", ReplyTo: "other:audit", Deadline: time.Now().Add(time.Minute).UnixNano(), Payload: []byte("evil")}
	cli(codec.AppendEnvelope(nil, &crafted), "-x", "XADD", "myc:{demo}", "*", "m")
	waitFor(t, 10*time.Second, "the crafted entry dead-lettered", func() bool { return cli(nil, "XLEN", "myc:{demo}:dlq") == "1" })
	if n := cli(nil, "XLEN", "other:audit"); n != "20" {
		t.Fatalf("XLEN other:audit = %s, want 20 (untouched)", n)
	}

	// A waiting bus-worker request, and an attacker copying its id.
	req := exec.Command(buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", "demo", "--data", "real", "--timeout", "20s")
	var out redistest.SyncBuffer
	req.Stdout, req.Stderr = &out, &out
	if err := req.Start(); err != nil {
		t.Fatal(err)
	}
	var victim codec.Envelope
	waitFor(t, 10*time.Second, "the request in the stream", func() bool {
		entries, err := srv.Client(t).Redis().Do(context.Background(), srv.Client(t).Redis().B().Xrevrange().Key("myc:{demo}").End("+").Start("-").Count(1).Build()).AsXRange()
		return err == nil && len(entries) == 1 && codec.DecodeEnvelope(entries[0].FieldValues["m"], &victim) == nil && victim.ReplyTo != "other:audit"
	})
	forged := victim
	forged.Payload = []byte("forged")
	cli(codec.AppendEnvelope(nil, &forged), "-x", "XADD", "myc:{demo}", "*", "m")
	if err := req.Wait(); err != nil {
		t.Fatalf("bus-worker request: %v\n%s", err, out.String())
	}
	if got := out.String(); !strings.HasPrefix(got, "real\n") || strings.Contains(got, "forged") {
		t.Fatalf("bus-worker request printed %q, want its own answer", got)
	}
	// The forged copy was written after the real one: its handler (1 s)
	// may end after the caller's answer.
	waitFor(t, 10*time.Second, "the worker handling both requests", func() bool { return w.Stats(t).Handled >= 2 })
}

// TestForgedCancelIgnored: someone who may write a topic's control stream
// (any producer) copies a running request's correlation id and reply
// stream into cancel notices, without the request's token, with a wrong
// one, and pre-cancels the ids the caller will use next: none of it
// cancels anything; the caller's own cancel still does. (Before cancel
// tokens, the copied ids cancelled the running request and the predicted
// ones the next five.)
func TestForgedCancelIgnored(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	release, stuck := make(chan struct{}), make(chan struct{}, 1)
	co := runConsumer(t, c, consumer.Config{Topic: "victim", Concurrency: 4}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		switch string(m.Payload) {
		case "slow": // until released
			select {
			case <-release:
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		case "stuck": // until cancelled
			stuck <- struct{}{}
			<-ctx.Done()
			return nil, context.Cause(ctx)
		}
		return append([]byte("re:"), m.Payload...), nil
	}))
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := requestAsync(ctx, p, "victim", []byte("slow"))
	rc := c.Redis()
	victim := firstRequest(t, ctx, c, "victim")
	if victim.Token.IsZero() {
		t.Fatal("the request carries no cancel token")
	}
	ctl := c.Keys().Control("victim")
	until := strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)
	notice := func(fields ...string) {
		t.Helper()
		cmd := rc.B().Xadd().Key(ctl).Id("*").FieldValue().FieldValue("op", "cancel").FieldValue("until", until)
		for i := 0; i+1 < len(fields); i += 2 {
			cmd = cmd.FieldValue(fields[i], fields[i+1])
		}
		if err := rc.Do(ctx, cmd.Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	wrong := victim.Token
	wrong[0] ^= 1
	notice("id", victim.ID, "to", victim.ReplyTo)                                      // the ids alone
	notice("id", victim.ID, "to", victim.ReplyTo, "tok", string(wrong[:]))             // a guessed token
	notice("id", victim.ID, "to", victim.ReplyTo, "tok", "0123456789abcdef")           // another
	next := victim.ID[:len(victim.ID)-1] + string(rune(victim.ID[len(victim.ID)-1]+1)) // the next correlation id, predicted
	notice("id", next, "to", victim.ReplyTo, "tok", string(victim.Token[:])[:8]+"01234567")
	waitFor(t, 5*time.Second, "the forged notices read", func() bool { return co.Stats().ControlMalformed >= 1 })
	close(release)
	if reply := <-got; reply != "re:slow" {
		t.Fatalf("the caller got %q, want its answer re:slow (a forged notice cancelled it)", reply)
	}
	for i := range 5 {
		if reply, err := p.Request(ctx, "victim", []byte("fast")); err != nil || string(reply) != "re:fast" {
			t.Fatalf("request %d after the forged notices = %q, %v", i, reply, err)
		}
	}
	if s := co.Stats(); s.Cancelled != 0 {
		t.Fatalf("worker stats %+v: something was cancelled", s)
	}
	// The caller's own cancel, which presents the token, still works.
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := p.Request(cctx, "victim", []byte("stuck"))
		done <- err
	}()
	<-stuck // its handler runs
	ccancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Request = %v, want context.Canceled", err)
	}
	waitFor(t, 5*time.Second, "the handler cancelled", func() bool { return co.Stats().Cancelled == 1 })
}

// TestCancelFloodDoesNotStallAWorker: a worker starting with 200,000
// distinct notices on its control stream (written by anyone who may write
// it) reads them in time proportional to their number and serves; before,
// each notice past 50,000 scanned the whole set (100,000 notices: 21 s at
// full CPU before the first answer; 200,000: not serving after 120 s).
func TestCancelFloodDoesNotStallAWorker(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	rc := c.Redis()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctl := c.Keys().Control("flooded")
	until := strconv.FormatInt(time.Now().Add(5*time.Minute).UnixMilli(), 10)
	const n, batch = 200_000, 1000
	began := time.Now()
	for i := 0; i < n; i += batch {
		cmds := make(rueidis.Commands, 0, batch)
		for j := i; j < i+batch; j++ {
			tok := fmt.Sprintf("%016x", j)
			cmds = append(cmds, rc.B().Xadd().Key(ctl).Id("*").FieldValue().FieldValue("op", "cancel").FieldValue("until", until).
				FieldValue("tok", tok).FieldValue("id", "x"+strconv.Itoa(j)).FieldValue("to", "myc:{r.victim}").Build())
		}
		for _, r := range rc.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	written := time.Since(began)
	started := time.Now()
	// Bounded generously (race detector, TLS, a loaded machine); before
	// the fix 100,000 notices took 21 s and 200,000 never finished in 120 s.
	runConsumerWithin(t, time.Minute, c, consumer.Config{Topic: "flooded"}, echo)
	p := newProducer(t, c, producer.Config{WaitForResponders: true})
	if reply, err := p.Request(ctx, "flooded", []byte("hello")); err != nil || string(reply) != "hello" {
		t.Fatalf("Request after the flood = %q, %v", reply, err)
	}
	t.Logf("%d notices written in %v; the worker answered %v after it started", n, written.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
}

// TestRolesIsolateProducers: two producer users made from bus-worker acl's
// rules share a topic; the attacker, alice, tries what the security issue
// found possible with the old roles: reading bob's prompt and answer,
// forging his reply, hijacking his streamed reply, deleting or trimming
// the topic with its group and queued work, replacing his reply stream
// with a list, running its own script. Each is refused; bob gets his
// answer; alice's own requests still work. A worker user may append
// replies but not read them.
func TestRolesIsolateProducers(t *testing.T) {
	if redistest.Secure() {
		t.Skip("makes its own users")
	}
	srv := redistest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	op := aclUser(t, srv, redisx.ACLSpec{Role: "operator", User: "op"})
	if err := redisx.LoadFunctions(ctx, op.Redis()); err != nil {
		t.Fatal(err)
	}
	alice := aclUser(t, srv, redisx.ACLSpec{Role: "producer", User: "alice"})
	bob := aclUser(t, srv, redisx.ACLSpec{Role: "producer", User: "bob", Topics: []string{"demo"}})
	work := aclUser(t, srv, redisx.ACLSpec{Role: "worker", User: "w", Topics: []string{"demo"}})
	release := make(chan struct{})
	runConsumer(t, work, consumer.Config{Topic: "demo", Concurrency: 4}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		if string(m.Payload) == "secret prompt" {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return append([]byte("re:"), m.Payload...), nil
	}))
	pb := newProducer(t, bob, producer.Config{})
	if !strings.HasPrefix(pb.ReplyStream(), "myc:{r.bob.") {
		t.Fatalf("bob's reply stream %q is not under his name", pb.ReplyStream())
	}
	got := requestAsync(ctx, pb, "demo", []byte("secret prompt"))
	admin := srv.Client(t).Redis()
	topicKey := alice.Keys().Topic("demo")
	waitFor(t, 5*time.Second, "bob's request in the stream", func() bool {
		n, err := admin.Do(ctx, admin.B().Xlen().Key(topicKey).Build()).AsInt64()
		return err == nil && n == 1
	})
	rc := alice.Redis()
	refused := func(what string, cmd rueidis.Completed) {
		t.Helper()
		if err := rc.Do(ctx, cmd).Error(); !redisx.IsPermission(err) {
			t.Errorf("alice: %s = %v, want NOPERM", what, err)
		}
	}
	reply := pb.ReplyStream()
	forged := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindReply, ID: "x", Payload: []byte("FORGED")})
	refused("XRANGE of the topic (bob's prompt)", rc.B().Xrange().Key(topicKey).Start("-").End("+").Build())
	refused("XREAD of the topic", rc.B().Xread().Streams().Key(topicKey).Id("0").Build())
	refused("XREADGROUP of the topic", rc.B().Xreadgroup().Group("workers", "evil").Streams().Key(topicKey).Id(">").Build())
	refused("XREAD of bob's reply stream", rc.B().Xread().Streams().Key(reply).Id("0").Build())
	refused("XADD of a forged reply to bob's stream", rc.B().Xadd().Key(reply).Id("*").FieldValue().FieldValue("m", string(forged)).Build())
	refused("DEL of bob's reply stream", rc.B().Del().Key(reply).Build())
	refused("RPUSH onto bob's reply stream key", rc.B().Rpush().Key(reply).Element("x").Build())
	refused("DEL of the topic", rc.B().Del().Key(topicKey).Build())
	refused("PEXPIRE of the topic", rc.B().Pexpire().Key(topicKey).Milliseconds(1).Build())
	refused("XTRIM of the topic", rc.B().Xtrim().Key(topicKey).Maxlen().Threshold("0").Build())
	refused("XGROUP DESTROY", rc.B().XgroupDestroy().Key(topicKey).Group("workers").Build())
	refused("XDEL", rc.B().Xdel().Key(topicKey).Id("0-1").Build())
	refused("EVAL", rc.B().Eval().Script("while true do end").Numkeys(0).Build())
	refused("XREAD of the control stream", rc.B().Xread().Streams().Key(alice.Keys().Control("demo")).Id("0").Build())
	refused("XADD to the dead letters", rc.B().Xadd().Key(alice.Keys().DeadLetter("demo")).Id("*").FieldValue().FieldValue("m", "x").Build())
	// Injected retries (security issue, point 8: a running entry's id
	// added to the retry set ran its handler three times): a producer can
	// write neither the set nor, through the bus's function, a retry.
	refused("ZADD into the topic's retry set", rc.B().Zadd().Key(alice.Keys().Retry("demo")).ScoreMember().ScoreMember(0, "0-1").Build())
	if _, err := redisx.ScheduleRetry(ctx, rc, alice.Keys().Retry("demo"), "0-1", 0); err == nil {
		t.Error("alice: scheduling a retry through the bus's function succeeded")
	}
	// A bus function run as alice does only what alice may: purge's XLEN
	// and DEL of the topic are refused inside it.
	if err := rc.Do(ctx, rc.B().Fcall().Function("myc_purge_"+strings.TrimPrefix(redisx.LibraryName(), "mycelium_")).Numkeys(1).Key(topicKey).Build()).Error(); err == nil {
		t.Error("alice: FCALL of the purge function on the topic succeeded")
	}
	// Bob may not even write another topic.
	brc := bob.Redis()
	if err := brc.Do(ctx, brc.B().Xadd().Key(bob.Keys().Topic("other")).Id("*").FieldValue().FieldValue("m", "x").Build()).Error(); !redisx.IsPermission(err) {
		t.Errorf("bob (granted demo only): XADD to another topic = %v, want NOPERM", err)
	}
	// The worker appends replies, and reads none.
	wrc := work.Redis()
	if err := wrc.Do(ctx, wrc.B().Xread().Streams().Key(reply).Id("0").Build()).Error(); !redisx.IsPermission(err) {
		t.Errorf("worker: XREAD of a reply stream = %v, want NOPERM", err)
	}
	// Alice's own work is untouched; bob gets his own answer.
	pa := newProducer(t, alice, producer.Config{})
	if r, err := pa.Request(ctx, "demo", []byte("hers")); err != nil || string(r) != "re:hers" {
		t.Fatalf("alice's own request = %q, %v", r, err)
	}
	close(release)
	if r := <-got; r != "re:secret prompt" {
		t.Fatalf("bob got %q", r)
	}
}

// TestPlantedFlightWaiterDropped: someone who may write a topic's flight
// markers (any producer of it) reads a cached caller's waiter from one
// marker and plants it in the marker of a flight of their own: the worker
// answers the planted waiter with the attacker's answer, and the victim
// drops it (it names another cache entry) and gets its own (security
// issue, point 5: "NO, FORGED via flight" was accepted).
func TestPlantedFlightWaiterDropped(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	release := make(chan struct{})
	runConsumer(t, c, consumer.Config{Topic: "chat", Concurrency: 4}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		if string(m.Payload) == "victim" {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if string(m.Payload) == "attacker" {
			return []byte("NO, FORGED via flight"), nil
		}
		return append([]byte("re:"), m.Payload...), nil
	}))
	cached := producer.Config{Cache: map[string]producer.CacheConfig{"chat": {}}}
	victim, attacker := newProducer(t, c, cached), newProducer(t, c, cached)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := requestAsync(ctx, victim, "chat", []byte("victim"))
	rc := c.Redis()
	env := firstRequest(t, ctx, c, "chat")
	// The attacker's own flight: a marker for its payload's entry, with
	// the victim's waiter planted in it, then its request.
	mine := bus.CacheEntryID(0, bus.HashPayload([]byte("attacker")))
	flight := c.Keys().Flight("chat", mine)
	deadline := strconv.FormatInt(time.Now().Add(20*time.Second).UnixMilli(), 10)
	if err := rc.Do(ctx, rc.B().Rpush().Key(flight).Element(deadline, env.ReplyTo+" "+env.ID).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	forged := codec.Envelope{Kind: codec.KindRequest, ID: "x1", ReplyTo: attacker.ReplyStream(), Deadline: time.Now().Add(20 * time.Second).UnixNano(),
		Payload: []byte("attacker"), CacheKey: mine, CacheTTL: int64(time.Minute)}
	if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().Topic("chat")).Id("*").FieldValue().FieldValue("m", string(codec.AppendEnvelope(nil, &forged))).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the planted answer dropped by the victim", func() bool { return victim.Stats().Forged == 1 })
	close(release)
	if r := <-got; r != "re:victim" {
		t.Fatalf("the victim got %q, want its own answer", r)
	}
}

// TestPlantedFutureGenerationDeleted: a request naming a cache generation
// to come (someone who may write the topic) gets its answer stored for a
// moment only: the worker sees the topic's generation and deletes it, so
// a later flush does not serve it (security issue, point 6: "PLANTED: pay
// account 666" after cache flush).
func TestPlantedFutureGenerationDeleted(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	co := runConsumer(t, c, consumer.Config{Topic: "bank"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		return m.Payload, nil
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{"bank": {}}})
	rc := c.Redis()
	question := []byte("what is my account?")
	h := bus.HashPayload(question)
	for gen := uint64(1); gen <= 3; gen++ {
		planted := codec.Envelope{Kind: codec.KindRequest, ID: "p" + strconv.FormatUint(gen, 10), ReplyTo: p.ReplyStream(),
			Deadline: time.Now().Add(20 * time.Second).UnixNano(), Payload: []byte("PLANTED: pay account 666"),
			CacheKey: bus.CacheEntryID(gen, h), CacheTTL: int64(time.Hour)}
		if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().Topic("bank")).Id("*").FieldValue().FieldValue("m", string(codec.AppendEnvelope(nil, &planted))).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the planted answers deleted", func() bool { return co.Stats().CacheStale == 3 })
	for gen := uint64(1); gen <= 3; gen++ {
		if n, err := rc.Do(ctx, rc.B().Exists().Key(c.Keys().Cache("bank", bus.CacheEntryID(gen, h))).Build()).AsInt64(); err != nil || n != 0 {
			t.Fatalf("planted answer of generation %d still stored (%d, %v)", gen, n, err)
		}
	}
	ins := inspect.New(c)
	for range 3 {
		if _, err := ins.FlushCache(ctx, "bank"); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := p.Request(ctx, "bank", question); err != nil || string(got) != string(question) {
		t.Fatalf("after three flushes the caller got %q, %v; want the handler's answer", got, err)
	}
}

// TestFlightWaitersBoundedInTheWorker: a marker pushed far past the
// begin function's cap (someone who may write it) costs the worker at
// most MaxFlightWaiters replies (security issue, point 7: 300,000 waiters
// took a worker to 996 MiB RSS and 300k replies).
func TestFlightWaitersBoundedInTheWorker(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	co := runConsumer(t, c, consumer.Config{Topic: "flood"}, echo)
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := p.Request(ctx, "flood", []byte("warm")); err != nil { // creates its reply stream
		t.Fatal(err)
	}
	rc := c.Redis()
	entry := bus.CacheEntryID(0, bus.HashPayload([]byte("q")))
	flight := c.Keys().Flight("flood", entry)
	if err := rc.Do(ctx, rc.B().Rpush().Key(flight).Element(strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	const pushed = redisx.MaxFlightWaiters + 5000
	for i := 0; i < pushed; i += 1000 {
		els := make([]string, 1000)
		for j := range els {
			els[j] = p.ReplyStream() + " w" + strconv.Itoa(i+j)
		}
		if err := rc.Do(ctx, rc.B().Rpush().Key(flight).Element(els...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	req := codec.Envelope{Kind: codec.KindRequest, ID: "lead", ReplyTo: p.ReplyStream(), Deadline: time.Now().Add(time.Minute).UnixNano(),
		Payload: []byte("q"), CacheKey: entry, CacheTTL: int64(time.Minute)}
	if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().Topic("flood")).Id("*").FieldValue().FieldValue("m", string(codec.AppendEnvelope(nil, &req))).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the flight settled", func() bool {
		n, err := rc.Do(ctx, rc.B().Exists().Key(flight).Build()).AsInt64()
		return err == nil && n == 0 && co.Stats().Flushes >= 2
	})
	waitFor(t, 30*time.Second, "the joined replies written", func() bool { return co.Stats().CoalescedReplies >= redisx.MaxFlightWaiters })
	if n := co.Stats().CoalescedReplies; n > redisx.MaxFlightWaiters {
		t.Fatalf("the worker wrote %d joined replies, want at most %d", n, redisx.MaxFlightWaiters)
	}
}

// requestAsync sends a request on its own goroutine; the channel gets its
// reply, or its error's text.
func requestAsync(ctx context.Context, p *producer.Producer, topic string, payload []byte) <-chan string {
	got := make(chan string, 1)
	go func() {
		reply, err := p.Request(ctx, topic, payload)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(reply)
	}()
	return got
}

// firstRequest waits for the first entry of topic's stream and decodes it:
// what an attacker with read access to the topic sees of a caller.
func firstRequest(t *testing.T, ctx context.Context, c *bus.Client, topic string) codec.Envelope {
	t.Helper()
	rc := c.Redis()
	var env codec.Envelope
	waitFor(t, 5*time.Second, "the caller's request in the stream", func() bool {
		entries, err := rc.Do(ctx, rc.B().Xrange().Key(c.Keys().Topic(topic)).Start("-").End("+").Build()).AsXRange()
		return err == nil && len(entries) > 0 && codec.DecodeEnvelope(entries[0].FieldValues["m"], &env) == nil
	})
	return env
}

// TestReplyRefusedLeavesTheRequestPending: Redis out of memory
// (maxmemory, noeviction) refuses a reply; the request is not acknowledged
// (before, its XACK, pipelined with the reply and not refused by OOM, went
// through: pending 0 and the caller waited its whole timeout though memory
// was back), so once memory is back it is delivered again and the caller
// gets its answer (security issue, point 9).
func TestReplyRefusedLeavesTheRequestPending(t *testing.T) {
	srv := redistest.Start(t, "--maxmemory-policy", "noeviction")
	c := srv.Client(t)
	admin := c.Redis()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	started := make(chan struct{}, 4)
	release := make(chan struct{})
	co := runConsumer(t, c, consumer.Config{Topic: "oom", Reclaim: consumer.ReclaimConfig{ClaimIdle: 500 * time.Millisecond}}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		started <- struct{}{}
		if m.Attempt == 1 {
			<-release
		}
		return append([]byte("re:"), m.Payload...), nil
	}))
	p := newProducer(t, c, producer.Config{})
	got := requestAsync(ctx, p, "oom", []byte("q"))
	<-started
	// Memory is now over the limit: every write that may grow it is refused.
	info, err := admin.Do(ctx, admin.B().Info().Section("memory").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	used := ""
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			used = v
		}
	}
	n, _ := strconv.ParseInt(used, 10, 64)
	if err := admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", strconv.FormatInt(n/2, 10)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	close(release)
	waitFor(t, 10*time.Second, "the reply refused", func() bool { return co.Stats().ReplyDropped >= 1 })
	pending, err := redisx.Groups(ctx, admin, c.Keys().Topic("oom"))
	if err != nil || len(pending) != 1 || pending[0].Pending != 1 {
		t.Fatalf("groups after the refused reply = %+v, %v; want the request still pending", pending, err)
	}
	if err := admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", "0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r != "re:q" {
		t.Fatalf("the caller got %q; want its answer once memory was back", r)
	}
}
