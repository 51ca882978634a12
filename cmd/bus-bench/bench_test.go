package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseOptions(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // "" = valid
	}{
		{nil, ""},
		{[]string{"--scenario", "publish", "--concurrency", "256", "--requests", "10", "--payload", "64", "--json"}, ""},
		{[]string{"--scenario", "continuous", "--rate", "100", "--duration", "1s"}, ""},
		{[]string{"--scenario", "x"}, "--scenario"},
		{[]string{"--concurrency", "0"}, "--concurrency"},
		{[]string{"--payload", "8"}, "--payload"},
		{[]string{"--workers", "3", "--no-workers"}, "exclude"},
		{[]string{"--rate", "0"}, "--rate"},
		{[]string{"--timeout", "0s"}, "--timeout"},
		{[]string{"--topic", "a{b"}, "topic"},
		{[]string{"--redis", "http://x"}, "scheme"},
		{[]string{"extra"}, "unexpected"},
		{[]string{"--nope"}, "not defined"},
		{[]string{"--transport", "pubsub", "--pubsub-conn", "pooled"}, ""},
		{[]string{"--transport", "kafka"}, "--transport"},
		{[]string{"--transport", "pubsub", "--scenario", "publish"}, "publish"},
		{[]string{"--transport", "pubsub", "--pubsub-conn", "x"}, "--pubsub-conn"},
		{[]string{"--transport", "pubsub", "--no-workers"}, "baseline workers"},
		{[]string{"--handler", "sleep:2s,500ms"}, ""},
		{[]string{"--handler", "sleep:-1s"}, "--handler"},
		{[]string{"--handler", "sleep:1s,2s"}, "jitter"},
		{[]string{"--handler", "http://x"}, "--handler"},
		{[]string{"--handler", "sleep:1s", "--no-workers"}, "in-process"},
		{[]string{"--suite", "seed", "--report", "/tmp/x"}, ""},
		{[]string{"--suite", "full"}, "--suite"},
		{[]string{"--report", "/tmp/x"}, "needs --suite"},
		{[]string{"--suite", "seed", "--no-workers"}, "in-process"},
	} {
		o, err := parseOptions(tt.args, io.Discard)
		if tt.want == "" {
			if err != nil {
				t.Errorf("parseOptions(%v) = %v", tt.args, err)
			}
			continue
		}
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseOptions(%v) = %v, %v; want a usage error mentioning %q", tt.args, o, err, tt.want)
		}
	}
	o, _ := parseOptions([]string{"--duration", "1s"}, io.Discard)
	if o.requests != 0 || o.workers != 64 {
		t.Errorf("--duration alone: requests=%d workers=%d, want 0 (time-bound) and 64", o.requests, o.workers)
	}
}

func TestSummarize(t *testing.T) {
	var lat []int64
	for i := 1; i <= 1000; i++ {
		lat = append(lat, int64(time.Duration(i)*time.Microsecond))
	}
	var r Result
	summarize(&r, lat)
	if r.P50US != 500 || r.P90US != 900 || r.P99US != 990 || r.MaxUS != 1000 {
		t.Fatalf("summarize = p50 %d p90 %d p99 %d max %d", r.P50US, r.P90US, r.P99US, r.MaxUS)
	}
	var empty Result
	summarize(&empty, nil) // must not panic
}

func TestPayloadsCheck(t *testing.T) {
	p := newPayloads(64)
	b := p.fill(nil, 42)
	if seq, ok := p.check(b); !ok || seq != 42 || len(b) != 64 {
		t.Fatalf("check(fill(42)) = %d, %v (len %d)", seq, ok, len(b))
	}
	b[40] ^= 1
	if _, ok := p.check(b); ok {
		t.Fatal("check accepted a corrupted payload")
	}
	if _, ok := newPayloads(64).check(p.fill(nil, 1)); ok {
		t.Fatal("check accepted another run's payload")
	}
}

func TestParseRedisCPU(t *testing.T) {
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
		got, ok := parseRedisCPU(tt.info)
		if ok != tt.ok || (ok && (got-tt.want).Abs() > time.Microsecond) {
			t.Errorf("%s: parseRedisCPU = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}
