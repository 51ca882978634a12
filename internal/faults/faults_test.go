package faults

import (
	"context"
	"errors"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

func client(t *testing.T) (*miniredis.Miniredis, rueidis.Client) {
	t.Helper()
	m := miniredis.RunT(t)
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{m.Addr()}, ForceSingleClient: true, DisableCache: true,
		ClientSetInfo: rueidis.DisableClientSetInfo})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return m, c
}

// TestCutNeverSplitsATransaction: a cut that falls inside a MULTI/EXEC
// falls before its MULTI, so the server never runs part of it; the
// commands before it run.
func TestCutNeverSplitsATransaction(t *testing.T) {
	m, rc := client(t)
	f := NewFaults()
	c := f.Wrap(rc)
	f.Cut(3) // inside the transaction below
	res := c.DoMulti(context.Background(),
		c.B().Set().Key("a").Value("1").Build(),
		c.B().Multi().Build(),
		c.B().Set().Key("b").Value("2").Build(),
		c.B().Set().Key("c").Value("3").Build(),
		c.B().Exec().Build())
	if err := res[0].Error(); err != nil {
		t.Fatalf("the command before the cut: %v", err)
	}
	for i, r := range res[1:] {
		if !errors.Is(r.Error(), ErrDropped) {
			t.Errorf("command %d after the cut: %v, want ErrDropped", i+1, r.Error())
		}
	}
	if m.Exists("b") || m.Exists("c") || !m.Exists("a") {
		t.Fatalf("keys a %v, b %v, c %v: want only a", m.Exists("a"), m.Exists("b"), m.Exists("c"))
	}
	if f.Cuts() != 1 {
		t.Fatalf("Cuts = %d, want 1", f.Cuts())
	}
}

// TestReplyIsARedisErrorReply: an injected reply is the server's error
// reply (a rueidis.RedisError), the right number of times; Down drops
// commands as a lost connection.
func TestReplyIsARedisErrorReply(t *testing.T) {
	_, rc := client(t)
	f := NewFaults()
	c := f.Wrap(rc)
	ctx := context.Background()
	f.Reply("get", "NOPERM no", 1)
	err := c.Do(ctx, c.B().Get().Key("x").Build()).Error()
	if re, ok := rueidis.IsRedisErr(err); !ok || re.Error() != "NOPERM no" {
		t.Fatalf("Do(GET) = %v, want the error reply NOPERM no", err)
	}
	if err := c.Do(ctx, c.B().Get().Key("x").Build()).Error(); !rueidis.IsRedisNil(err) {
		t.Fatalf("second GET = %v, want nil (the reply was for one command)", err)
	}
	f.Down("GET")
	if err := c.Do(ctx, c.B().Get().Key("x").Build()).Error(); !errors.Is(err, ErrDropped) {
		t.Fatalf("GET while down = %v, want ErrDropped", err)
	}
	f.Up()
	if f.Seen("GET") != 1 {
		t.Fatalf("Seen(GET) = %d, want 1 (only the second reached the server)", f.Seen("GET"))
	}
}
