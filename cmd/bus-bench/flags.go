package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/simwork"
)

type options struct {
	redis       string
	scenario    string
	concurrency int
	requests    int
	duration    time.Duration
	payload     int
	topic       string
	group       string
	workers     int
	noWorkers   bool
	rate        float64
	timeout     time.Duration
	json        bool
	prefix      string
	cpuProfile  string
	trace       string
	flushDelay  time.Duration
	conns       int
	transport   string         // mycelium | pubsub
	pubsubConn  string         // fresh | pooled
	handler     string         // echo | sleep:<d>[,<jitter>]
	work        *simwork.Sleep // parsed from handler; nil for echo
	suite       string         // "" or seed
	quick       bool           // --suite-quick: a scaled-down suite for tests
	report      string         // directory for results.jsonl and report.html
	caseName    string         // suite case being run
}

var errUsage = errors.New("usage")

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bus-bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.redis, "redis", "", "Redis URL; empty starts an embedded miniredis (timings not representative)")
	fs.StringVar(&o.scenario, "scenario", "rpc", "rpc | publish | continuous")
	fs.IntVar(&o.concurrency, "concurrency", 64, "concurrent callers (continuous: most requests outstanding)")
	fs.IntVar(&o.requests, "requests", 10000, "requests or events to send")
	fs.DurationVar(&o.duration, "duration", 0, "run for this long instead of a count (continuous: with --rate)")
	fs.IntVar(&o.payload, "payload", 1024, "payload size in bytes (at least 16)")
	fs.StringVar(&o.topic, "topic", "reasoning", "topic")
	fs.StringVar(&o.group, "group", "workers", "consumer group (of the in-process workers, or of the external ones with --no-workers)")
	fs.IntVar(&o.workers, "workers", 0, "handler concurrency of the in-process echo workers (default: max(concurrency, 64))")
	fs.BoolVar(&o.noWorkers, "no-workers", false, "start no workers: drive external bus-worker processes on the topic")
	fs.Float64Var(&o.rate, "rate", 100, "continuous: requests per second (open loop)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "per-request timeout")
	fs.BoolVar(&o.json, "json", false, "print exactly one JSON result line on stdout")
	fs.StringVar(&o.prefix, "prefix", bus.DefaultPrefix, "key prefix")
	fs.DurationVar(&o.flushDelay, "max-flush-delay", bus.DefaultMaxFlushDelay, "auto-pipeline flush delay under load (bus.Config.MaxFlushDelay); negative disables")
	fs.IntVar(&o.conns, "pipeline-conns", 0, "auto-pipelined connections per client (bus.Config.PipelineConns; 0 = rueidis default)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the measured run to this file")
	fs.StringVar(&o.trace, "trace", "", "write a Go execution trace of the measured run to this file (go tool trace; -pprof=sched shows where goroutines wait for a CPU)")
	fs.StringVar(&o.transport, "transport", "mycelium", "mycelium | pubsub (the old design, as a baseline: a fresh subscription per request, JSON payloads)")
	fs.StringVar(&o.pubsubConn, "pubsub-conn", "fresh", "with --transport pubsub: fresh (a new connection per subscription, as go-redis Subscribe does) | pooled (reuse pooled connections)")
	fs.StringVar(&o.handler, "handler", "echo", "in-process workers' handler: echo | sleep:<dur>[,<jitter>] (simulated work, then echo; reports the bus overhead)")
	fs.StringVar(&o.suite, "suite", "", "run a scenario suite instead of one scenario: seed (the plan's scenarios, for both transports)")
	fs.BoolVar(&o.quick, "suite-quick", false, "with --suite: a scaled-down run (fewer requests, 0.5 s sweep points, 200 ms handler) to check the suite itself, not to measure")
	fs.StringVar(&o.report, "report", "", "with --suite: write results.jsonl and a self-contained report.html into this directory")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "Usage: bus-bench --redis URL --scenario rpc|publish|continuous --concurrency N --requests N [--duration D] --payload BYTES [--topic T] [--workers N | --no-workers] [--rate R] [--timeout D] [--transport mycelium|pubsub] [--handler echo|sleep:D[,J]] --json")
			fmt.Fprintln(stderr, "       bus-bench --redis URL --suite seed [--report DIR] [--json]")
			fs.PrintDefaults()
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	var given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if err := o.check(given); err != nil {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	return o, nil
}

func (o *options) check(given map[string]bool) error {
	switch o.scenario {
	case "rpc", "publish", "continuous":
	default:
		return fmt.Errorf("--scenario %q: want rpc, publish or continuous", o.scenario)
	}
	switch {
	case o.concurrency < 1:
		return fmt.Errorf("--concurrency must be at least 1, got %d", o.concurrency)
	case o.requests < 1 && o.duration == 0:
		return fmt.Errorf("--requests must be at least 1, got %d", o.requests)
	case o.duration < 0:
		return fmt.Errorf("--duration must not be negative")
	case o.payload < 16:
		return fmt.Errorf("--payload must be at least 16 bytes (room for the check header), got %d", o.payload)
	case o.workers < 0:
		return fmt.Errorf("--workers must not be negative")
	case o.noWorkers && given["workers"]:
		return fmt.Errorf("--workers and --no-workers exclude each other")
	case o.rate <= 0:
		return fmt.Errorf("--rate must be positive")
	case o.timeout <= 0:
		return fmt.Errorf("--timeout must be positive")
	}
	if err := bus.ValidateName("topic", o.topic); err != nil {
		return err
	}
	switch o.transport {
	case "mycelium":
	case "pubsub":
		if o.scenario == "publish" {
			return fmt.Errorf("--transport pubsub: the baseline has request/reply only (rpc, continuous), not publish")
		}
		if o.noWorkers {
			return fmt.Errorf("--transport pubsub runs its own baseline workers; drop --no-workers")
		}
	default:
		return fmt.Errorf("--transport %q: want mycelium or pubsub", o.transport)
	}
	if o.pubsubConn != "fresh" && o.pubsubConn != "pooled" {
		return fmt.Errorf("--pubsub-conn %q: want fresh or pooled", o.pubsubConn)
	}
	if err := o.parseHandler(); err != nil {
		return err
	}
	switch {
	case o.suite != "" && o.suite != "seed":
		return fmt.Errorf("--suite %q: want seed", o.suite)
	case o.report != "" && o.suite == "":
		return fmt.Errorf("--report needs --suite seed")
	case o.suite != "" && o.noWorkers:
		return fmt.Errorf("--suite runs its own in-process workers; drop --no-workers")
	}
	if o.redis != "" {
		if err := (bus.Config{URL: o.redis}).Validate(); err != nil {
			return err
		}
	}
	if o.flushDelay == 0 {
		o.flushDelay = -1 // explicit 0 on the command line: off
	}
	if o.workers == 0 {
		o.workers = max(o.concurrency, 64)
	}
	if o.duration > 0 && !given["requests"] {
		o.requests = 0 // bounded by time only
	}
	return nil
}

// parseHandler reads --handler: echo, or sleep:<dur>[,<jitter>].
func (o *options) parseHandler() error {
	if o.handler == "echo" {
		return nil
	}
	spec, ok := strings.CutPrefix(o.handler, "sleep:")
	if !ok {
		return fmt.Errorf("--handler %q: want echo or sleep:<dur>[,<jitter>]", o.handler)
	}
	w, err := simwork.Parse(spec)
	if err != nil {
		return fmt.Errorf("--handler %q: %w", o.handler, err)
	}
	o.work = &w
	if o.noWorkers {
		return fmt.Errorf("--handler applies to in-process workers; drop --no-workers")
	}
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
