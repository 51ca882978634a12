package bus

import (
	"errors"
	"strings"
	"testing"
	"time"
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
		{"prefix with a brace", Config{Prefix: "a{b"}, "prefix name"},
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
	opt, err := Config{URL: "redis://:pw@127.0.0.1:7000/3", ClientName: "w1"}.clientOption()
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
		if o, _ := (Config{MaxFlushDelay: set}).clientOption(); o.MaxFlushDelay != want {
			t.Errorf("MaxFlushDelay %v gave %v, want %v", set, o.MaxFlushDelay, want)
		}
	}
	tlsOpt, _ := Config{URL: "rediss://h:1"}.clientOption()
	if tlsOpt.TLSConfig == nil || tlsOpt.TLSConfig.ServerName != "h" {
		t.Errorf("rediss:// TLSConfig = %+v", tlsOpt.TLSConfig)
	}
}

func TestKeys(t *testing.T) {
	k := Keys{}
	for got, want := range map[string]string{
		k.Topic("reasoning"):         "myc:{reasoning}",
		k.Reply("ab12"):              "myc:{r.ab12}",
		k.DeadLetter("reasoning"):    "myc:{reasoning}:dlq",
		Keys{Prefix: "x"}.Topic("t"): "x:{t}",
		Keys{Prefix: "x"}.Pattern():  "x:{*",
	} {
		if got != want {
			t.Errorf("key = %q, want %q", got, want)
		}
	}
	for _, tc := range []struct {
		key                 string
		topic, dlq, replyOf string // "" = not that kind of key
	}{
		{key: "myc:{reasoning}", topic: "reasoning"},
		{key: "myc:{r.ab}", replyOf: "ab"},
		{key: "myc:{t}:dlq", dlq: "t"},
		{key: "myc:{r.ab}:dlq"},
		{key: "myc:{}"},
		{key: "myc:{a{b}"},
		{key: "other:{t}"},
		{key: "other:{t}:dlq"},
		{key: "myc:t"},
	} {
		for _, p := range []struct {
			name  string
			parse func(string) (string, bool)
			want  string
		}{{"ParseTopic", k.ParseTopic, tc.topic}, {"ParseDeadLetter", k.ParseDeadLetter, tc.dlq}, {"ParseReply", k.ParseReply, tc.replyOf}} {
			got, ok := p.parse(tc.key)
			if got != p.want || ok != (p.want != "") {
				t.Errorf("%s(%q) = %q, %v; want %q", p.name, tc.key, got, ok, p.want)
			}
		}
		if tc.topic != "" && k.Topic(tc.topic) != tc.key || tc.dlq != "" && k.DeadLetter(tc.dlq) != tc.key || tc.replyOf != "" && k.Reply(tc.replyOf) != tc.key {
			t.Errorf("%q does not round-trip through its builder", tc.key)
		}
	}
	for _, bad := range []string{"", "a{b", "a}b", "a b", "a\nb", strings.Repeat("x", 201), "r.x", "caf\xe9", "x\x1b[31m"} {
		if err := ValidateName("topic", bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidConfig", bad, err)
		}
	}
	for _, bad := range []string{"a*", "x?", "[p]", `a\b`} {
		if err := ValidateName("prefix", bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ValidateName(prefix, %q) = %v, want ErrInvalidConfig", bad, err)
		}
	}
	for _, ok := range [][2]string{{"topic", "reasoning.v2-eu_1"}, {"topic", "r"}, {"topic", "rx.y"}, {"producer", "r.x"}} {
		if err := ValidateName(ok[0], ok[1]); err != nil {
			t.Errorf("ValidateName(%q, %q) = %v", ok[0], ok[1], err)
		}
	}
}

// TestURLErrorsNeverShowThePassword: every kind of bad URL (issue 15's list)
// fails without the password in the error.
func TestURLErrorsNeverShowThePassword(t *testing.T) {
	for _, raw := range []string{
		"redis://:S3cretPW@127.0.0.1:abc", "http://:S3cretPW@127.0.0.1:6379", "redis://:S3cretPW@127.0.0.1:",
		"redis://:S3cretPW@", "redis://:S3cretPW@127.0.0.1:6379/x", "redis://:S3cretPW%zz@127.0.0.1:6379",
		"redis://:S3cretPW@[::1", "redis://user:S3cretPW@127.0.0.1:abc/0",
		// Unencoded '/', '#', '?' in the password (security issue, point
		// 11: the part before the character was printed as a port).
		"redis://user:S3cretPW/ret9@127.0.0.1:6379", "redis://user:S3cretPW#x@127.0.0.1:6379", "redis://user:S3cretPW?x@127.0.0.1:6379",
		"redis://user:1234/S3cretPW@127.0.0.1:6379", "redis://:S3cretPW/@127.0.0.1:6379/0",
	} {
		err := Config{URL: raw}.Validate()
		if err == nil {
			t.Errorf("Validate(%q) = nil, want an error", raw)
			continue
		}
		if strings.Contains(err.Error(), "S3cretPW") || strings.Contains(err.Error(), "zz") || strings.Contains(err.Error(), "ret9") || strings.Contains(err.Error(), "1234") {
			t.Errorf("Validate(%q) = %q: shows the password", raw, err)
		}
		if r := (Config{URL: raw}).Redacted(); strings.Contains(r, "S3cretPW") {
			t.Errorf("Redacted(%q) = %q", raw, r)
		}
	}
}
