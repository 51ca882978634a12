package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
)

type clientFlags struct {
	redis, prefix, topic, data string
	timeout                    time.Duration
	json, stages               bool
}

func clientFlagSet(name string, f *clientFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&f.redis, "redis", bus.DefaultURL, "Redis URL (redis:// or rediss://)")
	fs.StringVar(&f.prefix, "prefix", bus.DefaultPrefix, "key prefix")
	fs.StringVar(&f.topic, "topic", "reasoning", "topic")
	fs.StringVar(&f.data, "data", "", "payload")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	return fs
}

func (f *clientFlags) check(cmd string) error {
	if f.timeout <= 0 {
		return usagef("%s: --timeout must be positive, got %v", cmd, f.timeout)
	}
	if err := bus.ValidateName("topic", f.topic); err != nil {
		return usagef("%s: --topic: %v", cmd, err)
	}
	return nil
}

// openProducer parses a client command's flags (extra adds its own), then
// connects and builds a producer. close releases both (the producer's
// breakers too); call it whenever err is nil.
func openProducer(ctx context.Context, name string, args []string, extra func(*flag.FlagSet, *clientFlags)) (f *clientFlags, p *producer.Producer, close func(), err error) {
	f = &clientFlags{}
	fs := clientFlagSet(name, f)
	if extra != nil {
		extra(fs, f)
	}
	if _, err := parseFlags(fs, args); err != nil {
		return nil, nil, nil, err
	}
	if err := f.check(name); err != nil {
		return nil, nil, nil, err
	}
	c, err := connect(ctx, bus.Config{URL: f.redis, Prefix: f.prefix, ClientName: "myc-cli"})
	if err != nil {
		return nil, nil, nil, err
	}
	p, err = producer.New(c, producer.Config{})
	if err != nil {
		c.Close()
		return nil, nil, nil, usageError{err}
	}
	return f, p, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = p.Close(cctx)
		cancel()
		c.Close()
	}, nil
}

func request(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, p, closeAll, err := openProducer(ctx, "request", args, func(fs *flag.FlagSet, f *clientFlags) {
		fs.BoolVar(&f.json, "json", false, `print {"reply":…,"latency_us":…} instead of the reply and its latency`)
		fs.BoolVar(&f.stages, "stages", false, `also print where the time went, stage by stage (with --json: a "stages" field)`)
	})
	if err != nil {
		return err
	}
	defer closeAll()
	rctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	start := time.Now()
	reply, err := p.Request(rctx, f.topic, []byte(f.data))
	lat := time.Since(start)
	if err != nil {
		if errors.Is(err, bus.ErrTimeout) {
			return fmt.Errorf("request to %q: no reply within %v (is a worker serving this topic?)", f.topic, f.timeout)
		}
		return fmt.Errorf("request to %q: %w", f.topic, err)
	}
	var stages []metrics.Summary
	if f.stages {
		stages = requestStages(p)
	}
	if f.json {
		return json.NewEncoder(stdout).Encode(struct {
			Reply     string            `json:"reply"`
			LatencyUS int64             `json:"latency_us"`
			Stages    []metrics.Summary `json:"stages,omitempty"`
		}{string(reply), lat.Microseconds(), stages})
	}
	fmt.Fprintf(stdout, "%s\n", reply)
	fmt.Fprintf(stderr, "latency: %v\n", lat.Round(time.Microsecond))
	for _, s := range stages {
		fmt.Fprintf(stderr, "  %-14s %9.1f µs\n", s.Stage, s.MeanUS)
	}
	return nil
}

// requestStages returns the stages of the one request p made. The Redis
// write is recorded when its pipeline returns, which can be just after
// the reply arrived: wait briefly for it.
func requestStages(p *producer.Producer) []metrics.Summary {
	deadline := time.Now().Add(200 * time.Millisecond)
	for p.Timings().Stage(metrics.Write).Count == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling a counter with a deadline
	}
	return p.Timings().Summaries()
}

func publish(ctx context.Context, args []string, stdout io.Writer) error {
	f, p, closeAll, err := openProducer(ctx, "publish", args, nil)
	if err != nil {
		return err
	}
	defer closeAll()
	pctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	id, err := p.Publish(pctx, f.topic, []byte(f.data))
	if err != nil {
		return fmt.Errorf("publish to %q: %w", f.topic, err)
	}
	fmt.Fprintln(stdout, id)
	return nil
}
