package consumer

import (
	"strings"
	"testing"

	"github.com/egos/mycelium/bus"
)

// FuzzWaiter: a flight marker's element (anyone who can write the topic's
// keys can put anything there) is accepted only if it names one of this
// bus's reply streams, so a worker never writes a reply outside them.
func FuzzWaiter(f *testing.F) {
	c := &acker{env: &env{keys: bus.Keys{Prefix: "myc"}}}
	f.Add("myc:{r.abc} p1-5")
	f.Add("myc:{audit} 1")
	f.Add("other:{r.x} 1")
	f.Add("myc:{r.a b} 2")
	f.Fuzz(func(t *testing.T, w string) {
		replyTo, id, ok := c.waiter(w)
		if !ok {
			return
		}
		if _, isReply := c.keys.ParseReply(replyTo); !isReply || !strings.HasPrefix(replyTo, "myc:{r.") {
			t.Fatalf("waiter(%q) accepted reply stream %q", w, replyTo)
		}
		if id == "" || strings.Contains(id, " ") || len(id) > 64 {
			t.Fatalf("waiter(%q) accepted id %q", w, id)
		}
	})
}

func TestWaiter(t *testing.T) {
	c := &acker{env: &env{keys: bus.Keys{Prefix: "myc"}}}
	for w, want := range map[string]bool{
		"myc:{r.abc} p1-5": true, "myc:{audit} 1": false, "myc:{reasoning}:dlq 1": false, "other:{r.x} 1": false,
		"myc:{r.abc}": false, "myc:{r.abc} ": false, " 1": false, "myc:{r.abc} " + strings.Repeat("x", 65): false,
	} {
		if _, _, ok := c.waiter(w); ok != want {
			t.Errorf("waiter(%q) ok = %v, want %v", w, ok, want)
		}
	}
}
