package redisx

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestParseCPU(t *testing.T) {
	for _, tt := range []struct {
		name, info string
		want       time.Duration
		ok         bool
	}{
		{"redis 7", "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\nused_cpu_sys_children:9.000000\r\nused_cpu_user_children:9.000000\r\nused_cpu_sys_main_thread:1.400000\r\n", 1750 * time.Millisecond, true},
		{"one missing", "# CPU\r\nused_cpu_sys:1.5\r\n", 0, false},
		{"garbage value", "used_cpu_sys:x\r\nused_cpu_user:1\r\n", 0, false},
		{"empty", "", 0, false},
	} {
		got, ok := parseCPU(tt.info)
		if ok != tt.ok || (ok && (got-tt.want).Abs() > time.Microsecond) {
			t.Errorf("%s: parseCPU = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
	if v := infoField("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n", "redis_version"); v != "7.0.15" {
		t.Errorf("infoField(redis_version) = %q", v)
	}
}

func TestServerInfoOnMiniredis(t *testing.T) {
	_, c := miniClient(t)
	s, err := ServerInfo(context.Background(), c)
	// miniredis has a minimal INFO: no version line in "server", no cpu.
	if err != nil || s.CPUOK {
		t.Fatalf("ServerInfo(miniredis) = %+v, %v; want no CPU figure and no error", s, err)
	}
}

// TestDetach: the detached ctx carries no deadline (rueidis would run the
// command synchronously and close the connection at the deadline) yet ends
// when its parent does.
func TestDetach(t *testing.T) {
	parent, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	d, stop := Detach(parent)
	defer stop()
	if _, ok := d.Deadline(); ok {
		t.Fatal("the detached ctx has a deadline")
	}
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the detached ctx did not end with its parent")
	}
	if !errors.Is(d.Err(), context.Canceled) {
		t.Errorf("Err() = %v, want context.Canceled", d.Err())
	}
	plain, stop2 := Detach(context.Background())
	stop2()
	if plain.Err() == nil {
		t.Error("stop did not cancel a detached ctx without deadline")
	}
}
