package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/bus-bench/internal/bench"
	"github.com/egos/mycelium/cmd/internal/cli"
	"github.com/egos/mycelium/inspect"
)

// options is the command line: one bench run, or a suite of them.
type options struct {
	bench.Options
	json  bool
	suite string // "" or seed
	// servePubsub runs only the PubSub baseline's workers on --topic until
	// interrupted (for other clients' before/after runs).
	servePubsub bool
	quick       bool   // --suite-quick: a scaled-down suite for tests
	ignore      bool   // --ignore-targets
	report      string // directory for results.jsonl and report.html
	compare     string // --compare-redis: the cluster suite's standalone server
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	b := &o.Options
	fs := flag.NewFlagSet("bus-bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&b.Redis, "redis", "", "Redis URL; empty starts an embedded miniredis (timings not representative)")
	var conn cli.ConnFlags
	conn.Register(fs)
	fs.StringVar(&b.Scenario, "scenario", "rpc", "rpc | publish | continuous | cached | failover | stream (a handler streaming --chunks chunks, one every --chunk-interval) | cancel (callers cancel running requests: time to the handler's ctx.Done) | quota | priority (a flood at the least urgent level, requests at level 0: their queue wait) | tenants (tenant A floods, B to E trickle: their queue wait, --fairness on|off)")
	fs.IntVar(&b.Chunks, "chunks", 200, "stream: chunks per streamed reply")
	fs.DurationVar(&b.ChunkInterval, "chunk-interval", 10*time.Millisecond, "stream: the handler sends one chunk this often (10ms: a fake model at 100 tokens/s)")
	fs.IntVar(&b.Partitions, "partitions", 0, "set the topic's partition count before the run (0: leave it as it is)")
	fs.IntVar(&b.WaitReplicas, "wait-replicas", 0, "the producer waits for this many replicas after each write (producer.Config.WaitReplicas)")
	fs.StringVar(&b.Failover, "failover", "manual", "failover: manual (CLUSTER FAILOVER on a replica of the master of the topic's partition 0) | shutdown (SHUTDOWN NOSAVE NOW on that master, as a crash)")
	fs.DurationVar(&b.KillAfter, "kill-after", 5*time.Second, "failover: when to fail the master over, from the start of the measured run")
	fs.IntVar(&b.Distinct, "distinct", 1000, "cached: how many different payloads the requests are drawn from")
	fs.Float64Var(&b.Zipf, "zipf", 1.1, "cached: exponent of the Zipf law the payloads are drawn by (above 1; higher: a few payloads dominate)")
	fs.BoolVar(&b.NoCache, "no-cache", false, "cached: send the same requests without the response cache (the comparison run)")
	fs.IntVar(&b.Concurrency, "concurrency", 64, "concurrent callers (continuous: most requests outstanding)")
	fs.IntVar(&b.Requests, "requests", 10000, "requests or events to send")
	fs.DurationVar(&b.Duration, "duration", 0, "run for this long instead of a count (continuous: with --rate)")
	fs.IntVar(&b.Payload, "payload", 1024, "payload size in bytes (at least 16)")
	fs.StringVar(&b.PayloadKind, "payload-kind", "random", "random (incompressible bytes) | text (JSON-like prompts, as language models get)")
	fs.StringVar(&b.Compress, "compress", "none", "none | s2 | zstd: the producer compresses payloads of 1 KiB or more when it pays (workers answer the same way)")
	fs.StringVar(&b.Topic, "topic", "reasoning", "topic")
	fs.StringVar(&b.Group, "group", "workers", "consumer group (of the in-process workers, or of the external ones with --no-workers)")
	fs.IntVar(&b.Workers, "workers", 0, "handler concurrency of the in-process echo workers (default: max(concurrency, 64))")
	fs.BoolVar(&b.NoWorkers, "no-workers", false, "start no workers: drive external bus-worker processes on the topic")
	fs.Float64Var(&b.Rate, "rate", 100, "continuous: requests per second (open loop)")
	fs.DurationVar(&b.Timeout, "timeout", 30*time.Second, "per-request timeout")
	fs.BoolVar(&o.json, "json", false, "print exactly one JSON result line on stdout")
	fs.StringVar(&b.Prefix, "prefix", bus.DefaultPrefix, "key prefix")
	fs.DurationVar(&b.FlushDelay, "max-flush-delay", bus.DefaultMaxFlushDelay, "auto-pipeline flush delay under load (bus.Config.MaxFlushDelay); negative disables")
	fs.IntVar(&b.Conns, "pipeline-conns", 0, "auto-pipelined connections per client (bus.Config.PipelineConns; 0 = rueidis default)")
	fs.StringVar(&b.CPUProfile, "cpuprofile", "", "write a CPU profile of the measured run to this file")
	fs.StringVar(&b.Trace, "trace", "", "write a Go execution trace of the measured run to this file (go tool trace; -pprof=sched shows where goroutines wait for a CPU)")
	fs.StringVar(&b.Transport, "transport", "mycelium", "mycelium | pubsub (the old design, as a baseline: a fresh subscription per request, JSON payloads) | streams-plain (the ordinary Streams design, as a baseline: a sync XADD per call, workers XREADGROUP COUNT 100 and reply + XACK pipelined, one reply reader per process)")
	fs.StringVar(&b.PubsubConn, "pubsub-conn", "fresh", "with --transport pubsub: fresh (a new connection per subscription, as go-redis Subscribe does) | pooled (reuse pooled connections)")
	quotaRate := fs.String("quota-rate", "100/s", "quota: the fake provider's request quota (N/s, N/m or N/h)")
	fs.IntVar(&b.QuotaBurst, "quota-burst", 10, "quota: requests the provider takes at once above its rate")
	fs.IntVar(&b.QuotaConcurrency, "quota-concurrency", 8, "quota: concurrent calls the provider takes")
	quotaTokens := fs.String("quota-tokens", "", "quota: the provider's token quota (e.g. 60000/m; empty: none); each call costs its caller's estimate (producer.Cost, drawn around --cost-mean) give or take half")
	fs.Float64Var(&b.CostMean, "cost-mean", 100, "quota: mean of the callers' cost estimates (exponentially distributed)")
	fs.DurationVar(&b.ProviderLatency, "provider-latency", 20*time.Millisecond, "quota: how long the provider takes per answered call")
	fs.IntVar(&b.WorkerProcs, "worker-procs", 3, "quota: bus-worker serve processes serving the topic")
	fs.IntVar(&b.WorkerSlots, "worker-slots", 32, "quota: handler slots of each bus-worker process")
	fs.StringVar(&b.WorkerBin, "worker-bin", "", "quota: the bus-worker binary (default: beside bus-bench)")
	limits := fs.String("limits", "on", "quota: on (the topic's fleet-wide limits set to the provider's quota) | off (none: the 429s the fleet meets)")
	fs.BoolVar(&b.PauseOn429, "pause-on-429", false, "quota: the workers pause the topic on a 429 (bus-worker serve --http-pause-on-429)")
	fs.StringVar(&b.Backpressure, "backpressure", "block", "the producer's policy when a topic's backlog is full (producer.Config.Backpressure): block (wait for room) | reject (refuse with ErrBacklogFull: counted in refused and errors) | drop-oldest (write anyway: MAXLEN trims unread entries, counted in lost)")
	fs.IntVar(&b.Priority, "priority", 0, "send every message of the run at this priority level (0, the most urgent, to 9; a topic with priority levels)")
	fs.StringVar(&b.Tenant, "tenant", "", "send every message of the run for this tenant (its shard set on a topic with tenant fairness)")
	fs.IntVar(&b.Priorities, "priorities", 3, "priority: the topic's priority levels (2 to 10)")
	fs.BoolVar(&b.PriorityStrict, "strict", false, "priority: serve the levels strictly in order (weighted by default)")
	fs.BoolVar(&b.AllLevels, "all-levels", false, "priority: flood every level and report each level's share of the entries handled against its weight's")
	fs.IntVar(&b.Flood, "flood", 20000, "priority, tenants: events queued before the measured requests (at the least urgent level; by tenant A)")
	fs.StringVar(&b.Fairness, "fairness", "on", "tenants: on (each tenant writes to --fair-shards of the --partitions) | off (round robin over all)")
	fs.IntVar(&b.FairShards, "fair-shards", 2, "tenants: partitions per tenant with --fairness on")
	fs.StringVar(&b.Handler, "handler", "echo", "in-process workers' handler: echo | sleep:<dur>[,<jitter>] (simulated work, then echo; reports the bus overhead)")
	fs.BoolVar(&o.servePubsub, "serve-pubsub", false, "serve the PubSub baseline's workers (--workers of them, --handler) on --topic until interrupted, printing \"serving\" when ready: the old design's side of another client's before/after run (clients/python/tools/bench.py)")
	fs.StringVar(&o.suite, "suite", "", "run a scenario suite instead of one scenario: seed (the plan's scenarios, for both transports) | cluster (partitions and failovers on a Redis Cluster)")
	fs.StringVar(&o.compare, "compare-redis", "", "with --suite cluster: a standalone Redis URL for the comparison runs (1 and 12 partitions on one server)")
	fs.BoolVar(&o.quick, "suite-quick", false, "with --suite: a scaled-down run (fewer requests, 0.5 s sweep points, 200 ms handler) to check the suite itself, not to measure")
	fs.StringVar(&o.report, "report", "", "with --suite: write results.jsonl and a self-contained report.html into this directory")
	fs.BoolVar(&o.ignore, "ignore-targets", false, "with --suite: exit 0 even when a target fails (the verdicts are printed all the same; --suite-quick never enforces them)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "Usage: bus-bench --redis URL --scenario rpc|publish|continuous|cached|failover|stream|cancel|quota|priority|tenants --concurrency N --requests N [--duration D] --payload BYTES [--topic T] [--workers N | --no-workers] [--rate R] [--timeout D] [--transport mycelium|pubsub|streams-plain] [--payload-kind random|text] [--compress none|s2|zstd] [--handler echo|sleep:D[,J]] [--partitions N] [--wait-replicas N] [--failover manual|shutdown --kill-after D] --json")
			fmt.Fprintln(stderr, "       bus-bench --redis URL --suite seed [--report DIR] [--json]")
			fs.PrintDefaults()
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", bench.ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", bench.ErrUsage, fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, name := range cli.ConnFlagNames { // as bus-worker: the environment when the flag is not given
		if env, ok := os.LookupEnv("MYCELIUM_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); ok && !given[name] {
			if err := fs.Set(name, env); err != nil {
				return nil, fmt.Errorf("%w: MYCELIUM_%s: %w", bench.ErrUsage, strings.ToUpper(strings.ReplaceAll(name, "-", "_")), err)
			}
		}
	}
	cfg := bus.Config{}
	if err := conn.Apply(&cfg, "bus-bench", stderr); err != nil {
		return nil, fmt.Errorf("%w: %w", bench.ErrUsage, err)
	}
	b.Password, b.TLS = cfg.Password, cfg.TLS
	n, d, err := inspect.ParseRate(*quotaRate)
	if err != nil {
		return nil, fmt.Errorf("%w: --quota-rate: %w", bench.ErrUsage, err)
	}
	b.QuotaRate = float64(n) / d.Seconds()
	if *quotaTokens != "" {
		n, d, err := inspect.ParseRate(*quotaTokens)
		if err != nil {
			return nil, fmt.Errorf("%w: --quota-tokens: %w", bench.ErrUsage, err)
		}
		b.QuotaTokensPerMin = float64(n) / d.Minutes()
	}
	switch *limits {
	case "on":
		b.Limits = true
	case "off":
	default:
		return nil, fmt.Errorf("%w: --limits %q: want on or off", bench.ErrUsage, *limits)
	}
	b.Cluster, b.MasterSet, b.SentinelPassword = cfg.Cluster, cfg.MasterSet, cfg.SentinelPassword
	if err := o.check(given); err != nil {
		return nil, fmt.Errorf("%w: %w", bench.ErrUsage, err)
	}
	return o, nil
}

func (o *options) check(given map[string]bool) error {
	if err := o.Check(given); err != nil {
		return err
	}
	switch {
	case o.suite != "" && o.suite != "seed" && o.suite != "cluster":
		return fmt.Errorf("--suite %q: want seed or cluster", o.suite)
	case o.report != "" && o.suite == "":
		return fmt.Errorf("--report needs --suite")
	case o.ignore && o.suite == "":
		return fmt.Errorf("--ignore-targets needs --suite")
	case o.compare != "" && o.suite != "cluster":
		return fmt.Errorf("--compare-redis needs --suite cluster")
	case o.suite != "" && o.NoWorkers:
		return fmt.Errorf("--suite runs its own in-process workers; drop --no-workers")
	}
	return nil
}
