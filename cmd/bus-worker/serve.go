package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/bus-worker/internal/worker"
	"github.com/egos/mycelium/cmd/internal/cli"
	"github.com/egos/mycelium/consumer"
)

type serveFlags struct {
	redis, prefix, group, name, handler, httpAddr, logLevel, retention string
	topics                                                             topicList
	caps                                                               capList
	conn                                                               *connFlags
	embedded                                                           bool
	concurrency, maxDeliveries, timingSample                           int
	shutdownTimeout, claimIdle, slowEntry, cacheTTL                    time.Duration

	httpContentType, httpAuthHeader, httpAuthFile, httpHeaderPrefix string
	httpTimeout, httpMaxRetryAfter                                  time.Duration
	httpMaxResponse                                                 int
	httpErrorBody, httpPauseOn429                                   bool

	traceParent bool

	breaker                        bool
	breakerMinCalls, breakerProbes int
	breakerRatio                   float64
	breakerOpen, breakerMaxOpen    time.Duration
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&f.redis, "redis", "", "Redis URL (redis:// or rediss://); required unless --embedded")
	f.conn = addConnFlags(fs)
	fs.BoolVar(&f.embedded, "embedded", false, "run on an embedded in-memory Redis (data lost on exit; for trying things out) instead of --redis")
	fs.StringVar(&f.prefix, "prefix", bus.DefaultPrefix, "key prefix")
	f.topics = topicList{names: []string{"reasoning"}}
	fs.Var(&f.topics, "topic", "topic to serve; repeat it (or separate names by spaces) to serve several from one process, sharing --concurrency handler slots")
	f.caps = capList{}
	fs.Var(f.caps, "topic-concurrency", "TOPIC=N: at most N of the shared handler slots for TOPIC (repeatable; default --concurrency)")
	fs.StringVar(&f.group, "group", consumer.DefaultGroup, "consumer group")
	fs.StringVar(&f.name, "name", "", "consumer name, unique in the group (default host-pid-random)")
	fs.IntVar(&f.concurrency, "concurrency", consumer.DefaultConcurrency, "handler workers")
	fs.StringVar(&f.handler, "handler", "echo", "echo | sleep:<dur>[,<jitter>] | stream:<chunks>,<interval> (a fake model streaming tokens) | http(s)://URL (docs/http-backends.md)")
	fs.StringVar(&f.httpContentType, "http-content-type", "", "Content-Type of calls to an http(s) handler; empty: the caller's content-type header, else application/octet-stream")
	fs.StringVar(&f.httpAuthHeader, "http-auth-header", "Authorization", "header that carries the http(s) handler's credential")
	fs.StringVar(&f.httpAuthFile, "http-auth-file", "", "read the http(s) handler's credential (e.g. \"Bearer sk-…\") from this file (else "+httpAuthEnv+"); keeps it out of argv")
	fs.StringVar(&f.httpHeaderPrefix, "http-header-prefix", worker.DefaultHeaderPrefix, "prefix of the envelope headers passed to an http(s) handler (traceparent, tracestate and baggage pass as themselves)")
	fs.DurationVar(&f.httpTimeout, "http-timeout", 0, "bound of one call to an http(s) handler when shorter than the request's deadline; 0: the deadline alone")
	fs.IntVar(&f.httpMaxResponse, "http-max-response", consumer.DefaultMaxEntrySize, "largest response body (a streamed one in total) taken from an http(s) handler")
	fs.DurationVar(&f.httpMaxRetryAfter, "http-max-retry-after", worker.DefaultMaxRetryAfter, "cap of the delay a 429 or 503 Retry-After asks for")
	fs.BoolVar(&f.httpPauseOn429, "http-pause-on-429", false, "a 429 with Retry-After pauses the topic for every worker of the fleet for that delay (not only the one message's retry)")
	fs.BoolVar(&f.httpErrorBody, "http-error-body", false, "pass the first 512 bytes of an http(s) handler's error body on to callers (credentials redacted); else the status alone")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:9464", "address of /healthz, /readyz, /stats and /metrics; empty disables")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", consumer.DefaultShutdownTimeout, "how long in-flight handlers may finish after SIGINT/SIGTERM")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug | info | warn | error")
	fs.DurationVar(&f.claimIdle, "claim-idle", consumer.DefaultClaimIdle, "reclaim entries another consumer left pending this long (long handlers are kept alive by heartbeats)")
	fs.StringVar(&f.retention, "retention", "", "trim the topic to this many entries (e.g. 1000000) or this age (e.g. 24h); empty: producers' caps only")
	fs.IntVar(&f.maxDeliveries, "max-deliveries", consumer.DefaultMaxDeliveries, "deliveries before an entry goes to the dead-letter stream")
	fs.IntVar(&f.timingSample, "timing-sample", consumer.DefaultTimingSample, "log one handled entry in this many with its stage timings at info level (every entry at debug); negative: off")
	fs.DurationVar(&f.slowEntry, "slow-entry", consumer.DefaultSlowEntry, "log every entry whose queue wait + handler + reply write exceed this at warn level; negative: off")
	fs.DurationVar(&f.cacheTTL, "cache-ttl", 0, "store answers to cached requests (request --cache) for at most this long; 0: as long as the caller asks; negative: never (identical requests in flight still share one answer)")
	fs.BoolVar(&f.traceParent, "trace-parent", true, "with tracing on (OTEL_TRACES_EXPORTER): make each process span a child of the sender's span (one trace from caller to handler), not only linked to it")
	fs.BoolVar(&f.breaker, "breaker", true, "wrap the handler in a circuit breaker: while the downstream fails, hold entries (pending) instead of hammering it")
	fs.IntVar(&f.breakerMinCalls, "breaker-min-calls", breaker.DefaultMinCalls, "calls in the window before the breaker may trip")
	fs.IntVar(&f.breakerProbes, "breaker-probes", breaker.DefaultHalfOpenProbes, "probe calls half-open admits; all must succeed to close")
	fs.Float64Var(&f.breakerRatio, "breaker-failure-ratio", breaker.DefaultFailureRatio, "handler failure ratio that trips the breaker")
	fs.DurationVar(&f.breakerOpen, "breaker-open-timeout", breaker.DefaultOpenTimeout, "how long the breaker stays open before probing")
	fs.DurationVar(&f.breakerMaxOpen, "breaker-max-open-timeout", time.Minute, "cap of the open time, which doubles after each failed probe round")
	given, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	cfg, err := f.config(given)
	if err != nil {
		return err
	}
	// The default HTTP address moves past a taken port, as the embedded
	// Redis does; one the operator chose does not.
	_, fromEnv := os.LookupEnv(envName("http-addr"))
	cfg.HTTPAddrMayMove = !given["http-addr"] && !fromEnv
	if cfg.Embedded {
		cfg.Announce, cfg.Self = stdout, selfCommand()
	}
	level, _ := zerolog.ParseLevel(f.logLevel) // checked by config
	err = worker.Run(ctx, cfg, newLogger(stderr).Level(level))
	if errors.Is(err, worker.ErrSetup) {
		return usageError{err}
	}
	return err
}

// config checks the flags and turns them into the worker's Config; given
// names the flags set on the command line (not from the environment).
func (f *serveFlags) config(given map[string]bool) (worker.Config, error) {
	switch {
	case f.embedded && f.redis != "" && given["redis"] == given["embedded"]:
		return worker.Config{}, usagef("serve: give --redis URL or --embedded, not both")
	case f.embedded && f.redis != "":
		// One came from the command line, the other from the environment:
		// the command line wins, as for any flag.
		f.embedded = given["embedded"]
		if f.embedded {
			f.redis = ""
		}
	case !f.embedded && f.redis == "":
		return worker.Config{}, usagef("serve: no Redis to serve: give --redis URL (or MYCELIUM_REDIS), or --embedded (or MYCELIUM_EMBEDDED=1) for an in-memory one")
	}
	if level, err := zerolog.ParseLevel(f.logLevel); err != nil || f.logLevel == "" || level == zerolog.NoLevel {
		return worker.Config{}, usagef("serve: --log-level %q: want debug, info, warn or error", f.logLevel)
	}
	switch {
	case f.concurrency < 1:
		return worker.Config{}, usagef("serve: --concurrency must be at least 1, got %d", f.concurrency)
	case f.shutdownTimeout < 0:
		return worker.Config{}, usagef("serve: --shutdown-timeout must not be negative")
	case f.claimIdle <= 0 || f.maxDeliveries < 1:
		return worker.Config{}, usagef("serve: --claim-idle must be positive and --max-deliveries at least 1")
	}
	cfg := worker.Config{
		Redis:    bus.Config{URL: f.redis, Prefix: f.prefix, ClientName: "myc-worker"},
		Embedded: f.embedded,
		Consumer: consumer.Config{
			Topic: f.topics.names[0], Group: f.group, Name: f.name,
			Concurrency: f.concurrency, ShutdownTimeout: f.shutdownTimeout,
			Reclaim: consumer.ReclaimConfig{ClaimIdle: f.claimIdle},
			Retry:   consumer.RetryConfig{MaxDeliveries: f.maxDeliveries},
			Cache:   consumer.CacheConfig{TTL: f.cacheTTL},
			Tracing: consumer.TracingConfig{Parent: f.traceParent},
			Timing:  consumer.TimingConfig{Sample: f.timingSample, SlowEntry: f.slowEntry},
		},
		Handler:  f.handler,
		HTTPAddr: f.httpAddr,
		Topics:   f.topics.names,
		Caps:     f.caps,
		HTTP: worker.HTTPOptions{ContentType: f.httpContentType, AuthHeader: f.httpAuthHeader, HeaderPrefix: f.httpHeaderPrefix,
			Timeout: f.httpTimeout, MaxResponse: f.httpMaxResponse, MaxRetryAfter: f.httpMaxRetryAfter, ErrorBody: f.httpErrorBody, PauseOn429: f.httpPauseOn429},
	}
	if err := f.httpConfig(&cfg.HTTP); err != nil {
		return worker.Config{}, err
	}
	if f.retention != "" {
		if d, err := time.ParseDuration(f.retention); err == nil && d > 0 {
			cfg.Consumer.Retention.MaxAge = d
		} else if n, err := strconv.ParseInt(f.retention, 10, 64); err == nil && n > 0 {
			cfg.Consumer.Retention.MaxLen = n
		} else {
			return worker.Config{}, usagef("serve: --retention %q: want a positive entry count (1000000) or age (24h)", f.retention)
		}
	}
	if err := cfg.Consumer.Validate(); err != nil {
		return worker.Config{}, usageError{err}
	}
	if err := f.checkTopics(); err != nil {
		return worker.Config{}, err
	}
	if !f.embedded {
		var err error
		if cfg.Redis, err = f.conn.apply(cfg.Redis, os.Stderr); err != nil {
			return worker.Config{}, err
		}
		if err := cfg.Redis.Validate(); err != nil {
			return worker.Config{}, usageError{err}
		}
	}
	if f.breaker {
		cfg.Breaker = &breaker.Config{
			MinCalls: f.breakerMinCalls, FailureRatio: f.breakerRatio, HalfOpenProbes: f.breakerProbes,
			OpenTimeout: f.breakerOpen, MaxOpenTimeout: f.breakerMaxOpen, Jitter: 0.1,
		}
		if err := cfg.Breaker.Validate(); err != nil {
			return worker.Config{}, usagef("serve: breaker flags: %v", err)
		}
	}
	return cfg, nil
}

// checkTopics checks the topic names and their caps.
func (f *serveFlags) checkTopics() error {
	for _, name := range f.topics.names {
		if err := bus.ValidateName("topic", name); err != nil {
			return usagef("serve: --topic: %v", err)
		}
	}
	for name, n := range f.caps {
		switch {
		case !slices.Contains(f.topics.names, name):
			hint := ""
			if strings.ContainsAny(name, ",=") {
				hint = " (separate TOPIC=N pairs by spaces, not commas)"
			}
			return usagef("serve: --topic-concurrency %s=%d: %q is not a --topic served%s", name, n, name, hint)
		case n < 1 || n > f.concurrency:
			return usagef("serve: --topic-concurrency %s=%d: want 1 to --concurrency (%d)", name, n, f.concurrency)
		}
	}
	return nil
}

// topicList is --topic: names given one per flag or separated by spaces
// (a topic name holds none); the first given replaces the default.
type topicList struct {
	names []string
	set   bool
}

func (l *topicList) String() string { return strings.Join(l.names, " ") }

func (l *topicList) Set(v string) error {
	if !l.set {
		l.names, l.set = nil, true
	}
	fields := strings.Fields(v)
	if len(fields) == 0 {
		return errors.New("empty topic name")
	}
	for _, name := range fields {
		if slices.Contains(l.names, name) {
			return fmt.Errorf("topic %q given twice", name)
		}
		l.names = append(l.names, name)
	}
	return nil
}

// capList is --topic-concurrency: TOPIC=N, repeatable (split at the last
// '=': a topic name may hold one).
type capList map[string]int

func (c capList) String() string {
	parts := make([]string, 0, len(c))
	for name, n := range c {
		parts = append(parts, name+"="+strconv.Itoa(n))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func (c capList) Set(v string) error {
	for _, item := range strings.Fields(v) {
		i := strings.LastIndexByte(item, '=')
		if i <= 0 {
			return fmt.Errorf("%q: want TOPIC=N", item)
		}
		n, err := strconv.Atoi(item[i+1:])
		if err != nil {
			hint := ""
			if strings.Contains(item[i+1:], ",") {
				hint = " (separate TOPIC=N pairs by spaces, not commas)"
			}
			return fmt.Errorf("%q: want TOPIC=N with N a whole number%s", item, hint)
		}
		if _, dup := c[item[:i]]; dup {
			return fmt.Errorf("topic %q capped twice", item[:i])
		}
		c[item[:i]] = n
	}
	return nil
}

// httpAuthEnv holds an http(s) handler's credential when --http-auth-file
// is not given.
const httpAuthEnv = "MYCELIUM_HTTP_AUTH"

// httpConfig checks the --http-* flags and reads the credential.
func (f *serveFlags) httpConfig(o *worker.HTTPOptions) error {
	switch {
	case f.httpTimeout < 0 || f.httpMaxRetryAfter < 0:
		return usagef("serve: --http-timeout and --http-max-retry-after must not be negative")
	case f.httpMaxResponse < 0:
		return usagef("serve: --http-max-response must not be negative, got %d", f.httpMaxResponse)
	case f.httpAuthHeader != "" && !worker.ValidHeaderName(f.httpAuthHeader):
		return usagef("serve: --http-auth-header %q is not a valid header name", f.httpAuthHeader)
	case f.httpHeaderPrefix != "" && !worker.ValidHeaderName(f.httpHeaderPrefix):
		return usagef("serve: --http-header-prefix %q is not a valid header name", f.httpHeaderPrefix)
	case f.httpContentType != "" && !worker.ValidHeaderValue(f.httpContentType):
		return usagef("serve: --http-content-type %q holds a control character", f.httpContentType)
	}
	switch {
	case f.httpAuthFile != "":
		v, err := cli.ReadSecret(f.httpAuthFile, "--http-auth-file")
		if err != nil {
			return usagef("serve: %v", err)
		}
		o.AuthValue = v
	default:
		o.AuthValue = os.Getenv(httpAuthEnv)
	}
	if o.AuthHeader == "" {
		o.AuthHeader = "Authorization"
	}
	if !worker.ValidHeaderValue(o.AuthValue) {
		return usagef("serve: the http(s) handler's credential holds a control character")
	}
	return nil
}

func newLogger(w io.Writer) zerolog.Logger {
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).With().Timestamp().Logger()
}

// selfCommand is how a user runs this bus-worker again: "go run
// ./cmd/bus-worker" under go run (make run), else the path it was run by.
func selfCommand() string {
	if exe, err := os.Executable(); err == nil && strings.Contains(exe, "go-build") {
		return "go run ./cmd/bus-worker"
	}
	if len(os.Args) > 0 && os.Args[0] != "" {
		return os.Args[0]
	}
	return "bus-worker"
}
