// Package worker runs one bus-worker: a consumer of one topic (or a
// consumer.Router of several) running its handler (echo, simulated work, or an HTTP backend), optionally behind a
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
	// Topics, when it names more than one topic, serves them all from one
	// process (a consumer.Router): each with Consumer's settings (its Topic
	// aside), sharing Consumer.Concurrency handler slots, each topic capped
	// at Caps[topic] (missing or 0: Consumer.Concurrency). Empty or one
	// topic: Consumer.Topic (or that topic) alone, on its own Consumer.
	Topics  []string
	Caps    map[string]int
	Handler string // echo | sleep:<dur>[,<jitter>] | stream:<n>,<interval> | http(s)://URL (see ParseHandler)
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
	tops, err := newTopics(cfg, h, log)
	if err != nil {
		return err
	}
	defer tops.close()
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
	if err := tops.build(c, cfg, log); err != nil {
		return fmt.Errorf("%w: %w", ErrSetup, err)
	}
	httpAddr := ""
	stopOps := func() {}
	if ln != nil {
		httpAddr = ln.Addr().String()
		reg, err := registry(c, tops)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		stopOps = serveOps(ln, opsMux(tops, reg), log)
	}
	done := make(chan error, 1) // Run's result; Run is waited for below
	go func() { done <- tops.run.Run(ctx) }()
	<-tops.run.Serving() // joined (or Run returned): only now does a request find this worker
	if ctx.Err() == nil {
		if cfg.Announce != nil {
			announce(cfg.Announce, cmp.Or(cfg.Self, "bus-worker"), c.Redacted(), tops.names, httpAddr, embedded != "")
		}
		if embedded != "" {
			log.Warn().Str("redis", embedded).Msg("started an embedded in-memory Redis (miniredis) at " + embedded + "; its data is lost on exit; not for production")
		}
		co := tops.cos[0]
		log.Info().Str("redis", c.Redacted()).Func(tops.logNames).Str("group", co.Config().Group).Str("consumer", co.Name()).
			Int("concurrency", cmp.Or(cfg.Consumer.Concurrency, consumer.DefaultConcurrency)).Str("handler", RedactSpec(cfg.Handler)).Str("http_addr", httpAddr).Msg("serving")
	}
	err = <-done
	stopOps()
	var s consumer.Stats
	for _, co := range tops.cos {
		cs := co.Stats()
		s.Handled, s.Acked, s.Failed = s.Handled+cs.Handled, s.Acked+cs.Acked, s.Failed+cs.Failed
	}
	log.Info().Uint64("handled", s.Handled).Uint64("acked", s.Acked).Uint64("failed", s.Failed).Msg("stopped")
	return err
}

// runner is what serves: a Consumer (one topic) or a Router (several).
type runner interface {
	Run(ctx context.Context) error
	Serving() <-chan struct{}
	Ready(ctx context.Context) error
}

// topics is what a worker serves: each topic's handler (behind its own
// breaker), its Consumer once built, and what runs them.
type topics struct {
	names    []string
	handlers []consumer.Handler
	brs      []*breaker.Breaker // nil entries without a breaker
	brm      []*prom.BreakerCollector
	cos      []*consumer.Consumer
	run      runner
}

// newTopics readies the topics of cfg, each with its breaker around h.
func newTopics(cfg Config, h consumer.Handler, log zerolog.Logger) (*topics, error) {
	t := &topics{names: cfg.Topics}
	if len(t.names) == 0 {
		t.names = []string{cfg.Consumer.Topic}
	}
	for _, name := range t.names {
		m := prom.NewBreakerCollector(prometheus.Labels{"topic": name})
		br, err := newBreaker(cfg, m, log.With().Str("topic", name).Logger())
		if err != nil {
			t.close()
			return nil, err
		}
		th := h
		if br != nil {
			th = consumer.Chain(h, consumer.BreakerMiddleware(br))
		}
		t.handlers, t.brs, t.brm = append(t.handlers, th), append(t.brs, br), append(t.brm, m)
	}
	return t, nil
}

// build makes the Consumer of each topic: on its own for one topic, in a
// Router sharing cfg.Consumer.Concurrency slots for several.
func (t *topics) build(c *bus.Client, cfg Config, log zerolog.Logger) error {
	if len(t.names) == 1 {
		cc := cfg.Consumer
		cc.Topic = t.names[0]
		co, err := consumer.New(c, cc, t.handlers[0], consumer.WithLogger(log))
		if err != nil {
			return err
		}
		t.cos, t.run = []*consumer.Consumer{co}, co
		return nil
	}
	r, err := consumer.NewRouter(c, consumer.RouterConfig{Concurrency: cfg.Consumer.Concurrency}, consumer.WithLogger(log))
	if err != nil {
		return err
	}
	for i, name := range t.names {
		cc := cfg.Consumer
		cc.Topic, cc.Concurrency = name, cfg.Caps[name]
		co, err := r.Handle(name, t.handlers[i], cc)
		if err != nil {
			return err
		}
		t.cos = append(t.cos, co)
	}
	t.run = r
	return nil
}

// logNames adds the topics to a log event: "topic" for one; for several,
// "topics" (a JSON array: a topic named "a,b" is not topics a and b) and
// each one's cap.
func (t *topics) logNames(e *zerolog.Event) {
	if len(t.names) == 1 {
		e.Str("topic", t.names[0])
		return
	}
	caps := zerolog.Dict()
	for _, co := range t.cos {
		caps.Int(co.Config().Topic, co.Config().Concurrency)
	}
	e.Strs("topics", t.names).Dict("topic_concurrency", caps)
}

// close stops the breakers.
func (t *topics) close() {
	for _, br := range t.brs {
		if br != nil {
			br.Close()
		}
	}
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
func announce(w io.Writer, self, redisURL string, topics []string, httpAddr string, embedded bool) {
	where := "Redis at " + redisURL
	if embedded {
		where = "an embedded in-memory Redis at " + redisURL + " (its data is lost on exit)"
	}
	what := fmt.Sprintf("topic %q", topics[0])
	if len(topics) > 1 {
		what = fmt.Sprintf("topics %q", topics)
	}
	fmt.Fprintf(w, "bus-worker: serving %s on %s. From a second terminal:\n", what, where)
	fmt.Fprintf(w, "  %s request --redis %s --topic %s --data 'hello mycelium'\n", self, redisURL, topics[0])
	fmt.Fprintf(w, "  %s stats --redis %s\n", self, redisURL)
	if httpAddr != "" {
		fmt.Fprintf(w, "  curl -s http://%s/metrics | grep mycelium_stage\n", httpAddr)
	}
}
