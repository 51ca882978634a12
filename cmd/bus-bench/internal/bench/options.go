package bench

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/internal/simwork"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
)

// maxCallers bounds --concurrency: each caller is a goroutine with its
// buffers (1e8 took the host's memory in seconds).
const maxCallers = 100_000

// Options is one bench run: the command line's flags (see cmd/bus-bench),
// checked by Check.
type Options struct {
	Redis       string      // "" starts an embedded miniredis (see Embedded)
	Password    string      // replaces the URL's (from --redis-password-file or MYCELIUM_REDIS_PASSWORD)
	TLS         *tls.Config // for rediss:// (from the --tls-* flags); nil: the URL's defaults
	Scenario    string      // rpc | publish | continuous | cached | failover | stream | cancel
	Concurrency int
	Requests    int           // 0 with Duration: bounded by time only
	Duration    time.Duration // 0: bounded by Requests
	Payload     int
	PayloadKind string // random (default) | text: JSON-like prompts
	Compress    string // none (default) | s2 | zstd: the producer's Compression
	Topic       string
	Group       string
	Workers     int  // in-process handler slots
	NoWorkers   bool // drive external bus-worker processes
	Rate        float64
	Timeout     time.Duration
	Prefix      string
	CPUProfile  string
	Trace       string
	FlushDelay  time.Duration
	Conns       int
	Transport   string         // mycelium | pubsub | streams-plain
	PubsubConn  string         // fresh | pooled
	Handler     string         // echo | sleep:<d>[,<jitter>]
	Work        *simwork.Sleep // parsed from Handler by ParseHandler; nil for echo
	Case        string         // suite case being run ("" for a single run)
	// cached scenario: requests drawn from Distinct payloads by a Zipf law
	// of exponent Zipf; NoCache sends them without the response cache (the
	// comparison run).
	Distinct int
	Zipf     float64
	NoCache  bool
	// Redis Cluster and Sentinel (--cluster, --sentinel-master and the
	// sentinels' password), partitions of the topic (0: leave it as it
	// is), replicas each write waits for.
	Cluster          bool
	MasterSet        string
	SentinelPassword string
	Partitions       int
	WaitReplicas     int
	// failover scenario: how (manual: CLUSTER FAILOVER on a replica of the
	// master of the topic's partition 0; shutdown: SHUTDOWN NOSAVE NOW on
	// that master, as a crash) and when.
	Failover  string
	KillAfter time.Duration
	// stream scenario: the handler sends Chunks chunks of Payload bytes,
	// one every ChunkInterval.
	Chunks        int
	ChunkInterval time.Duration
	// quota scenario (quota.go): the fake provider's quotas (QuotaRate
	// requests/s with QuotaBurst, QuotaConcurrency calls, QuotaTokensPerMin
	// tokens/min with costs around CostMean), its latency, the bus-worker
	// processes (WorkerProcs of WorkerSlots handler slots, WorkerBin), and
	// whether the topic's limits are set to the quota (Limits) and a 429
	// pauses the fleet (PauseOn429).
	QuotaRate, QuotaTokensPerMin, CostMean float64
	QuotaBurst, QuotaConcurrency           int
	ProviderLatency                        time.Duration
	WorkerProcs, WorkerSlots               int
	WorkerBin                              string
	Limits, PauseOn429                     bool
	// Backpressure is the producer's policy when a topic's backlog is full
	// (--backpressure block|reject|drop-oldest; producer.Config.Backpressure).
	Backpressure string
	// TracerProvider traces the run's producer and workers (from the
	// OTEL_* environment; nil: off).
	TracerProvider trace.TracerProvider
	// Priority and Tenant: every message of the run is sent at that
	// priority level, for that tenant (--priority, --tenant).
	Priority int
	Tenant   string
	// priority and tenants scenarios (sched.go): the topic's priority
	// levels and strict mode, every level flooded (AllLevels), the flood's
	// size, tenant fairness on or off and the shards per tenant.
	Priorities     int
	PriorityStrict bool
	AllLevels      bool
	Flood          int
	Fairness       string
	FairShards     int
}

// callOptions are the options of --priority and --tenant, as T (a verb's
// option type: producer.RequestOption, producer.PublishOption).
func callOptions[T any](o *Options) []T {
	var opts []T
	if o.Priority > 0 {
		opts = append(opts, any(producer.Priority(o.Priority)).(T))
	}
	if o.Tenant != "" {
		opts = append(opts, any(producer.Tenant(o.Tenant)).(T))
	}
	return opts
}

// checkSched checks and defaults the scheduling flags.
func (o *Options) checkSched(given map[string]bool) error {
	switch {
	case o.Priority < 0 || o.Priority >= bus.MaxPriorities:
		return fmt.Errorf("--priority must be 0 to %d, got %d", bus.MaxPriorities-1, o.Priority)
	case (o.Priority > 0 || o.Tenant != "") && o.Transport != "mycelium":
		return fmt.Errorf("--priority and --tenant apply to --transport mycelium")
	}
	if o.Tenant != "" {
		if err := bus.ValidateName("tenant", o.Tenant); err != nil {
			return fmt.Errorf("--tenant: %w", err)
		}
	}
	sched := o.Scenario == "priority" || o.Scenario == "tenants"
	if !sched {
		for _, f := range []string{"priorities", "strict", "all-levels", "flood", "fairness", "fair-shards"} {
			if given[f] {
				return fmt.Errorf("--%s applies to --scenario priority or tenants", f)
			}
		}
		return nil
	}
	switch {
	case o.Transport != "mycelium" || o.NoWorkers:
		return fmt.Errorf("--scenario %s runs mycelium with its in-process workers", o.Scenario)
	case given["priority"] || given["tenant"]:
		return fmt.Errorf("--scenario %s sets each message's priority and tenant itself", o.Scenario)
	case o.Flood < 1:
		return fmt.Errorf("--flood must be at least 1, got %d", o.Flood)
	}
	if !given["handler"] {
		o.Handler = "sleep:20ms"
	}
	if !given["workers"] {
		o.Workers = 16
	}
	if !given["duration"] {
		o.Duration = 20 * time.Second
	}
	if !given["rate"] {
		o.Rate = 5
	}
	if !given["timeout"] {
		o.Timeout = 2 * time.Minute // a request behind the flood waits for it
	}
	if !given["concurrency"] {
		o.Concurrency = 64 // the flood's publishers
	}
	if o.Scenario == "priority" {
		if given["fairness"] || given["fair-shards"] {
			return fmt.Errorf("--fairness and --fair-shards apply to --scenario tenants")
		}
		if o.Priorities < 2 || o.Priorities > bus.MaxPriorities {
			return fmt.Errorf("--priorities must be 2 to %d, got %d", bus.MaxPriorities, o.Priorities)
		}
		return nil
	}
	if given["priorities"] || given["strict"] || given["all-levels"] {
		return fmt.Errorf("--priorities, --strict and --all-levels apply to --scenario priority")
	}
	o.Priorities = 1
	if !given["partitions"] {
		o.Partitions = 16
	}
	switch {
	case o.Fairness != "on" && o.Fairness != "off":
		return fmt.Errorf("--fairness %q: want on or off", o.Fairness)
	case o.FairShards < 1 || o.FairShards > o.Partitions:
		return fmt.Errorf("--fair-shards must be 1 to the partition count (%d), got %d", o.Partitions, o.FairShards)
	}
	return nil
}

// ErrUsage marks errors in the options: the command exits 2 on them.
var ErrUsage = errors.New("usage")

// Check validates o and fills what follows from it; given names the flags
// set on the command line.
func (o *Options) Check(given map[string]bool) error {
	switch o.Scenario {
	case "rpc", "publish", "continuous", "cached", "failover", "stream", "cancel", "quota", "priority", "tenants":
	default:
		return fmt.Errorf("--scenario %q: want rpc, publish, continuous, cached, failover, stream, cancel, quota, priority or tenants", o.Scenario)
	}
	if err := o.checkSched(given); err != nil {
		return err
	}
	if o.Scenario == "quota" {
		switch {
		case o.Transport != "mycelium":
			return fmt.Errorf("--scenario quota runs mycelium")
		case o.QuotaRate <= 0 || o.QuotaBurst < 1 || o.QuotaConcurrency < 1:
			return fmt.Errorf("--quota-rate, --quota-burst and --quota-concurrency must be positive")
		case o.QuotaTokensPerMin < 0 || o.CostMean < 1:
			return fmt.Errorf("--quota-tokens must not be negative and --cost-mean at least 1")
		case o.WorkerProcs < 1 || o.WorkerProcs > 64 || o.WorkerSlots < 1 || o.WorkerSlots > consumer.MaxConcurrency:
			return fmt.Errorf("--worker-procs must be 1 to 64 and --worker-slots 1 to %d", consumer.MaxConcurrency)
		case o.ProviderLatency < 0:
			return fmt.Errorf("--provider-latency must not be negative")
		}
		o.NoWorkers = true // the bus-worker processes serve
		if o.Duration == 0 {
			o.Duration = 60 * time.Second
		}
		if !given["rate"] {
			o.Rate = 1.5 * o.QuotaRate // offered above the quota
		}
		if !given["concurrency"] {
			o.Concurrency = 256
		}
		given["requests"] = false
	} else if given["quota-rate"] || given["quota-burst"] || given["quota-concurrency"] || given["quota-tokens"] || given["worker-procs"] || given["limits"] {
		return fmt.Errorf("--quota-*, --worker-procs and --limits apply to --scenario quota")
	}
	switch {
	case (o.Scenario == "stream" || o.Scenario == "cancel") && (o.Transport != "mycelium" || o.NoWorkers):
		return fmt.Errorf("--scenario %s runs mycelium with its in-process workers", o.Scenario)
	case o.Scenario == "stream" && (o.Chunks < 1 || o.ChunkInterval < 0):
		return fmt.Errorf("--chunks must be at least 1 and --chunk-interval not negative")
	case o.Scenario != "stream" && (given["chunks"] || given["chunk-interval"]):
		return fmt.Errorf("--chunks and --chunk-interval apply to --scenario stream")
	}
	switch {
	case o.Partitions < 0 || o.Partitions > bus.MaxPartitions:
		return fmt.Errorf("--partitions must be 1 to %d (0: leave the topic as it is), got %d", bus.MaxPartitions, o.Partitions)
	case o.WaitReplicas < 0:
		return fmt.Errorf("--wait-replicas must not be negative")
	case o.Scenario == "failover" && o.Failover != "manual" && o.Failover != "shutdown":
		return fmt.Errorf("--failover %q: want manual (CLUSTER FAILOVER on a replica) or shutdown (SHUTDOWN NOSAVE NOW on the master)", o.Failover)
	case o.Scenario == "failover" && (o.Transport != "mycelium" || o.NoWorkers):
		return fmt.Errorf("--scenario failover runs mycelium with its in-process workers")
	case o.Scenario != "failover" && (given["failover"] || given["kill-after"]):
		return fmt.Errorf("--failover and --kill-after apply to --scenario failover")
	case o.Transport != "mycelium" && (o.Partitions > 0 || o.WaitReplicas > 0 || o.Cluster || o.MasterSet != ""):
		return fmt.Errorf("--transport %s: the baseline knows no partitions, replicas, Cluster or Sentinel", o.Transport)
	}
	if o.Scenario == "failover" {
		if o.Duration == 0 {
			o.Duration = 20 * time.Second
		}
		if o.KillAfter <= 0 || o.KillAfter >= o.Duration {
			return fmt.Errorf("--kill-after must be within the run (--duration %v), got %v", o.Duration, o.KillAfter)
		}
	}
	if o.Scenario == "cached" {
		switch {
		case o.Distinct < 1:
			return fmt.Errorf("--distinct must be at least 1, got %d", o.Distinct)
		case o.Zipf <= 1:
			return fmt.Errorf("--zipf must be above 1, got %v", o.Zipf)
		case o.Transport != "mycelium":
			return fmt.Errorf("--scenario cached runs on mycelium only")
		}
	} else if o.NoCache || given["distinct"] || given["zipf"] {
		return fmt.Errorf("--distinct, --zipf and --no-cache apply to --scenario cached")
	}
	switch {
	case o.Concurrency < 1 || o.Concurrency > maxCallers:
		return fmt.Errorf("--concurrency must be 1 to %d, got %d", maxCallers, o.Concurrency)
	case o.Workers > consumer.MaxConcurrency:
		return fmt.Errorf("--workers must be at most %d, got %d", consumer.MaxConcurrency, o.Workers)
	case o.Payload > producer.MaxPayloadCap:
		return fmt.Errorf("--payload must be at most %d bytes, got %d", producer.MaxPayloadCap, o.Payload)
	case o.Requests < 1 && o.Duration == 0:
		return fmt.Errorf("--requests must be at least 1, got %d", o.Requests)
	case o.Duration < 0:
		return fmt.Errorf("--duration must not be negative")
	case o.Payload < 16:
		return fmt.Errorf("--payload must be at least 16 bytes (room for the check header), got %d", o.Payload)
	case o.PayloadKind != "" && o.PayloadKind != "random" && o.PayloadKind != "text":
		return fmt.Errorf("--payload-kind must be random or text, got %q", o.PayloadKind)
	case o.Compress != "" && o.Compress != "none" && o.Compress != "s2" && o.Compress != "zstd":
		return fmt.Errorf("--compress must be none, s2 or zstd, got %q", o.Compress)
	case o.Compress != "" && o.Compress != "none" && o.Transport != "" && o.Transport != "mycelium":
		return fmt.Errorf("--compress applies to --transport mycelium (the baselines send payloads as they are)")
	case o.Workers < 0:
		return fmt.Errorf("--workers must not be negative")
	case o.NoWorkers && given["workers"]:
		return fmt.Errorf("--workers and --no-workers exclude each other")
	case o.Rate <= 0:
		return fmt.Errorf("--rate must be positive")
	case o.Timeout <= 0:
		return fmt.Errorf("--timeout must be positive")
	}
	if err := bus.ValidateName("topic", o.Topic); err != nil {
		return err
	}
	switch o.Transport {
	case "mycelium":
	case "pubsub":
		if o.Scenario == "publish" {
			return fmt.Errorf("--transport pubsub: the baseline has request/reply only (rpc, continuous), not publish")
		}
		if o.NoWorkers {
			return fmt.Errorf("--transport pubsub runs its own baseline workers; drop --no-workers")
		}
	case "streams-plain":
		if o.Scenario != "rpc" && o.Scenario != "continuous" && o.Scenario != "publish" {
			return fmt.Errorf("--transport streams-plain: the baseline runs rpc, continuous and publish")
		}
		if o.NoWorkers {
			return fmt.Errorf("--transport streams-plain runs its own baseline workers; drop --no-workers")
		}
	default:
		return fmt.Errorf("--transport %q: want mycelium, pubsub or streams-plain", o.Transport)
	}
	if o.Backpressure == "" {
		o.Backpressure = producer.Block.String()
	}
	if _, err := producer.ParseBackpressurePolicy(o.Backpressure); err != nil {
		return fmt.Errorf("--backpressure %q: want block, reject or drop-oldest", o.Backpressure)
	}
	if o.Transport != "mycelium" && given["backpressure"] {
		return fmt.Errorf("--backpressure applies to --transport mycelium")
	}
	if o.PubsubConn != "fresh" && o.PubsubConn != "pooled" {
		return fmt.Errorf("--pubsub-conn %q: want fresh or pooled", o.PubsubConn)
	}
	if err := o.ParseHandler(); err != nil {
		return err
	}
	if o.Redis != "" {
		if err := o.BusConfig(o.Redis).Validate(); err != nil {
			return err
		}
	}
	if o.Transport != "mycelium" && (o.TLS != nil || o.Password != "") {
		return fmt.Errorf("--transport %s: the baseline connects with the URL alone (no --tls-* or password file)", o.Transport)
	}
	if o.FlushDelay == 0 {
		o.FlushDelay = -1 // explicit 0 on the command line: off
	}
	if o.Workers == 0 {
		o.Workers = min(max(o.Concurrency, 64), consumer.MaxConcurrency)
	}
	if o.Duration > 0 && !given["requests"] {
		o.Requests = 0 // bounded by time only
	}
	return nil
}

// BusConfig is the connection to url with o's prefix, password and TLS.
func (o *Options) BusConfig(url string) bus.Config {
	return bus.Config{URL: url, Prefix: o.Prefix, ClientName: "myc-bench", Password: o.Password, TLS: o.TLS,
		MaxFlushDelay: o.FlushDelay, PipelineConns: o.Conns,
		Cluster: o.Cluster, MasterSet: o.MasterSet, SentinelPassword: o.SentinelPassword}
}

// ParseHandler reads Handler: echo, or sleep:<dur>[,<jitter>], into Work.
func (o *Options) ParseHandler() error {
	o.Work = nil
	if o.Handler == "echo" {
		return nil
	}
	spec, ok := strings.CutPrefix(o.Handler, "sleep:")
	if !ok {
		return fmt.Errorf("--handler %q: want echo or sleep:<dur>[,<jitter>]", o.Handler)
	}
	w, err := simwork.Parse(spec)
	if err != nil {
		return fmt.Errorf("--handler %q: %w", o.Handler, err)
	}
	o.Work = &w
	if o.NoWorkers {
		return fmt.Errorf("--handler applies to in-process workers; drop --no-workers")
	}
	return nil
}
