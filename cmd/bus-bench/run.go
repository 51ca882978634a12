package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
)

// Result is the JSON line contract read by other tools: keep every field
// and its name; add new fields at the end.
type Result struct {
	System        string  `json:"system"`
	Scenario      string  `json:"scenario"`
	Concurrency   int     `json:"concurrency"`
	Payload       int     `json:"payload"`
	Requests      int     `json:"requests"`
	OK            int     `json:"ok"`
	Errors        int     `json:"errors"`
	Seconds       float64 `json:"seconds"`
	ThroughputRPS float64 `json:"throughput_rps"`
	P50US         int64   `json:"p50_us"`
	P90US         int64   `json:"p90_us"`
	P99US         int64   `json:"p99_us"`
	MaxUS         int64   `json:"max_us"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "bus-bench: "+oneLine(err.Error()))
		return 2
	}
	res, err := bench(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "bus-bench: "+oneLine(err.Error()))
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	if o.json {
		b, _ := json.Marshal(res)
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		fmt.Fprintf(stdout, "%s %s: %d sent, concurrency %d, payload %d B: %d ok, %d errors in %.3fs = %.0f/s; latency p50 %v p90 %v p99 %v max %v\n",
			res.System, res.Scenario, res.Requests, res.Concurrency, res.Payload, res.OK, res.Errors, res.Seconds, res.ThroughputRPS,
			us(res.P50US), us(res.P90US), us(res.P99US), us(res.MaxUS))
	}
	if res.Errors > 0 {
		return 1
	}
	return 0
}

func us(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

// env is what one bench run talks to.
type env struct {
	o    *options
	prod rueidis.Client // producer side
	work rueidis.Client // in-process workers' side (separate connections, as separate processes would have)
	p    *producer.Producer
	log  io.Writer
}

func bench(ctx context.Context, o *options, stderr io.Writer) (*Result, error) {
	url := o.redis
	if url == "" {
		m := miniredis.NewMiniRedis()
		if err := m.Start(); err != nil {
			return nil, fmt.Errorf("start embedded Redis: %w", err)
		}
		defer m.Close()
		url = "redis://" + m.Addr()
		fmt.Fprintf(stderr, "bus-bench: no --redis given: using an embedded in-memory Redis (miniredis) at %s; its timings are not representative of Redis\n", m.Addr())
	}
	cfg := bus.Config{URL: url, ClientName: "myc-bench", MaxFlushDelay: o.flushDelay, PipelineConns: o.conns}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	prod, err := bus.Connect(cctx, cfg)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: cannot reach Redis at %s: %w", errUsage, cfg.Redacted(), err)
	}
	defer prod.Close()
	e := &env{o: o, prod: prod, log: stderr}
	if e.p, err = producer.New(prod, producer.Config{Prefix: o.prefix, MaxInFlight: max(o.concurrency, producer.DefaultMaxInFlight)}); err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = e.p.Close(cctx)
		cancel()
	}()

	var sc scenario
	switch o.scenario {
	case "rpc":
		sc = &rpcScenario{}
	case "publish":
		sc = &publishScenario{}
	case "continuous":
		sc = &continuousScenario{}
	}
	if !o.noWorkers {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		e.work, err = bus.Connect(cctx, cfg)
		cancel()
		if err != nil {
			return nil, err
		}
		defer e.work.Close()
		stop, err := e.startWorkers(ctx, sc.handler(e))
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return nil, fmt.Errorf("%w: --cpuprofile: %w", errUsage, err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	return sc.run(ctx, e)
}

// startWorkers runs an in-process consumer with o.workers handler slots.
func (e *env) startWorkers(ctx context.Context, h consumer.Handler) (func(), error) {
	co, err := consumer.New(e.work, consumer.Config{
		Prefix: e.o.prefix, Topic: e.o.topic, Group: e.o.group, Concurrency: e.o.workers, StartID: "$",
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
			return nil, fmt.Errorf("in-process workers did not become ready")
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return func() { cancel(); <-done }, nil
}

type scenario interface {
	handler(e *env) consumer.Handler
	run(ctx context.Context, e *env) (*Result, error)
}

// summarize fills the latency fields from samples (nanoseconds).
func summarize(r *Result, lat []int64) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) int64 {
		i := int(p*float64(len(lat))+0.5) - 1
		i = max(0, min(i, len(lat)-1))
		return lat[i] / 1000
	}
	r.P50US, r.P90US, r.P99US, r.MaxUS = pct(0.50), pct(0.90), pct(0.99), lat[len(lat)-1]/1000
}
