package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/mattn/go-isatty"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/prom"
)

type serveFlags struct {
	redis, prefix, topic, group, name, handler, httpAddr, logLevel, retention string
	concurrency, maxDeliveries, timingSample                                  int
	shutdownTimeout, claimIdle, slowEntry                                     time.Duration

	breaker                        bool
	breakerMinCalls, breakerProbes int
	breakerRatio                   float64
	breakerOpen, breakerMaxOpen    time.Duration
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	var f serveFlags
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&f.redis, "redis", "", "Redis URL (redis:// or rediss://); empty starts an embedded in-memory Redis")
	fs.StringVar(&f.prefix, "prefix", bus.DefaultPrefix, "key prefix")
	fs.StringVar(&f.topic, "topic", "reasoning", "topic to serve")
	fs.StringVar(&f.group, "group", consumer.DefaultGroup, "consumer group")
	fs.StringVar(&f.name, "name", "", "consumer name, unique in the group (default host-pid-random)")
	fs.IntVar(&f.concurrency, "concurrency", consumer.DefaultConcurrency, "handler workers")
	fs.StringVar(&f.handler, "handler", "echo", "echo | sleep:<dur>[,<jitter>] | http(s)://URL")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:9464", "address of /healthz, /readyz, /stats and /metrics; empty disables")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", consumer.DefaultShutdownTimeout, "how long in-flight handlers may finish after SIGINT/SIGTERM")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug | info | warn | error")
	fs.DurationVar(&f.claimIdle, "claim-idle", consumer.DefaultClaimIdle, "reclaim entries another consumer left pending this long (long handlers are kept alive by heartbeats)")
	fs.StringVar(&f.retention, "retention", "", "trim the topic to this many entries (e.g. 1000000) or this age (e.g. 24h); empty: producers' caps only")
	fs.IntVar(&f.maxDeliveries, "max-deliveries", consumer.DefaultMaxDeliveries, "deliveries before an entry goes to the dead-letter stream")
	fs.IntVar(&f.timingSample, "timing-sample", consumer.DefaultTimingSample, "log one handled entry in this many with its stage timings at info level (every entry at debug); negative: off")
	fs.DurationVar(&f.slowEntry, "slow-entry", consumer.DefaultSlowEntry, "log every entry whose queue wait + handler + reply write exceed this at warn level; negative: off")
	fs.BoolVar(&f.breaker, "breaker", true, "wrap the handler in a circuit breaker: while the downstream fails, hold entries (pending) instead of hammering it")
	fs.IntVar(&f.breakerMinCalls, "breaker-min-calls", breaker.DefaultMinCalls, "calls in the window before the breaker may trip")
	fs.IntVar(&f.breakerProbes, "breaker-probes", breaker.DefaultHalfOpenProbes, "probe calls half-open admits; all must succeed to close")
	fs.Float64Var(&f.breakerRatio, "breaker-failure-ratio", breaker.DefaultFailureRatio, "handler failure ratio that trips the breaker")
	fs.DurationVar(&f.breakerOpen, "breaker-open-timeout", breaker.DefaultOpenTimeout, "how long the breaker stays open before probing")
	fs.DurationVar(&f.breakerMaxOpen, "breaker-max-open-timeout", time.Minute, "cap of the open time, which doubles after each failed probe round")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	level, err := zerolog.ParseLevel(f.logLevel)
	if err != nil || f.logLevel == "" {
		return usagef("serve: --log-level %q: want debug, info, warn or error", f.logLevel)
	}
	log := newLogger(stderr).Level(level)
	if f.concurrency < 1 {
		return usagef("serve: --concurrency must be at least 1, got %d", f.concurrency)
	}
	if f.shutdownTimeout < 0 {
		return usagef("serve: --shutdown-timeout must not be negative")
	}
	cfg := consumer.Config{
		Topic: f.topic, Group: f.group, Name: f.name,
		Concurrency: f.concurrency, ShutdownTimeout: f.shutdownTimeout,
		ClaimIdle: f.claimIdle, MaxDeliveries: f.maxDeliveries,
		TimingSample: f.timingSample, SlowEntry: f.slowEntry,
	}
	if f.retention != "" {
		if d, err := time.ParseDuration(f.retention); err == nil && d > 0 {
			cfg.RetentionMaxAge = d
		} else if n, err := strconv.ParseInt(f.retention, 10, 64); err == nil && n > 0 {
			cfg.RetentionMaxLen = n
		} else {
			return usagef("serve: --retention %q: want a positive entry count (1000000) or age (24h)", f.retention)
		}
	}
	if f.claimIdle <= 0 || f.maxDeliveries < 1 {
		return usagef("serve: --claim-idle must be positive and --max-deliveries at least 1")
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: f.concurrency, IdleConnTimeout: time.Minute}}
	defer httpClient.CloseIdleConnections()
	h, err := parseHandler(f.handler, consumer.DefaultMaxEntrySize, httpClient)
	if err != nil {
		return err
	}
	brMetrics := prom.NewBreakerCollector(prometheus.Labels{"topic": f.topic})
	var br *breaker.Breaker
	if f.breaker {
		br, err = breaker.New(breaker.Config{
			MinCalls: f.breakerMinCalls, FailureRatio: f.breakerRatio, HalfOpenProbes: f.breakerProbes,
			OpenTimeout: f.breakerOpen, MaxOpenTimeout: f.breakerMaxOpen, Jitter: 0.1,
		}, breaker.WithStateChange(func(from, to breaker.State) {
			brMetrics.OnStateChange(from, to)
			log.WithLevel(breakerLevel(to)).Str("from", from.String()).Str("to", to.String()).Str("handler", f.handler).Msg("downstream circuit breaker")
		}))
		if err != nil {
			return usagef("serve: breaker flags: %v", err)
		}
		defer br.Close()
		brMetrics.SetState(br.State)
		h = consumer.Chain(h, consumer.BreakerMiddleware(br))
	}

	var ln net.Listener
	if f.httpAddr != "" {
		if ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", f.httpAddr); err != nil {
			return usagef("serve: --http-addr %q: %v", f.httpAddr, err)
		}
		defer ln.Close()
	}

	url := f.redis
	if url == "" {
		mr, addr, err := startEmbedded()
		if err != nil {
			return fmt.Errorf("serve: start embedded Redis: %w", err)
		}
		defer mr.Close()
		url = "redis://" + addr
		log.Warn().Str("redis", addr).Msg("no --redis given: started an embedded in-memory Redis (miniredis) at " + addr + "; its data is lost on exit; not for production")
	}
	bcfg := bus.Config{URL: url, Prefix: f.prefix, ClientName: "myc-worker"}
	c, err := connect(ctx, bcfg)
	if err != nil {
		return err
	}
	defer c.Close()

	co, err := consumer.New(c, cfg, h, consumer.WithLogger(log))
	if err != nil {
		return usageError{err}
	}
	log.Info().Str("redis", bcfg.Redacted()).Str("topic", f.topic).Str("group", f.group).Str("consumer", co.Name()).
		Int("concurrency", f.concurrency).Str("handler", f.handler).Str("http_addr", f.httpAddr).Msg("serving")

	var srv *http.Server
	srvDone := make(chan error, 1)
	if ln != nil {
		reg, err := workerRegistry(c, co, brMetrics)
		if err != nil {
			return fmt.Errorf("serve: metrics: %w", err)
		}
		srv = &http.Server{Handler: opsMux(co, br, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() { srvDone <- srv.Serve(ln) }()
	}
	err = co.Run(ctx)
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
		if e := <-srvDone; e != nil && !errors.Is(e, http.ErrServerClosed) {
			log.Error().Err(e).Msg("http server")
		}
	}
	s := co.Stats()
	log.Info().Uint64("handled", s.Handled).Uint64("acked", s.Acked).Uint64("failed", s.Failed).Msg("stopped")
	return err
}

// workerRegistry gathers what /metrics exports: the consumer's stage
// timings and counters, the breaker, the topic's streams, and the Go
// runtime and process.
func workerRegistry(c *bus.Client, co *consumer.Consumer, br *prom.BreakerCollector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	if err := prom.RegisterConsumer(reg, co); err != nil {
		return nil, err
	}
	for _, col := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		br,
		prom.NewStreamCollector(inspect.New(c), co.Config().Topic),
	} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// opsMux serves the operator endpoints. br may be nil.
func opsMux(co *consumer.Consumer, br *breaker.Breaker, reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := co.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if br != nil && br.State() == breaker.Open {
			http.Error(w, "not ready: downstream circuit breaker open", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		out := struct {
			consumer.Stats
			Breaker string `json:"breaker,omitempty"`
		}{Stats: co.Stats()}
		if br != nil {
			out.Breaker = br.State().String()
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	return mux
}

// startEmbedded starts miniredis on 127.0.0.1:6379 or the next free port.
func startEmbedded() (*miniredis.Miniredis, string, error) {
	var last error
	for port := 6379; port < 6379+100; port++ {
		m := miniredis.NewMiniRedis()
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if err := m.StartAddr(addr); err != nil {
			last = err
			continue
		}
		return m, addr, nil
	}
	return nil, "", last
}

func newLogger(w io.Writer) zerolog.Logger {
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).With().Timestamp().Logger()
}

// breakerLevel logs a breaker opening as a warning and closing as info.
func breakerLevel(to breaker.State) zerolog.Level {
	if to == breaker.Closed {
		return zerolog.InfoLevel
	}
	return zerolog.WarnLevel
}
