package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/egos/mycelium/cmd/bus-bench/internal/bench"
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
		{[]string{"--transport", "streams-plain", "--scenario", "publish"}, ""},
		{[]string{"--transport", "streams-plain", "--scenario", "stream"}, "mycelium"},
		{[]string{"--transport", "streams-plain", "--no-workers"}, "baseline workers"},
		{[]string{"--transport", "streams-plain", "--partitions", "2"}, "partitions"},
		{[]string{"--handler", "sleep:2s,500ms"}, ""},
		{[]string{"--handler", "sleep:-1s"}, "--handler"},
		{[]string{"--handler", "sleep:1s,2s"}, "jitter"},
		{[]string{"--handler", "http://x"}, "--handler"},
		{[]string{"--handler", "sleep:1s", "--no-workers"}, "in-process"},
		{[]string{"--suite", "seed", "--report", "/tmp/x"}, ""},
		{[]string{"--suite", "full"}, "--suite"},
		{[]string{"--report", "/tmp/x"}, "needs --suite"},
		{[]string{"--ignore-targets"}, "needs --suite"},
		{[]string{"--suite", "seed", "--ignore-targets"}, ""},
		{[]string{"--suite", "seed", "--no-workers"}, "in-process"},
		{[]string{"--scenario", "quota", "--quota-rate", "50/s", "--quota-tokens", "60000/m", "--limits", "off"}, ""},
		{[]string{"--scenario", "quota", "--quota-rate", "50/x"}, "--quota-rate"},
		{[]string{"--scenario", "quota", "--quota-tokens", "lots"}, "--quota-tokens"},
		{[]string{"--scenario", "quota", "--limits", "maybe"}, "--limits"},
		{[]string{"--scenario", "quota", "--worker-procs", "0"}, "--worker-procs"},
		{[]string{"--scenario", "rpc", "--worker-procs", "2"}, "--scenario quota"},
		{[]string{"--backpressure", "drop"}, "--backpressure"},
		{[]string{"--scenario", "publish", "--backpressure", "reject"}, ""},
	} {
		o, err := parseOptions(tt.args, io.Discard)
		if tt.want == "" {
			if err != nil {
				t.Errorf("parseOptions(%v) = %v", tt.args, err)
			}
			continue
		}
		if !errors.Is(err, bench.ErrUsage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseOptions(%v) = %v, %v; want a usage error mentioning %q", tt.args, o, err, tt.want)
		}
	}
	o, _ := parseOptions([]string{"--duration", "1s"}, io.Discard)
	if o.Requests != 0 || o.Workers != 64 {
		t.Errorf("--duration alone: requests=%d workers=%d, want 0 (time-bound) and 64", o.Requests, o.Workers)
	}
}
