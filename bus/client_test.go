package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
)

func TestConnect(t *testing.T) {
	m := miniredis.RunT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := bus.Connect(ctx, bus.Config{URL: "redis://" + m.Addr(), Prefix: "app"})
	if err != nil {
		t.Fatalf("Connect(miniredis) = %v", err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Errorf("Ping = %v", err)
	}
	if got := c.Keys().Topic("t"); got != "app:{t}" {
		t.Errorf("Keys().Topic(t) = %q, want app:{t} (the Config's prefix)", got)
	}
	if c.Redis() == nil {
		t.Error("Redis() = nil")
	}

	// Nothing listens on port 1: the error says so, wraps ErrUnavailable
	// and keeps the password out.
	_, err = bus.Connect(ctx, bus.Config{URL: "redis://:S3cret@127.0.0.1:1"})
	if !errors.Is(err, bus.ErrUnavailable) || strings.Contains(err.Error(), "S3cret") {
		t.Errorf("Connect(unreachable) = %v, want ErrUnavailable without the password", err)
	}
	// Wrong credentials are a refusal for good: ErrPermission, not
	// ErrUnavailable, and no password in the message.
	locked := miniredis.RunT(t)
	locked.RequireAuth("right-pw")
	_, err = bus.Connect(ctx, bus.Config{URL: "redis://" + locked.Addr(), Password: "wrong-pw"})
	if !errors.Is(err, bus.ErrPermission) || errors.Is(err, bus.ErrUnavailable) || strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("Connect(wrong password) = %v, want ErrPermission without the password", err)
	}
	if _, err := bus.Connect(ctx, bus.Config{URL: "http://x"}); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Errorf("Connect(http://) = %v, want ErrInvalidConfig", err)
	}
}
