package cli

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
)

func TestOneLine(t *testing.T) {
	if got := OneLine("a\n  b\tc \n"); got != "a b c" {
		t.Fatalf("OneLine = %q", got)
	}
}

func TestStartEmbeddedMovesPastATakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	m, err := StartEmbedded(taken)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Port() == strconv.Itoa(taken) {
		t.Fatalf("started on the taken port %d", taken)
	}
	any, err := StartEmbedded(0)
	if err != nil {
		t.Fatal(err)
	}
	any.Close()
}

func TestConnectSaysWhatFailedInOneLine(t *testing.T) {
	_, err := Connect(context.Background(), bus.Config{URL: "redis://:S3cret@127.0.0.1:1"}) // nothing listens there
	if err == nil || strings.Contains(err.Error(), "S3cret") || strings.Contains(err.Error(), "\n") ||
		!strings.HasPrefix(err.Error(), "cannot reach Redis at redis://:xxxxx@127.0.0.1:1: ") {
		t.Fatalf("Connect(unreachable) = %v; want one line naming the redacted URL and the cause", err)
	}
	if _, err := Connect(context.Background(), bus.Config{URL: "http://x"}); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("Connect(http://) = %v, want ErrInvalidConfig", err)
	}
}

// TestEmbeddedKeysExpire: keys with a TTL expire on the embedded Redis as on
// Redis (miniredis alone expires nothing until told to).
func TestEmbeddedKeysExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newEmbedded(miniredis.NewMiniRedis())
		defer m.Close()
		if err := m.Set("k", "v"); err != nil {
			t.Fatal(err)
		}
		m.SetTTL("k", time.Second)
		time.Sleep(2 * time.Second) // fake time: the clock goroutine ticks 8 times
		synctest.Wait()
		if m.Exists("k") {
			t.Fatal("a key with a 1s TTL still exists 2s later")
		}
	})
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain text ü\tok\n": "plain text ü\tok\n",
		"\x1b[31mred\x1b[0m": `\x1b[31mred\x1b[0m`,
		"bell\a nul\x00":     `bell\x07 nul\x00`,
		"bad \xff utf8":      `bad \xff utf8`,
		"c1 \u009b":          `c1 \x9b`,
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
}
