package bus

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"zero value", Config{}, ""},
		{"redis with auth and db", Config{URL: "redis://user:secret@10.0.0.1:6380/2"}, ""},
		{"tls", Config{URL: "rediss://cache.internal:6380"}, ""},
		{"wrong scheme", Config{URL: "http://localhost:6379"}, "scheme must be"},
		{"unix scheme", Config{URL: "unix:///tmp/redis.sock"}, "scheme must be"},
		{"no host", Config{URL: "redis://"}, "missing host"},
		{"empty port", Config{URL: "redis://localhost:"}, "empty port"},
		{"bad db", Config{URL: "redis://localhost:6379/abc"}, "invalid database number"},
		{"garbage", Config{URL: "redis://local host"}, "redis URL"},
		{"negative timeout", Config{DialTimeout: -time.Second}, "DialTimeout"},
		{"negative pool", Config{BlockingPoolSize: -1}, "BlockingPoolSize"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate(%+v) = %v, want nil", tt.cfg, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate(%+v) = %v, want ErrInvalidConfig mentioning %q", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestClientOptionRespectsMeasuredFacts(t *testing.T) {
	opt, err := Config{URL: "redis://:pw@127.0.0.1:7000/3", ClientName: "w1"}.ClientOption()
	if err != nil {
		t.Fatal(err)
	}
	if !opt.ForceSingleClient || !opt.DisableCache {
		t.Errorf("ForceSingleClient=%v DisableCache=%v, want both true", opt.ForceSingleClient, opt.DisableCache)
	}
	if opt.ReadBufferEachConn != DefaultConnBuffer || opt.WriteBufferEachConn != DefaultConnBuffer {
		t.Errorf("buffers = %d/%d, want %d", opt.ReadBufferEachConn, opt.WriteBufferEachConn, DefaultConnBuffer)
	}
	if opt.BlockingPoolSize != DefaultBlockingPoolSize || opt.ConnWriteTimeout != DefaultWriteTimeout {
		t.Errorf("pool=%d writeTimeout=%v", opt.BlockingPoolSize, opt.ConnWriteTimeout)
	}
	if opt.InitAddress[0] != "127.0.0.1:7000" || opt.SelectDB != 3 || opt.Password != "pw" || opt.ClientName != "w1" {
		t.Errorf("parsed %v db=%d pw=%q name=%q", opt.InitAddress, opt.SelectDB, opt.Password, opt.ClientName)
	}
	if got := (Config{URL: "redis://:pw@h:1"}).Redacted(); strings.Contains(got, "pw") {
		t.Errorf("Redacted() = %q leaks the password", got)
	}
	if opt.MaxFlushDelay != DefaultMaxFlushDelay {
		t.Errorf("MaxFlushDelay = %v, want the default %v", opt.MaxFlushDelay, DefaultMaxFlushDelay)
	}
	for set, want := range map[time.Duration]time.Duration{20 * time.Microsecond: 20 * time.Microsecond, -1: 0} {
		if o, _ := (Config{MaxFlushDelay: set}).ClientOption(); o.MaxFlushDelay != want {
			t.Errorf("MaxFlushDelay %v gave %v, want %v", set, o.MaxFlushDelay, want)
		}
	}
	tlsOpt, _ := Config{URL: "rediss://h:1"}.ClientOption()
	if tlsOpt.TLSConfig == nil || tlsOpt.TLSConfig.ServerName != "h" {
		t.Errorf("rediss:// TLSConfig = %+v", tlsOpt.TLSConfig)
	}
}

func TestKeys(t *testing.T) {
	k := Keys{}
	for got, want := range map[string]string{
		k.Topic("reasoning"):             "myc:{reasoning}",
		k.Reply("ab12"):                  "myc:{r.ab12}",
		k.DeadLetter("reasoning"):        "myc:{reasoning}:dlq",
		Keys{Prefix: "x"}.Topic("t"):     "x:{t}",
		Keys{Prefix: "x"}.TopicPattern(): "x:{*",
	} {
		if got != want {
			t.Errorf("key = %q, want %q", got, want)
		}
	}
	for key, want := range map[string]string{"myc:{reasoning}": "reasoning", "myc:{r.ab}": "", "myc:{t}:dlq": "", "other:{t}": ""} {
		got, ok := k.ParseTopic(key)
		if got != want || ok != (want != "") {
			t.Errorf("ParseTopic(%q) = %q, %v; want %q", key, got, ok, want)
		}
	}
	for _, bad := range []string{"", "a{b", "a}b", "a b", "a\nb", strings.Repeat("x", 201)} {
		if err := ValidateName("topic", bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidConfig", bad, err)
		}
	}
	if err := ValidateName("topic", "reasoning.v2-eu_1"); err != nil {
		t.Errorf("ValidateName(ok) = %v", err)
	}
}

func TestIDTime(t *testing.T) {
	if tm, ok := IDTime("1700000000123-4"); !ok || tm.UnixMilli() != 1700000000123 {
		t.Errorf("IDTime = %v, %v", tm, ok)
	}
	for _, bad := range []string{"", "abc", "x-1"} {
		if _, ok := IDTime(bad); ok {
			t.Errorf("IDTime(%q) ok, want false", bad)
		}
	}
}

// miniClient starts a miniredis and a client of it, both closed with t.
func miniClient(t *testing.T) (*miniredis.Miniredis, rueidis.Client) {
	t.Helper()
	m := miniredis.RunT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Connect(ctx, Config{URL: "redis://" + m.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return m, c
}

func TestStreamPortOnMiniredis(t *testing.T) {
	_, c := miniClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	if _, err := ReadGroup(ctx, c, "s", "g", "c1", ">", 10, 10*time.Millisecond); !errors.Is(err, ErrNoGroup) {
		t.Fatalf("ReadGroup without a group = %v, want ErrNoGroup", err)
	}
	for range 2 { // the second create meets BUSYGROUP, which is success
		if err := CreateGroup(ctx, c, "s", "g", "0"); err != nil {
			t.Fatalf("CreateGroup = %v", err)
		}
	}
	if ok, err := GroupExists(ctx, c, "s", "g"); !ok || err != nil {
		t.Fatalf("GroupExists = %v, %v", ok, err)
	}
	if ok, err := GroupExists(ctx, c, "missing", "g"); ok || err != nil {
		t.Fatalf("GroupExists(missing stream) = %v, %v; want false, nil", ok, err)
	}
	if err := c.Do(ctx, AddCmd(c, "s", MaxLen(100), false, []byte("payload"))).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, AddFieldsCmd(c, "s", Cap{}, "x", "1", "y", "2")).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, AddCmd(c, "gone", Cap{}, true, []byte("p"))).Error(); err == nil {
		t.Fatal("XADD NOMKSTREAM on a missing stream returned a value, want nil")
	}
	got, err := ReadGroup(ctx, c, "s", "g", "c1", ">", 10, 10*time.Millisecond)
	if err != nil || len(got) != 2 {
		t.Fatalf("ReadGroup = %d entries, %v; want 2", len(got), err)
	}
	if !got[0].HasData || got[0].Data != "payload" {
		t.Errorf("entry 0 = %+v", got[0])
	}
	if got[1].HasData || strings.Join(got[1].Fields(), ",") != "x,1,y,2" {
		t.Errorf("entry 1 = %+v fields %v", got[1], got[1].Fields())
	}
	if n, err := c.Do(ctx, AckCmd(c, "s", "g", got[0].ID, got[1].ID)).AsInt64(); n != 2 || err != nil {
		t.Errorf("XACK = %d, %v", n, err)
	}
	empty, err := ReadGroup(ctx, c, "s", "g", "c1", ">", 10, 10*time.Millisecond)
	if err != nil || empty != nil {
		t.Errorf("ReadGroup on a drained stream = %v, %v; want nil, nil", empty, err)
	}
	all, err := Read(ctx, c, "s", "0-0", 10, 10*time.Millisecond)
	if err != nil || len(all) != 2 {
		t.Errorf("Read = %d, %v", len(all), err)
	}
	groups, err := Groups(ctx, c, "s")
	if err != nil || len(groups) != 1 || groups[0].Name != "g" || groups[0].Pending != 0 {
		t.Errorf("Groups = %+v, %v", groups, err)
	}
	// A consumer miniredis never saw act reports idle -1: no idle time, not
	// a negative one.
	if err := c.Do(ctx, c.B().XgroupCreateconsumer().Key("s").Group("g").Consumer("c2").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	consumers, err := Consumers(ctx, c, "s", "g")
	if err != nil || len(consumers) != 2 {
		t.Fatalf("Consumers = %+v, %v; want c1 and c2", consumers, err)
	}
	for _, ci := range consumers {
		if ci.Idle < 0 {
			t.Errorf("consumer %s idle %v, want >= 0", ci.Name, ci.Idle)
		}
	}
	// A group that does not exist on an existing stream: ErrNoGroup from
	// every group command, so callers know to recreate it.
	if _, err := Consumers(ctx, c, "s", "nog"); !errors.Is(err, ErrNoGroup) {
		t.Errorf("Consumers(missing group) = %v, want ErrNoGroup", err)
	}
	if _, err := PendingOf(ctx, c, "s", "nog", "-", "+", 10, ""); !errors.Is(err, ErrNoGroup) {
		t.Errorf("PendingOf(missing group) = %v, want ErrNoGroup", err)
	}
	if _, _, _, err := AutoClaim(ctx, c, "s", "nog", "c1", time.Millisecond, "0-0", 10); !errors.Is(err, ErrNoGroup) {
		t.Errorf("AutoClaim(missing group) = %v, want ErrNoGroup", err)
	}
}

func TestReadCancelReturnsPromptly(t *testing.T) {
	m := miniredis.RunT(t)
	c, err := Connect(context.Background(), Config{URL: "redis://" + m.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := CreateGroup(context.Background(), c, "s", "g", "$"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := ReadGroup(ctx, c, "s", "g", "c", ">", 1, time.Minute)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled ReadGroup = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadGroup with BLOCK 60s ignored cancellation")
	}
}

func TestUnavailable(t *testing.T) {
	m := miniredis.RunT(t)
	ctx := context.Background()
	c, err := Connect(ctx, Config{URL: "redis://" + m.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m.Set("str", "x")
	// WRONGTYPE: a real error reply. (Not XLEN: on miniredis 2.40.0 an XLEN
	// of a non-stream key sends an extra reply and rueidis panics with
	// "protocol bug, message handled out of order".)
	reply := c.Do(ctx, c.B().Lpush().Key("str").Element("a").Build()).Error()
	if reply == nil || errors.Is(Unavailable(reply), ErrUnavailable) {
		t.Fatalf("Unavailable(%v) marked a Redis error reply as unavailable", reply)
	}
	_, conn := Connect(ctx, Config{URL: "redis://127.0.0.1:1"}) // nothing listens there
	if conn == nil || !errors.Is(Unavailable(conn), ErrUnavailable) || !errors.Is(Unavailable(conn), conn) {
		t.Fatalf("Unavailable(%v) = %v, want ErrUnavailable wrapping it", conn, Unavailable(conn))
	}
	if Unavailable(nil) != nil {
		t.Error("Unavailable(nil) != nil")
	}
	for _, e := range []error{context.Canceled, context.DeadlineExceeded} {
		if got := Unavailable(e); errors.Is(got, ErrUnavailable) || !errors.Is(got, e) {
			t.Errorf("Unavailable(%v) = %v, want it unchanged", e, got)
		}
	}
}
