package bus

import (
	"strings"
	"testing"
)

func TestCacheHashes(t *testing.T) {
	p, k := HashPayload([]byte("hello")), HashKey("hello")
	if len(p) != 32 || len(k) != 32 || p == k {
		t.Fatalf("HashPayload = %q, HashKey = %q: want two different 32-digit hashes", p, k)
	}
	if HashPayload([]byte("hello")) != p || PayloadDigest([]byte("hello")).Hash() != p {
		t.Fatal("hashes are not stable")
	}
	// The same for every client: the first half of SHA-256("p" + payload).
	if p != "187a5db1fb3f6bac562ca96ff645fd04" { // python3: hashlib.sha256(b"phello").hexdigest()[:32]
		t.Fatalf("HashPayload(hello) = %s", p)
	}
	id := CacheEntryID(7, p)
	gen, h, ok := ParseCacheEntryID(id)
	if !ok || gen != 7 || h != p {
		t.Fatalf("ParseCacheEntryID(%q) = %d, %q, %v", id, gen, h, ok)
	}
	for _, bad := range []string{"", "7", "7:", ":" + string(p), "x:" + string(p), "7:" + strings.ToUpper(string(p)), "7:" + string(p) + "0", "-1:" + string(p), "99999999999999999999:" + string(p)} {
		if _, _, ok := ParseCacheEntryID(bad); ok {
			t.Errorf("ParseCacheEntryID(%q) accepted", bad)
		}
	}
	k2 := Keys{Prefix: "app"}
	if got := k2.Cache("t", id); got != "app:{t}:c:"+id {
		t.Fatalf("Cache key = %q", got)
	}
	if got := k2.CachePattern("a*b", true); got != `app:{a\*b}:f:*` {
		t.Fatalf("CachePattern = %q", got)
	}
	if _, ok := k2.ParseTopic(k2.Meta("t")); ok {
		t.Fatal("a meta key parsed as a topic")
	}
}

// FuzzParseCacheEntryID: an entry id read from a stream never panics the
// parser, and what it accepts names exactly one key under the topic.
func FuzzParseCacheEntryID(f *testing.F) {
	f.Add("0:" + string(HashPayload(nil)))
	f.Add("18446744073709551615:0123456789abcdef0123456789abcdef")
	f.Add("1:../../x")
	f.Fuzz(func(t *testing.T, id string) {
		gen, h, ok := ParseCacheEntryID(id)
		if !ok {
			return
		}
		if CacheEntryID(gen, h) != id {
			t.Fatalf("ParseCacheEntryID(%q) = %d, %q: does not round-trip", id, gen, h)
		}
		if strings.ContainsAny(id, "{}* \n") {
			t.Fatalf("accepted %q", id)
		}
	})
}

// TestLevelKeys: level 0 is the partition's own stream; the others share
// its hash tag and parse back; nothing else parses as a level.
func TestLevelKeys(t *testing.T) {
	k := Keys{}
	if k.Level("t#2", 0) != k.Topic("t#2") || k.LevelDelayed("t", 0) != k.Delayed("t") || k.LevelRetry("t", 0) != k.Retry("t") {
		t.Fatal("level 0 must be the partition's own keys")
	}
	if got := k.Level("t#2", 3); got != "myc:{t#2}:p3" {
		t.Fatalf("Level = %q", got)
	}
	if got := k.LevelDelayed("t", 1); got != "myc:{t}:p1:delayed" {
		t.Fatalf("LevelDelayed = %q", got)
	}
	if p, l, ok := k.ParseLevel(k.Level("t#2", 9)); !ok || p != "t#2" || l != 9 {
		t.Fatalf("ParseLevel = %q %d %v", p, l, ok)
	}
	for _, key := range []string{k.Topic("t"), k.LevelDelayed("t", 1), "myc:{t}:p0", "myc:{t}:p12", "myc:{t}:px", "myc:{r.x}:p1", "other:{t}:p1", k.Meta("t")} {
		if _, _, ok := k.ParseLevel(key); ok {
			t.Errorf("ParseLevel(%q) accepted", key)
		}
	}
}
