// Package bench runs one bus-bench scenario (rpc, publish or continuous)
// against a Redis server, on Mycelium or on the PubSub baseline, and
// measures it: the Result line other tools read, latency samples and
// timelines for the report, where the time went by stage, CPU per request
// and batching.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/bus-bench/internal/plain"
	"github.com/egos/mycelium/cmd/bus-bench/internal/pubsub"
	"github.com/egos/mycelium/cmd/internal/cli"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
)

// Result is the JSON line contract read by other tools: keep every field
// and its name; add new fields at the end.
type Result struct {
	System        string  `json:"system"`
	Scenario      string  `json:"scenario"`
	Concurrency   int     `json:"concurrency"`
	Payload       int     `json:"payload"`
	PayloadKind   string  `json:"payload_kind,omitempty"` // text: JSON-like prompts (random bytes when absent)
	Compress      string  `json:"compress,omitempty"`     // the producer's compression (none when absent)
	Requests      int     `json:"requests"`
	OK            int     `json:"ok"`
	Errors        int     `json:"errors"`
	Seconds       float64 `json:"seconds"`
	ThroughputRPS float64 `json:"throughput_rps"`
	P50US         int64   `json:"p50_us"`
	P90US         int64   `json:"p90_us"`
	P99US         int64   `json:"p99_us"`
	MaxUS         int64   `json:"max_us"`

	// Added by the analysis suite (absent when empty).
	Case          string            `json:"case,omitempty"`            // suite case name
	Handler       string            `json:"handler,omitempty"`         // worker handler when not a plain echo
	OverheadP50US int64             `json:"overhead_p50_us,omitempty"` // per request: end to end minus handler time
	OverheadP99US int64             `json:"overhead_p99_us,omitempty"`
	Stages        []metrics.Summary `json:"stages,omitempty"` // mycelium: where the time went

	// CPU per completed request (µs) over the measured part: this process
	// (callers and in-process workers) and the Redis server (all its
	// clients; meaningful on a server of its own). Absent when the server
	// does not report INFO cpu.
	ClientCPUUS float64 `json:"client_cpu_us,omitempty"`
	RedisCPUUS  float64 `json:"redis_cpu_us,omitempty"`

	// Batches: mycelium, measured part only (absent for the baseline).
	Batches *Batches `json:"batches,omitempty"`

	// Cache: the cached scenario only.
	Cache *CacheResult `json:"cache,omitempty"`

	// Partitions of the topic during the run (--partitions), replicas
	// each write waited for (--wait-replicas), and the Redis deployment:
	// standalone, cluster or sentinel, with its masters' CPU per request
	// one by one (RedisCPUUS is their sum).
	Partitions     int       `json:"partitions,omitempty"`
	WaitReplicas   int       `json:"wait_replicas,omitempty"`
	RedisMode      string    `json:"redis_mode,omitempty"`
	RedisNodeCPUUS []float64 `json:"redis_node_cpu_us,omitempty"`

	// Failover: the failover scenario only.
	Failover *FailoverResult `json:"failover,omitempty"`

	// Stream and Cancel: the stream and cancel scenarios only.
	Stream *StreamResult `json:"stream,omitempty"`
	Cancel *CancelResult `json:"cancel,omitempty"`

	// Publish scenario (in-process workers): ok and throughput_rps count
	// events handled; of the events published, handled were handled,
	// lost were accepted by Redis and never handled within --timeout
	// (trimmed unread), refused were refused by the producer's
	// backpressure (bus.ErrBacklogFull). Lost and refused count in errors.
	Backpressure string `json:"backpressure,omitempty"`
	// Quota: the quota scenario only (a fake provider behind bus-worker
	// processes; ok counts its answers in the measured window, errors the
	// publishes that failed; its 429s are in Quota).
	Quota   *QuotaResult `json:"quota,omitempty"`
	Handled *int64       `json:"handled,omitempty"`
	Lost    *int64       `json:"lost,omitempty"`
	Refused *int64       `json:"refused,omitempty"`
	// Sched: the priority and tenants scenarios only (sched.go).
	Sched *SchedResult `json:"sched,omitempty"`
	// Priority and Tenant every message of the run was sent with
	// (--priority, --tenant), when set.
	Priority int    `json:"priority,omitempty"`
	Tenant   string `json:"tenant,omitempty"`
}

// FailoverResult is what a failover-scenario run saw: when and how the
// master of the topic's partition 0 was failed over, how long requests to
// that partition failed, and what became of the events Redis acknowledged.
type FailoverResult struct {
	Mode       string  `json:"mode"`   // manual | shutdown
	Target     string  `json:"target"` // the master failed over
	AtS        float64 `json:"at_s"`   // since the measured start
	RecoveryMS float64 `json:"recovery_ms"`
	// Probe: requests to partition 0 (every 20 ms) that failed after the
	// failover began.
	ProbeErrors int `json:"probe_errors"`
	// Events: published and acknowledged by Redis, handled, never handled
	// (lost), handled more than once (duplicated).
	EventsAcked   int64 `json:"events_acked"`
	EventsHandled int64 `json:"events_handled"`
	Lost          int64 `json:"lost"`
	Duplicated    int64 `json:"duplicated"`
}

// CacheResult is what the response cache did in a cached-scenario run
// (measured part): where answers came from, how many handler calls were
// made and how many distinct payloads were asked for, and the latency of
// each kind of answer.
type CacheResult struct {
	Enabled           bool    `json:"enabled"` // false: the --no-cache comparison run
	Distinct          int     `json:"distinct"`
	Zipf              float64 `json:"zipf"`
	DistinctRequested int     `json:"distinct_requested"` // different payloads the run asked for
	HandlerCalls      int64   `json:"handler_calls"`
	HitsLocal         int64   `json:"hits_local"`
	HitsShared        int64   `json:"hits_shared"`
	CoalescedLocal    int64   `json:"coalesced_local"`
	CoalescedRemote   int64   `json:"coalesced_remote"`
	Misses            int64   `json:"misses"`          // answered by a handler call made for them
	HitRatioLocal     float64 `json:"hit_ratio_local"` // of all requests
	HitRatioShared    float64 `json:"hit_ratio_shared"`
	// Latency by where the answer came from (µs; 0 when none).
	LocalHitP50US  float64 `json:"local_hit_p50_us"`
	LocalHitP99US  float64 `json:"local_hit_p99_us"`
	SharedHitP50US float64 `json:"shared_hit_p50_us"`
	SharedHitP99US float64 `json:"shared_hit_p99_us"`
	MissP50US      float64 `json:"miss_p50_us"`
	MissP99US      float64 `json:"miss_p99_us"`
}

// Batches is how many entries shared each round trip, from the producer's
// and the in-process workers' counters: under load every batch costs a
// write, a read and thread wake-ups, so bigger batches cost less CPU per
// request. Worker fields are zero with --no-workers.
type Batches struct {
	PerWrite     float64 `json:"per_write"`      // requests or events per producer XADD write
	PerReplyRead float64 `json:"per_reply_read"` // replies per reply-stream read
	PerRead      float64 `json:"per_read"`       // entries per worker XREADGROUP
	PerAckWrite  float64 `json:"per_ack_write"`  // entries per worker write of replies and acknowledgements
}

// The systems a Result can name.
const (
	SystemMycelium = "mycelium"
	SystemPubsub   = "pubsub-baseline"
	SystemPlain    = "streams-plain"
)

// PrintResult writes res as the human-readable summary.
func PrintResult(w io.Writer, res *Result) {
	fmt.Fprintf(w, "%s %s: %d sent, concurrency %d, payload %d B: %d ok, %d errors in %.3fs = %.0f/s; latency p50 %v p90 %v p99 %v max %v\n",
		res.System, res.Scenario, res.Requests, res.Concurrency, res.Payload, res.OK, res.Errors, res.Seconds, res.ThroughputRPS,
		us(res.P50US), us(res.P90US), us(res.P99US), us(res.MaxUS))
	if res.OverheadP99US > 0 {
		fmt.Fprintf(w, "  bus overhead (end to end minus handler): p50 %v p99 %v\n", us(res.OverheadP50US), us(res.OverheadP99US))
	}
	if res.ClientCPUUS > 0 || res.RedisCPUUS > 0 {
		fmt.Fprintf(w, "  cpu per request: this process %.1f µs, redis-server %.1f µs\n", res.ClientCPUUS, res.RedisCPUUS)
	}
	if c := res.Cache; c != nil {
		fmt.Fprintf(w, "  cache (enabled %v): %d handler calls for %d distinct payloads asked; local %d (%.1f%%), shared %d (%.1f%%), coalesced %d+%d, misses %d\n",
			c.Enabled, c.HandlerCalls, c.DistinctRequested, c.HitsLocal, 100*c.HitRatioLocal, c.HitsShared, 100*c.HitRatioShared,
			c.CoalescedLocal, c.CoalescedRemote, c.Misses)
		fmt.Fprintf(w, "  latency by source: local hit p50 %.1f µs p99 %.1f µs; shared hit p50 %.1f µs p99 %.1f µs; miss p50 %.1f µs p99 %.1f µs\n",
			c.LocalHitP50US, c.LocalHitP99US, c.SharedHitP50US, c.SharedHitP99US, c.MissP50US, c.MissP99US)
	}
	if st := res.Stream; st != nil {
		fmt.Fprintf(w, "  stream (%d streams of %d chunks, one every %.1f ms): first chunk p50 %.0f µs p99 %.0f µs; full reply p50 %.0f µs p99 %.0f µs\n",
			st.Streams, st.Chunks, st.IntervalMS, st.FirstChunkP50US, st.FirstChunkP99US, st.FullReplyP50US, st.FullReplyP99US)
		fmt.Fprintf(w, "  between chunks p50 %.0f µs p99 %.0f µs; bus overhead per chunk (Send to Recv) p50 %.0f µs p99 %.0f µs\n",
			st.InterChunkP50US, st.InterChunkP99US, st.OverheadP50US, st.OverheadP99US)
	}
	if c := res.Cancel; c != nil {
		fmt.Fprintf(w, "  cancel to the handler's ctx.Done (%d cancels, %d missed): p50 %.0f µs p99 %.0f µs max %.0f µs (pick-up p50 %.0f µs)\n",
			c.Cancels, c.Missed, c.P50US, c.P99US, c.MaxUS, c.PickupUS)
	}
	if sc := res.Sched; sc != nil {
		switch {
		case sc.AllLevels:
			fmt.Fprintf(w, "  %d levels (weights %v, strict %v), every level flooded: handled %v, shares %v against the weights' %v\n",
				sc.Levels, sc.Weights, sc.Strict, sc.HandledByLevel, sc.Shares, sc.WeightShares)
		case sc.Fairness != "":
			fmt.Fprintf(w, "  tenants (fairness %s, %d of %d partitions each): A flooded %d (%d left at the end); B-E queue wait p50 %v p99 %v max %v\n",
				sc.Fairness, sc.Shards, sc.Partitions, sc.Flood, sc.FloodLeft, us(sc.QueueWaitP50US), us(sc.QueueWaitP99US), us(sc.QueueWaitMaxUS))
		default:
			fmt.Fprintf(w, "  %d levels (weights %v, strict %v): %d flooded at level %d (%d left at the end); level 0 queue wait p50 %v p99 %v max %v\n",
				sc.Levels, sc.Weights, sc.Strict, sc.Flood, sc.Levels-1, sc.FloodLeft, us(sc.QueueWaitP50US), us(sc.QueueWaitP99US), us(sc.QueueWaitMaxUS))
		}
	}
	if b := res.Batches; b != nil {
		fmt.Fprintf(w, "  batches: %.1f per write, %.1f replies per read; workers %.1f per read, %.1f per ack write\n",
			b.PerWrite, b.PerReplyRead, b.PerRead, b.PerAckWrite)
	}
	for _, s := range res.Stages {
		fmt.Fprintf(w, "  %-14s mean %9.1f µs  p50 %9.1f µs  p99 %9.1f µs  (%d)\n", s.Stage, s.MeanUS, s.P50US, s.P99US, s.Count)
	}
}

func us(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

// caller sends one request and returns the reply: the system under test.
// It applies the per-request timeout (--timeout) itself, each system its
// own way: the producer through Config.RequestTimeout (as a service would
// use it, without a context per call), the baseline with a context.
type caller interface {
	request(ctx context.Context, payload []byte) ([]byte, error)
}

type myceliumCaller struct {
	p     *producer.Producer
	topic string
	opts  []producer.RequestOption // --priority, --tenant
}

func (m myceliumCaller) request(ctx context.Context, payload []byte) ([]byte, error) {
	return m.p.Request(ctx, m.topic, payload, m.opts...)
}

// env is what one bench run talks to.
type env struct {
	o      *Options
	system string
	call   caller
	// publish writes one event (the publish scenario), on mycelium or the
	// streams-plain baseline
	publish func(ctx context.Context, payload []byte) error
	bc      *bus.Client        // the callers' bus client; also reads server CPU and drains, whatever the transport
	insp    *inspect.Inspector // on bc
	p       *producer.Producer // mycelium only
	co      *consumer.Consumer // in-process mycelium workers, if any
	log     io.Writer
	tl      tally // outcomes of the measured calls (read by the progress line)

	handled      sync.Map // sequence -> handler nanoseconds, when the handler is not a plain echo
	stagesBefore *metrics.Snapshot
	prodBefore   producer.Stats // at the measured start, for Batches
	coBefore     consumer.Stats
	cpuStart     cpuUsage // at the measured start
	closers      []func()
}

func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

// Outcome is one run: its result line and the samples the report draws.
type Outcome struct {
	Result   *Result
	Lat      []int64 // sorted latencies, nanoseconds
	Timeline []Point // one per request, in time order, for time charts
}

// Point is one request of a run.
type Point struct {
	At  float64 // seconds since the run started
	Lat int64   // nanoseconds
	Seq uint64  // the request's sequence number
	// Handler is the request's handler time when the handler recorded it
	// (--handler sleep:...), else 0.
	Handler int64
}

// Embedded returns o.Redis, or starts an embedded miniredis when it is
// empty and returns its URL; stop stops it.
func Embedded(o *Options, stderr io.Writer) (url string, stop func(), err error) {
	if o.Redis != "" {
		return o.Redis, func() {}, nil
	}
	m, err := cli.StartEmbedded(0)
	if err != nil {
		return "", nil, err
	}
	fmt.Fprintf(stderr, "bus-bench: no --redis given: using an embedded in-memory Redis (miniredis) at %s; its timings are not representative of Redis\n", m.Addr())
	return "redis://" + m.Addr(), m.Close, nil
}

// Run runs the scenario o describes (against an embedded miniredis when
// o.Redis is empty) and returns its outcome. Errors wrapping ErrUsage are
// the options' fault. Progress goes to stderr when it is a terminal.
func Run(ctx context.Context, o *Options, stderr io.Writer) (*Outcome, error) {
	url, stop, err := Embedded(o, stderr)
	if err != nil {
		return nil, err
	}
	defer stop()
	var sc scenario
	switch o.Scenario {
	case "rpc":
		sc = &rpcScenario{}
	case "publish":
		sc = &publishScenario{}
	case "continuous":
		sc = &continuousScenario{}
	case "cached":
		sc = &cachedScenario{}
	case "failover":
		sc = &failoverScenario{}
	case "stream":
		sc = &streamScenario{}
	case "cancel":
		sc = &cancelScenario{}
	case "quota":
		sc = &quotaScenario{}
	case "priority":
		sc = &schedScenario{}
	case "tenants":
		sc = &schedScenario{tenants: true}
	default:
		return nil, fmt.Errorf("%w: --scenario %q", ErrUsage, o.Scenario)
	}
	e, err := setup(ctx, o, url, sc, stderr)
	if err != nil {
		return nil, err
	}
	defer e.close()
	for _, r := range []struct {
		path, flag string
		start      func(io.Writer) error
		stop       func()
	}{
		{o.CPUProfile, "cpuprofile", pprof.StartCPUProfile, pprof.StopCPUProfile},
		{o.Trace, "trace", trace.Start, trace.Stop},
	} {
		if r.path == "" {
			continue
		}
		stop, err := record(r.path, r.flag, r.start, r.stop)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	stopProgress := startProgress(e, stderr)
	out, err := sc.run(ctx, e)
	stopProgress()
	if err != nil {
		return nil, err
	}
	if o.Handler != "echo" {
		out.Result.Handler = o.Handler
	}
	out.Result.Stages = e.stages()
	out.Result.Batches = e.batches()
	out.Result.Partitions, out.Result.WaitReplicas = o.Partitions, o.WaitReplicas
	out.Result.Priority, out.Result.Tenant = o.Priority, o.Tenant
	if e.bc != nil && e.bc.Mode() != "standalone" {
		out.Result.RedisMode = e.bc.Mode()
	}
	return out, nil
}

// record starts a recording of the measured run (a CPU profile, an
// execution trace) into the file at path; the returned func stops it and
// closes the file.
func record(path, flag string, start func(io.Writer) error, stop func()) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --%s: %w", ErrUsage, flag, err)
	}
	if err := start(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	return func() {
		stop()
		_ = f.Close()
	}, nil
}

// setup connects the callers of o.Transport and, unless --no-workers,
// starts in-process workers running sc's handler.
func setup(ctx context.Context, o *Options, url string, sc scenario, stderr io.Writer) (*env, error) {
	e := &env{o: o, log: stderr, system: SystemMycelium}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	cfg := o.BusConfig(url)
	connect := func() (*bus.Client, error) {
		c, err := cli.Connect(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUsage, err)
		}
		e.closers = append(e.closers, c.Close)
		return c, nil
	}
	var err error
	if e.bc, err = connect(); err != nil {
		return nil, err
	}
	e.insp = inspect.New(e.bc)
	h := sc.handler(e)
	if _, own := sc.(interface{ ownWork() }); !own {
		h = e.wrap(h)
	}
	if o.Transport == "pubsub" {
		e.system = SystemPubsub
		if err := e.setupPubsub(ctx, url, h); err != nil {
			return nil, err
		}
		ok = true
		return e, nil
	}
	if o.Transport == "streams-plain" {
		e.system = SystemPlain
		if err := e.setupPlain(ctx, url, h); err != nil {
			return nil, err
		}
		ok = true
		return e, nil
	}
	if o.Partitions > 0 {
		if _, err := e.insp.SetPartitions(ctx, o.Topic, o.Partitions); err != nil {
			return nil, err
		}
	}
	if o.Scenario == "priority" || o.Scenario == "tenants" {
		if err := schedule(ctx, e); err != nil {
			return nil, err
		}
	}
	pcfg := producer.Config{
		MaxInFlight: max(o.Concurrency, producer.DefaultMaxInFlight), SlowRequest: -1,
		RequestTimeout: o.Timeout, // --timeout, enforced by the producer (see caller)
		WaitReplicas:   o.WaitReplicas, TracerProvider: o.TracerProvider,
	}
	pcfg.Backpressure.Policy, _ = producer.ParseBackpressurePolicy(o.Backpressure) // checked by Check
	if pcfg.Compression, err = codec.ParseCompression(o.Compress); err != nil {
		return nil, fmt.Errorf("--compress: %w", err)
	}
	if o.Scenario == "failover" {
		// Probe the failed partition again after 1 s, not the default 5 s.
		pcfg.Breaker.OpenTimeout = time.Second
	}
	if o.Scenario == "cached" && !o.NoCache {
		pcfg.Cache = map[string]producer.CacheConfig{o.Topic: {}}
	}
	p, err := producer.New(e.bc, pcfg)
	if err != nil {
		return nil, err
	}
	e.p = p
	e.call = myceliumCaller{p: p, topic: o.Topic, opts: callOptions[producer.RequestOption](o)}
	popts := callOptions[producer.PublishOption](o)
	e.publish = func(ctx context.Context, payload []byte) error {
		_, err := p.Publish(ctx, o.Topic, payload, popts...)
		return err
	}
	e.closers = append(e.closers, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = p.Close(cctx)
		cancel()
	})
	if !o.NoWorkers {
		work, err := connect()
		if err != nil {
			return nil, err
		}
		stop, err := e.startWorkers(ctx, work, h)
		if err != nil {
			return nil, err
		}
		e.closers = append(e.closers, stop)
	}
	ok = true
	return e, nil
}

// ServePubsub runs only the PubSub baseline's workers (o.Workers of them,
// default 64, running o's handler) on o.Topic until ctx ends: the old
// design's side of a before/after run driven by another client (the Python
// client's benchmark). It prints "serving" on stdout once subscribed.
func ServePubsub(ctx context.Context, o *Options, stdout io.Writer) error {
	if o.Redis == "" {
		return fmt.Errorf("%w: --serve-pubsub needs --redis", ErrUsage)
	}
	n := o.Workers
	if n <= 0 {
		n = 64
	}
	c, err := pubsub.Dial(ctx, o.Redis, n+1)
	if err != nil {
		return fmt.Errorf("%w: cannot reach Redis: %w", ErrUsage, err)
	}
	defer c.Close()
	stop, err := pubsub.StartWorkers(ctx, c, pubsub.Channel(o.Prefix, o.Topic), n, func(ctx context.Context, payload []byte) ([]byte, error) {
		if o.Work != nil {
			if err := o.Work.Wait(ctx); err != nil {
				return nil, err
			}
		}
		return payload, nil
	})
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintln(stdout, "serving")
	<-ctx.Done()
	return nil
}

// baselineDial returns what dials a baseline's client (pubsub.DialAs,
// named name), closed with e.
func (e *env) baselineDial(ctx context.Context, url, name string) func() (rueidis.Client, error) {
	return func() (rueidis.Client, error) {
		c, err := pubsub.DialAs(ctx, url, e.o.Concurrency+e.o.Workers+2, name)
		if err != nil {
			return nil, fmt.Errorf("%w: cannot reach Redis for the baseline: %w", ErrUsage, err)
		}
		e.closers = append(e.closers, c.Close)
		return c, nil
	}
}

// setupPubsub connects the baseline's callers and starts its workers, each
// on a client of the old design (see pubsub.Dial).
func (e *env) setupPubsub(ctx context.Context, url string, h consumer.Handler) error {
	dial := e.baselineDial(ctx, url, "myc-bench-pubsub")
	callers, err := dial()
	if err != nil {
		return err
	}
	channel := pubsub.Channel(e.o.Prefix, e.o.Topic)
	pc, err := pubsub.NewCaller(callers, url, channel, e.o.Timeout, e.o.PubsubConn == "fresh")
	if err != nil {
		return fmt.Errorf("%w: --redis: %w", ErrUsage, err)
	}
	e.call = pubsubCaller{pc}
	work, err := dial()
	if err != nil {
		return err
	}
	stop, err := pubsub.StartWorkers(ctx, work, channel, e.o.Workers, func(ctx context.Context, payload []byte) ([]byte, error) {
		return h.Handle(ctx, &consumer.Message{Topic: channel, Payload: payload, Request: true})
	})
	if err != nil {
		return err
	}
	e.closers = append(e.closers, stop)
	return nil
}

// setupPlain connects the streams-plain baseline's caller and starts its
// workers, each on a client of that design (see plain.Dial).
func (e *env) setupPlain(ctx context.Context, url string, h consumer.Handler) error {
	dial := e.baselineDial(ctx, url, "myc-bench-plain")
	callers, err := dial()
	if err != nil {
		return err
	}
	pc := plain.NewCaller(callers, e.o.Prefix, e.o.Topic, e.o.Timeout)
	e.closers = append(e.closers, pc.Close)
	e.call = plainCaller{pc}
	e.publish = pc.Publish
	work, err := dial()
	if err != nil {
		return err
	}
	stream := plain.Stream(e.o.Prefix, e.o.Topic)
	stop, err := plain.StartWorkers(ctx, work, e.o.Prefix, e.o.Topic, e.o.Workers, func(ctx context.Context, payload []byte) ([]byte, error) {
		return h.Handle(ctx, &consumer.Message{Topic: stream, Payload: payload, Request: true})
	})
	if err != nil {
		return err
	}
	e.closers = append(e.closers, stop)
	return nil
}

type plainCaller struct{ c *plain.Caller }

func (p plainCaller) request(ctx context.Context, payload []byte) ([]byte, error) {
	return p.c.Request(ctx, payload)
}

type pubsubCaller struct{ c *pubsub.Caller }

func (p pubsubCaller) request(ctx context.Context, payload []byte) ([]byte, error) {
	return p.c.Request(ctx, payload)
}

// startWorkers runs an in-process consumer with o.Workers handler slots.
func (e *env) startWorkers(ctx context.Context, c *bus.Client, h consumer.Handler) (func(), error) {
	co, err := consumer.New(c, consumer.Config{
		Topic: e.o.Topic, Group: e.o.Group, Concurrency: e.o.Workers, StartID: "$",
		Tracing: consumer.TracingConfig{Provider: e.o.TracerProvider, Parent: true},
	}, h)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = co.Run(wctx)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for co.Ready(ctx) != nil {
		if time.Now().After(deadline) || ctx.Err() != nil {
			cancel()
			<-done
			return nil, errors.New("in-process workers did not become ready")
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	e.co = co
	return func() { cancel(); <-done }, nil
}

// wrap applies --handler: sleep:<d>[,<jitter>] simulates work before h
// and records each request's handler time, so the bus overhead (end to end
// minus handler) can be reported per request.
func (e *env) wrap(h consumer.Handler) consumer.Handler {
	if e.o.Work == nil {
		return h
	}
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		start := time.Now()
		if err := e.o.Work.Wait(ctx); err != nil {
			return nil, err
		}
		out, err := h.Handle(ctx, m)
		if seq, ok := seqOf(m.Payload); ok {
			e.handled.Store(seq, int64(time.Since(start)))
		}
		return out, err
	})
}

// snapshot is the mycelium stage timings so far: the producer's, with the
// in-process workers' reply writes.
func (e *env) snapshot() *metrics.Snapshot {
	s := e.p.Timings()
	if e.co != nil {
		s.Stages[metrics.ReplyWrite] = e.co.Timings().Stages[metrics.ReplyWrite]
	}
	return s
}

// markMeasured records where the measured part starts (after warm-up).
func (e *env) markMeasured() {
	if e.p != nil {
		e.stagesBefore = e.snapshot()
		e.prodBefore = e.p.Stats()
	}
	if e.co != nil {
		e.coBefore = e.co.Stats()
	}
	e.cpuStart = e.cpuNow()
}

// batches is how well the measured part batched (nil for the baseline).
func (e *env) batches() *Batches {
	if e.p == nil {
		return nil
	}
	per := func(n, of uint64) float64 {
		if of == 0 {
			return 0
		}
		return math.Round(float64(n)/float64(of)*10) / 10
	}
	p, p0 := e.p.Stats(), e.prodBefore
	b := &Batches{
		PerWrite:     per(p.Published+p.Requests-p0.Published-p0.Requests, p.Writes-p0.Writes),
		PerReplyRead: per(p.Replies-p0.Replies, p.ReplyReads-p0.ReplyReads),
	}
	if e.co != nil {
		c, c0 := e.co.Stats(), e.coBefore
		b.PerRead = per(c.Received-c0.Received, c.Reads-c0.Reads)
		b.PerAckWrite = per(c.Acked-c0.Acked, c.Flushes-c0.Flushes)
	}
	return b
}

// stages summarises the mycelium stage timings of the measured part.
func (e *env) stages() []metrics.Summary {
	if e.p == nil {
		return nil
	}
	s := e.snapshot()
	if e.stagesBefore != nil {
		s.Sub(e.stagesBefore)
	}
	return s.Summaries()
}

type scenario interface {
	handler(e *env) consumer.Handler
	run(ctx context.Context, e *env) (*Outcome, error)
}

// summarize fills the latency fields from samples (nanoseconds), sorting
// them.
func summarize(r *Result, lat []int64) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	r.P50US, r.P90US, r.P99US, r.MaxUS = pct(lat, 0.50)/1000, pct(lat, 0.90)/1000, pct(lat, 0.99)/1000, lat[len(lat)-1]/1000
}

// pct is the p-quantile of sorted samples (nearest rank).
func pct(sorted []int64, p float64) int64 {
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
