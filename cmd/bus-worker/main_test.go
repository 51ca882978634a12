package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
)

func TestEnvName(t *testing.T) {
	if got := envName("http-addr"); got != "MYCELIUM_HTTP_ADDR" {
		t.Fatalf("envName = %q", got)
	}
}

func TestServeRedisOrEmbedded(t *testing.T) {
	for _, tt := range []struct {
		name         string
		redis        string
		embedded     bool
		given        []string
		wantErr      string // "" = ok
		wantEmbedded bool
	}{
		{name: "neither", wantErr: "--embedded"},
		{name: "redis", redis: "redis://h:1", given: []string{"redis"}},
		{name: "redis from the env", redis: "redis://h:1"},
		{name: "embedded", embedded: true, given: []string{"embedded"}, wantEmbedded: true},
		{name: "embedded from the env", embedded: true, wantEmbedded: true},
		{name: "both on the command line", redis: "redis://h:1", embedded: true, given: []string{"redis", "embedded"}, wantErr: "not both"},
		{name: "both from the env", redis: "redis://h:1", embedded: true, wantErr: "not both"},
		{name: "--embedded over MYCELIUM_REDIS", redis: "redis://h:1", embedded: true, given: []string{"embedded"}, wantEmbedded: true},
		{name: "--redis over MYCELIUM_EMBEDDED", redis: "redis://h:1", embedded: true, given: []string{"redis"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := serveFlags{redis: tt.redis, embedded: tt.embedded, logLevel: "info", topic: "t", concurrency: 1,
				claimIdle: time.Second, maxDeliveries: 1, handler: "echo", conn: &connFlags{}}
			given := map[string]bool{}
			for _, g := range tt.given {
				given[g] = true
			}
			cfg, err := f.config(given)
			var ue usageError
			switch {
			case tt.wantErr != "":
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("config = %v, want a usage error mentioning %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("config = %v", err)
			case cfg.Embedded != tt.wantEmbedded || (!cfg.Embedded && cfg.Redis.URL != tt.redis) || (cfg.Embedded && cfg.Redis.URL != ""):
				t.Fatalf("config = embedded %v, URL %q; want embedded %v", cfg.Embedded, cfg.Redis.URL, tt.wantEmbedded)
			}
		})
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), nil, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "Usage") {
		t.Fatalf("run() = %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"help"}, &out, &errb); code != exitOK {
		t.Fatalf("run(help) = %d", code)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"publish", "--topic", "a b"}, &out, &errb); code != exitUsage || strings.Count(errb.String(), "\n") != 1 {
		t.Fatalf("run(publish bad topic) = %d, %q", code, errb.String())
	}
}

func TestDescribe(t *testing.T) {
	for _, tt := range []struct {
		err        error
		kind, code string
	}{
		{fmt.Errorf("x: %w", &bus.RemoteError{Code: "quota", Message: "out of tokens"}), "remote", "quota"},
		{fmt.Errorf("x: %w: %w", bus.ErrTimeout, context.DeadlineExceeded), "timeout", ""},
		{fmt.Errorf("x: %w", bus.ErrNoResponders), "no_responders", ""},
		{fmt.Errorf("x: %w", bus.ErrBreakerOpen), "breaker_open", ""},
		{fmt.Errorf("x: %w", bus.ErrUnavailable), "unavailable", ""},
		{fmt.Errorf("x: %w", bus.ErrPayloadTooLarge), "payload_too_large", ""},
		{context.Canceled, "cancelled", ""},
		{errors.New("boom"), "error", ""},
	} {
		if kind, code, msg := describe(tt.err); kind != tt.kind || code != tt.code || msg == "" {
			t.Errorf("describe(%v) = %q, %q, %q; want %q, %q and a message", tt.err, kind, code, msg, tt.kind, tt.code)
		}
	}
}

// TestWriteChunk: request --stream in text joins tokens and puts each JSON
// chunk (an SSE or NDJSON backend's events) on a line of its own (issue 31,
// point 11: JSON chunks printed back to back).
func TestWriteChunk(t *testing.T) {
	for _, tt := range []struct {
		chunks []string
		lines  bool
		want   string
	}{
		{[]string{"Hel", "lo", " world"}, false, "Hello world"},
		{[]string{`{"token":"a"}`, `{"token":"b"}`}, false, "{\"token\":\"a\"}\n{\"token\":\"b\"}\n"},
		{[]string{"thinking ", `{"tool":"x"}`, "done"}, false, "thinking \n{\"tool\":\"x\"}\ndone"},
		{[]string{"a", "b"}, true, "a\nb\n"},
		{[]string{"{not json"}, false, "{not json"},
	} {
		var b bytes.Buffer
		mid := false
		for _, c := range tt.chunks {
			if err := writeChunk(&b, []byte(c), tt.lines, &mid); err != nil {
				t.Fatal(err)
			}
		}
		if b.String() != tt.want {
			t.Errorf("chunks %q (lines %v) printed %q, want %q", tt.chunks, tt.lines, b.String(), tt.want)
		}
	}
}
