// Package worker runs one bus-worker: a consumer of one topic running its
// handler (echo, simulated work, or an HTTP backend), optionally behind a
// circuit breaker, with the operator endpoints (/healthz, /readyz, /stats,
// /metrics), on a real Redis or on an embedded in-memory one. The
// bus-worker command turns flags and environment into a Config and calls
// Run.
package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/internal/cli"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/prom"
)

// Config is one worker.
type Config struct {
	Redis bus.Config // where the bus is; its URL is ignored with Embedded
	// Embedded starts an in-memory Redis (miniredis) on 127.0.0.1:6379 or
	// the next free port instead of connecting to Redis.URL. Its data is
	// lost on exit: for trying the bus out, never for production.
	Embedded bool
	Consumer consumer.Config
	Handler  string // echo | sleep:<dur>[,<jitter>] | stream:<n>,<interval> | http(s)://URL (see ParseHandler)
	// HTTP shapes the calls of an http(s):// handler.
	HTTP HTTPOptions
	// Breaker, when not nil, wraps the handler in a circuit breaker (see
	// consumer.BreakerMiddleware).
	Breaker *breaker.Config
	// HTTPAddr serves the operator endpoints; "" serves none.
	HTTPAddr string
	// HTTPAddrMayMove lets the worker take the next free port when
	// HTTPAddr's is taken (up to 100 ports on): set it when HTTPAddr is the
	// default rather than an address the operator chose.
	HTTPAddrMayMove bool
	// Announce, when not nil, gets the commands to try the worker from a
	// second terminal (the Redis and HTTP addresses it actually uses), once
	// it is ready, before any log line: for --embedded.
	Announce io.Writer
	// Self is how the commands in Announce invoke bus-worker (for example
	// "go run ./cmd/bus-worker"); empty means "bus-worker".
	Self string
}

// ErrSetup marks the errors that stop a worker before it serves: a bad
// handler or breaker setting, the HTTP address taken, Redis unreachable.
// bus-worker exits 2 on them.
var ErrSetup = errors.New("cannot start")

// Run serves until ctx ends, then shuts down (see consumer.Consumer.Run)
// and returns nil, or an error wrapping ErrSetup if it could not start.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	tp, stopTracing, err := cli.Tracing(ctx, "bus-worker")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer stopTracing()
	if tp != nil {
		cfg.Consumer.Tracing.Provider = tp
	}
	httpClient := &http.Client{Transport: NewHTTPTransport(cmp.Or(cfg.Consumer.Concurrency, consumer.DefaultConcurrency))}
	defer httpClient.CloseIdleConnections()
	h, err := ParseHandler(cfg.Handler, cfg.HTTP, httpClient)
	if err != nil {
		return err
	}
	brMetrics := prom.NewBreakerCollector(prometheus.Labels{"topic": cfg.Consumer.Topic})
	br, err := newBreaker(cfg, brMetrics, log)
	if err != nil {
		return err
	}
	if br != nil {
		defer br.Close()
		h = consumer.Chain(h, consumer.BreakerMiddleware(br))
	}
	var ln net.Listener
	if cfg.HTTPAddr != "" {
		if ln, err = listen(ctx, cfg.HTTPAddr, cfg.HTTPAddrMayMove); err != nil {
			return fmt.Errorf("%w: --http-addr %q: %w", ErrSetup, cfg.HTTPAddr, err)
		}
		defer ln.Close()
	}
	embedded := ""
	if cfg.Embedded {
		m, err := cli.StartEmbedded(6379)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrSetup, err)
		}
		defer m.Close()
		embedded = m.Addr()
		cfg.Redis.URL = "redis://" + embedded
	}
	c, err := cli.Connect(ctx, cfg.Redis)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}
	defer c.Close()
	co, err := consumer.New(c, cfg.Consumer, h, consumer.WithLogger(log))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}
	httpAddr := ""
	stopOps := func() {}
	if ln != nil {
		httpAddr = ln.Addr().String()
		reg, err := registry(c, co, brMetrics)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		stopOps = serveOps(ln, opsMux(co, br, reg), log)
	}
	done := make(chan error, 1) // Run's result; Run is waited for below
	go func() { done <- co.Run(ctx) }()
	<-co.Serving() // joined (or Run returned): only now does a request find this worker
	if ctx.Err() == nil {
		if cfg.Announce != nil {
			announce(cfg.Announce, cmp.Or(cfg.Self, "bus-worker"), c.Redacted(), co.Config().Topic, httpAddr, embedded != "")
		}
		if embedded != "" {
			log.Warn().Str("redis", embedded).Msg("started an embedded in-memory Redis (miniredis) at " + embedded + "; its data is lost on exit; not for production")
		}
		log.Info().Str("redis", c.Redacted()).Str("topic", cfg.Consumer.Topic).Str("group", co.Config().Group).Str("consumer", co.Name()).
			Int("concurrency", co.Config().Concurrency).Str("handler", RedactSpec(cfg.Handler)).Str("http_addr", httpAddr).Msg("serving")
	}
	err = <-done
	stopOps()
	s := co.Stats()
	log.Info().Uint64("handled", s.Handled).Uint64("acked", s.Acked).Uint64("failed", s.Failed).Msg("stopped")
	return err
}

// newBreaker builds the handler's circuit breaker, or nil when cfg has none.
// Its state changes are logged and counted in m.
func newBreaker(cfg Config, m *prom.BreakerCollector, log zerolog.Logger) (*breaker.Breaker, error) {
	if cfg.Breaker == nil {
		return nil, nil
	}
	br, err := breaker.New(*cfg.Breaker, breaker.WithStateChange(func(from, to breaker.State) {
		m.OnStateChange(from, to)
		lvl := zerolog.WarnLevel
		if to == breaker.Closed {
			lvl = zerolog.InfoLevel
		}
		log.WithLevel(lvl).Str("from", from.String()).Str("to", to.String()).Str("handler", RedactSpec(cfg.Handler)).Msg("downstream circuit breaker")
	}))
	if err != nil {
		return nil, fmt.Errorf("%w: breaker flags: %w", ErrSetup, err)
	}
	m.SetState(br.State)
	return br, nil
}

// listen listens on addr, or, when it may move and addr's port is taken, on
// the next free port (up to 100 on).
func listen(ctx context.Context, addr string, mayMove bool) (net.Listener, error) {
	lc := &net.ListenConfig{}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err == nil || !mayMove || !errors.Is(err, syscall.EADDRINUSE) {
		return ln, err
	}
	host, p, splitErr := net.SplitHostPort(addr)
	port, convErr := strconv.Atoi(p)
	if splitErr != nil || convErr != nil || port == 0 {
		return nil, err
	}
	for next := port + 1; next < port+100 && next <= 65535; next++ {
		if ln, nerr := lc.Listen(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(next))); nerr == nil {
			return ln, nil
		}
	}
	return nil, err
}

// announce prints the commands that try a worker from a second terminal.
func announce(w io.Writer, self, redisURL, topic, httpAddr string, embedded bool) {
	where := "Redis at " + redisURL
	if embedded {
		where = "an embedded in-memory Redis at " + redisURL + " (its data is lost on exit)"
	}
	fmt.Fprintf(w, "bus-worker: serving topic %q on %s. From a second terminal:\n", topic, where)
	fmt.Fprintf(w, "  %s request --redis %s --topic %s --data 'hello mycelium'\n", self, redisURL, topic)
	fmt.Fprintf(w, "  %s stats --redis %s\n", self, redisURL)
	if httpAddr != "" {
		fmt.Fprintf(w, "  curl -s http://%s/metrics | grep mycelium_stage\n", httpAddr)
	}
}
