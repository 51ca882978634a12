package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
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
			f := serveFlags{redis: tt.redis, embedded: tt.embedded, logLevel: "info", topics: topicList{names: []string{"t"}}, concurrency: 1,
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

// TestServeTopics: --topic repeats (or takes names separated by spaces),
// the first replaces the default, --topic-concurrency caps a served topic;
// each mistake is one usage line.
func TestServeTopics(t *testing.T) {
	parse := func(args ...string) (serveFlags, error) {
		var f serveFlags
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.topics = topicList{names: []string{"reasoning"}}
		f.caps = capList{}
		fs.Var(&f.topics, "topic", "")
		fs.Var(f.caps, "topic-concurrency", "")
		fs.IntVar(&f.concurrency, "concurrency", 8, "")
		if err := fs.Parse(args); err != nil {
			return f, err
		}
		return f, f.checkTopics()
	}
	f, err := parse()
	if err != nil || !slices.Equal(f.topics.names, []string{"reasoning"}) {
		t.Fatalf("no --topic: %v, %v", f.topics.names, err)
	}
	f, err = parse("--topic", "a", "--topic", "b c", "--topic-concurrency", "b=2", "--topic-concurrency", "x=y=3 c=8")
	if err == nil || !strings.Contains(err.Error(), `"x=y" is not a --topic served`) {
		t.Fatalf("a cap of a topic not served: %v", err)
	}
	f, err = parse("--topic", "a", "--topic", "b c", "--topic-concurrency", "b=2 c=8")
	if err != nil || !slices.Equal(f.topics.names, []string{"a", "b", "c"}) || f.caps["b"] != 2 || f.caps["c"] != 8 {
		t.Fatalf("topics %v caps %v: %v", f.topics.names, f.caps, err)
	}
	for args, want := range map[string]string{
		"--topic a --topic a":                                       `topic "a" given twice`,
		"--topic a --topic-concurrency a=9":                         "want 1 to --concurrency (8)",
		"--topic a --topic-concurrency a=0":                         "want 1 to --concurrency",
		"--topic a --topic-concurrency a":                           "want TOPIC=N",
		"--topic r.x":                                               `starts with "r."`,
		"--topic a --topic-concurrency a=two":                       "whole number",
		"--topic a --topic b --topic-concurrency a=1,b=2":           "by spaces, not commas",
		"--topic a --topic-concurrency a=1 --topic-concurrency a=2": `topic "a" capped twice`,
	} {
		if _, err := parse(strings.Fields(args)...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", args, err, want)
		}
	}
}
