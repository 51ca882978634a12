package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
	"unicode/utf8"

	"github.com/mattn/go-isatty"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/internal/cli"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
)

type clientFlags struct {
	redis, prefix, topic, data string
	conn                       *connFlags
	dataFile                   string
	payload                    []byte // --data, or what --data-file or --data - held
	timeout                    time.Duration
	json, stages, wait         bool

	// request's response cache flags
	cache, noCache, noStore bool
	cacheKey                string
	maxAge                  time.Duration

	compress string // --compress

	partKey  string // --partition-key
	priority int    // --priority
	tenant   string // --tenant

	stream bool          // request --stream
	lines  bool          // request --stream --lines: each chunk on a line of its own
	after  time.Duration // publish --after
	once   string        // publish --idempotency-key
}

func clientFlagSet(name string, f *clientFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&f.redis, "redis", bus.DefaultURL, "Redis URL (redis:// or rediss://)")
	f.conn = addConnFlags(fs)
	fs.StringVar(&f.prefix, "prefix", bus.DefaultPrefix, "key prefix")
	fs.StringVar(&f.topic, "topic", "reasoning", "topic")
	fs.StringVar(&f.data, "data", "", `payload ("-": read it from standard input)`)
	fs.StringVar(&f.dataFile, "data-file", "", "read the payload from this file (for payloads argv cannot hold)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	fs.StringVar(&f.partKey, "partition-key", "", "on a partitioned topic, write to this key's partition (order is kept per key; default: round robin)")
	fs.IntVar(&f.priority, "priority", 0, "priority level, 0 (the most urgent) to 9, on a topic with priority levels")
	fs.StringVar(&f.tenant, "tenant", "", "the tenant the message is for (its shard set on a topic with tenant fairness)")
	fs.StringVar(&f.compress, "compress", "none", "none | s2 | zstd: compress a payload of 1 KiB or more when it pays (every reader of the topic must know compressed envelopes)")
	return fs
}

func (f *clientFlags) check(cmd string) error {
	if f.timeout <= 0 {
		return usagef("%s: --timeout must be positive, got %v", cmd, f.timeout)
	}
	if err := bus.ValidateName("topic", f.topic); err != nil {
		return usagef("%s: --topic: %v", cmd, err)
	}
	if !f.cache && (f.noCache || f.noStore || f.cacheKey != "" || f.maxAge != 0) {
		return usagef("%s: --cache-key, --max-age, --no-cache and --no-store need --cache", cmd)
	}
	if f.maxAge < 0 {
		return usagef("%s: --max-age must be positive, got %v", cmd, f.maxAge)
	}
	if f.priority < 0 || f.priority >= bus.MaxPriorities {
		return usagef("%s: --priority: want 0 to %d, got %d", cmd, bus.MaxPriorities-1, f.priority)
	}
	if f.tenant != "" {
		if err := bus.ValidateName("tenant", f.tenant); err != nil {
			return usagef("%s: --tenant: %v", cmd, err)
		}
	}
	return nil
}

// readPayload fills f.payload from --data, --data - (stdin) or
// --data-file, reading at most the producer's largest payload (and one
// byte more, to say it is too large).
func (f *clientFlags) readPayload(stdin io.Reader) error {
	var r io.Reader
	switch {
	case f.dataFile != "" && f.data != "":
		return usagef("give --data or --data-file, not both")
	case f.dataFile != "":
		file, err := os.Open(f.dataFile)
		if err != nil {
			return usagef("--data-file: %v", err)
		}
		defer file.Close()
		r = file
	case f.data == "-":
		r = stdin
	default:
		f.payload = []byte(f.data)
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(r, producer.DefaultMaxPayload+1))
	if err != nil {
		return usagef("reading the payload: %v", err)
	}
	if len(b) > producer.DefaultMaxPayload {
		return usagef("the payload is larger than %d bytes", producer.DefaultMaxPayload)
	}
	f.payload = b
	return nil
}

// callOptions are the options of --partition-key, --priority and
// --tenant.
func (f *clientFlags) callOptions() []producer.CallOption {
	var opts []producer.CallOption
	if f.partKey != "" {
		opts = append(opts, producer.PartitionKey(f.partKey))
	}
	if f.priority > 0 {
		opts = append(opts, producer.Priority(f.priority))
	}
	if f.tenant != "" {
		opts = append(opts, producer.Tenant(f.tenant))
	}
	return opts
}

// cacheOptions are the request options of request's cache flags.
func (f *clientFlags) cacheOptions(info *producer.CacheInfo) []producer.RequestOption {
	if !f.cache {
		return nil
	}
	opts := []producer.RequestOption{producer.WithCacheInfo(info)}
	if f.noCache {
		opts = append(opts, producer.NoCache())
	}
	if f.noStore {
		opts = append(opts, producer.NoStore())
	}
	if f.cacheKey != "" {
		opts = append(opts, producer.CacheKey(f.cacheKey))
	}
	if f.maxAge > 0 {
		opts = append(opts, producer.MaxAge(f.maxAge))
	}
	return opts
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
	if err := f.readPayload(os.Stdin); err != nil {
		return nil, nil, nil, err
	}
	comp, err := codec.ParseCompression(f.compress)
	if err != nil {
		return nil, nil, nil, usagef("%s: --compress: %v", name, err)
	}
	c, err := connect(ctx, bus.Config{URL: f.redis, Prefix: f.prefix, ClientName: "myc-cli"}, f.conn)
	if err != nil {
		return nil, nil, nil, err
	}
	pcfg := producer.Config{Compression: comp}
	if f.cache {
		pcfg.Cache = map[string]producer.CacheConfig{f.topic: {}}
	}
	tp, stopTracing, err := cli.Tracing(ctx, "bus-worker")
	if err != nil {
		c.Close()
		return nil, nil, nil, usageError{err}
	}
	pcfg.TracerProvider = tp
	p, err = producer.New(c, pcfg)
	if err != nil {
		stopTracing()
		c.Close()
		return nil, nil, nil, usageError{err}
	}
	return f, p, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = p.Close(cctx)
		cancel()
		c.Close()
		stopTracing()
	}, nil
}

func request(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, p, closeAll, err := openProducer(ctx, "request", args, func(fs *flag.FlagSet, f *clientFlags) {
		fs.BoolVar(&f.json, "json", false, `print {"reply":…,"latency_us":…} instead of the reply and its latency`)
		fs.BoolVar(&f.stages, "stages", false, `also print where the time went, stage by stage (with --json: a "stages" field)`)
		fs.BoolVar(&f.wait, "wait-for-responders", false, "send the request even if no worker serves the topic now, and wait for --timeout")
		fs.BoolVar(&f.cache, "cache", false, "use the topic's response cache: a stored answer, or an identical request in flight anywhere, answers this one (docs/cache.md)")
		fs.StringVar(&f.cacheKey, "cache-key", "", "with --cache: what counts as the same request (default: the payload)")
		fs.DurationVar(&f.maxAge, "max-age", 0, "with --cache: accept a stored answer only this young")
		fs.BoolVar(&f.noCache, "no-cache", false, "with --cache: ask a worker even if an answer is stored (and store the new one)")
		fs.BoolVar(&f.noStore, "no-store", false, "with --cache: do not store this answer")
		fs.BoolVar(&f.stream, "stream", false, `read the reply as a stream: print each chunk as it arrives, text as it is (tokens join up) and a chunk that is a JSON object or array on a line of its own (with --json: one line per chunk, then one for the end or the error)`)
		fs.BoolVar(&f.lines, "lines", false, "with --stream: print every chunk on a line of its own")
	})
	if err != nil {
		return err
	}
	defer closeAll()
	rctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var info producer.CacheInfo
	if f.stream {
		if f.cache || f.stages {
			return usagef("request: --stream does not go with --cache or --stages")
		}
		var opts []producer.StreamOption
		for _, o := range f.callOptions() {
			opts = append(opts, o)
		}
		if f.wait {
			opts = append(opts, producer.WaitForResponders())
		}
		return requestStream(rctx, p, f, opts, stdout, stderr)
	}
	opts := f.cacheOptions(&info)
	for _, o := range f.callOptions() {
		opts = append(opts, o)
	}
	if f.wait {
		opts = append(opts, producer.WaitForResponders())
	}
	start := time.Now()
	reply, err := p.Request(rctx, f.topic, f.payload, opts...)
	lat := time.Since(start)
	if err != nil {
		kind, code, msg := describe(err)
		if f.json {
			_ = json.NewEncoder(stdout).Encode(struct {
				Error     jsonError `json:"error"`
				LatencyUS int64     `json:"latency_us"`
			}{jsonError{kind, code, msg}, lat.Microseconds()})
		}
		return requestError(f, kind, err)
	}
	var stages []metrics.Summary
	if f.stages {
		stages = requestStages(p)
	}
	var cache *jsonCache
	if f.cache {
		cache = &jsonCache{Source: info.Source.String(), AgeUS: info.Age.Microseconds(), Entry: info.Entry}
	}
	if f.json {
		out := struct {
			Reply       string            `json:"reply"`
			LatencyUS   int64             `json:"latency_us"`
			Stages      []metrics.Summary `json:"stages,omitempty"`
			StagesSumUS float64           `json:"stages_sum_us,omitempty"` // every stage but end_to_end; above it by the redis_write/queue_wait (or retry_wait) overlap
			Cache       *jsonCache        `json:"cache,omitempty"`
		}{Reply: string(reply), LatencyUS: lat.Microseconds(), Stages: stages, Cache: cache}
		if stages != nil {
			out.StagesSumUS, _ = stageSum(stages)
		}
		return json.NewEncoder(stdout).Encode(out)
	}
	if isTerminal(stdout) { // a reply from a backend must not drive the terminal; a pipe gets its bytes
		stdout = cli.PrintableWriter(stdout)
	}
	fmt.Fprintf(stdout, "%s\n", reply)
	fmt.Fprintf(stderr, "latency: %v\n", lat.Round(time.Microsecond))
	if cache != nil {
		fmt.Fprintf(stderr, "cache: %s, age %v (entry %s)\n", info.Source, info.Age.Round(time.Millisecond), info.Entry)
	}
	if stages != nil {
		printStages(stderr, stages)
	}
	return nil
}

// requestError is what request says of a failed request.
func requestError(f *clientFlags, kind string, err error) error {
	switch kind {
	case "timeout":
		return fmt.Errorf("request to %q: no reply within %v (is a worker serving this topic, and is it keeping up?)", f.topic, f.timeout)
	case "no_responders":
		return fmt.Errorf("request to %q: no worker serves this topic (start one with bus-worker serve --topic %s, or pass --wait-for-responders to queue the request)", f.topic, f.topic)
	}
	return fmt.Errorf("request to %q: %w", f.topic, err)
}

// jsonChunk is one line of request --stream --json: a chunk (as text when
// it is valid UTF-8, else base64 in chunk_b64), or the end (end: true, with
// the counts and times), or the error.
type jsonChunk struct {
	Seq          *int       `json:"seq,omitempty"`
	Chunk        *string    `json:"chunk,omitempty"`
	ChunkB64     []byte     `json:"chunk_b64,omitempty"`
	AtUS         int64      `json:"at_us"` // since the request was sent
	End          bool       `json:"end,omitempty"`
	Chunks       int        `json:"chunks,omitempty"`
	FirstChunkUS int64      `json:"first_chunk_us,omitempty"`
	Error        *jsonError `json:"error,omitempty"`
}

// writeChunk prints one chunk of request --stream in text: as it is (a
// model's tokens join up into its text), except that a chunk that is a
// whole JSON object or array (an event of an SSE or NDJSON backend), or
// every chunk with lines, goes on a line of its own. midLine tracks whether
// the output stands after a chunk that did not end its line.
func writeChunk(w io.Writer, chunk []byte, lines bool, midLine *bool) error {
	t := bytes.TrimSpace(chunk)
	own := lines || len(t) > 0 && (t[0] == '{' || t[0] == '[') && json.Valid(t)
	if own {
		chunk = t
		if *midLine {
			if _, err := io.WriteString(w, "\n"); err != nil {
				return err
			}
		}
	}
	if _, err := w.Write(chunk); err != nil {
		return err
	}
	*midLine = true
	if own {
		_, err := io.WriteString(w, "\n")
		*midLine = false
		return err
	}
	return nil
}

// requestStream is request --stream: each chunk printed as it arrives.
// SIGINT cancels ctx, which cancels the handler.
func requestStream(ctx context.Context, p *producer.Producer, f *clientFlags, opts []producer.StreamOption, stdout, stderr io.Writer) error {
	start := time.Now()
	enc := json.NewEncoder(stdout)
	fail := func(err error) error {
		kind, code, msg := describe(err)
		if f.json {
			_ = enc.Encode(jsonChunk{AtUS: time.Since(start).Microseconds(), Error: &jsonError{kind, code, msg}})
		}
		return requestError(f, kind, err)
	}
	s, err := p.Stream(ctx, f.topic, f.payload, opts...)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	out := stdout
	if isTerminal(stdout) {
		out = cli.PrintableWriter(stdout)
	}
	n := 0
	midLine := false // the last chunk printed did not end a line
	for chunk, err := range s.All() {
		if err != nil {
			if !f.json && midLine {
				fmt.Fprintln(out)
			}
			return fail(err)
		}
		if f.json {
			line := jsonChunk{Seq: &n, AtUS: time.Since(start).Microseconds()}
			if utf8.Valid(chunk) {
				text := string(chunk)
				line.Chunk = &text
			} else {
				line.ChunkB64 = chunk
			}
			if err := enc.Encode(line); err != nil {
				return err
			}
		} else if err := writeChunk(out, chunk, f.lines, &midLine); err != nil {
			return err
		}
		n++
	}
	lat := time.Since(start)
	if f.json {
		return enc.Encode(jsonChunk{End: true, Chunks: n, AtUS: lat.Microseconds(), FirstChunkUS: s.FirstChunk().Microseconds()})
	}
	if midLine {
		fmt.Fprintln(out)
	}
	fmt.Fprintf(stderr, "%d chunks, first after %v, all after %v\n", n, s.FirstChunk().Round(time.Microsecond), lat.Round(time.Microsecond))
	return nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}

// stageSum adds up a request's stages but end_to_end, and returns it with
// end_to_end (µs, means of one request).
func stageSum(stages []metrics.Summary) (sum, e2e float64) {
	for _, s := range stages {
		if s.Stage == metrics.EndToEnd.String() {
			e2e = s.MeanUS
		} else {
			sum += s.MeanUS
		}
	}
	return sum, e2e
}

// printStages prints one request's stages in the order of its way, marks
// the two that overlap, and says how their sum compares with end to end, so
// that a reader can add them up.
func printStages(w io.Writer, stages []metrics.Summary) {
	for _, s := range stages {
		note := ""
		switch s.Stage {
		case metrics.Write.String():
			note = "  ┐ overlap: the wait starts when Redis accepts the entry,"
		case metrics.QueueWait.String(), metrics.RetryWait.String():
			note = "  ┘ redis_write ends when Redis's answer is back here"
		case metrics.EndToEnd.String():
			continue
		}
		fmt.Fprintf(w, "  %-14s %9.1f µs%s\n", s.Stage, s.MeanUS, note)
	}
	sum, e2e := stageSum(stages)
	switch d := sum - e2e; {
	case d >= 0:
		fmt.Fprintf(w, "  %-14s %9.1f µs  = the stages above, %.1f µs of it counted twice by the overlap\n", "end_to_end", e2e, d)
	default:
		fmt.Fprintf(w, "  %-14s %9.1f µs  = the stages above + %.1f µs in none (goroutines waking between stages)\n", "end_to_end", e2e, -d)
	}
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
	f, p, closeAll, err := openProducer(ctx, "publish", args, func(fs *flag.FlagSet, f *clientFlags) {
		fs.DurationVar(&f.after, "after", 0, "deliver the event this long from now, not before (a delayed event; the id printed is then the delayed entry's)")
		fs.StringVar(&f.once, "idempotency-key", "", "publish once per key within the topic's window (2m): a repeat writes nothing and prints the first id, then \"duplicate\" on stderr")
	})
	if err != nil {
		return err
	}
	defer closeAll()
	if f.after < 0 || f.after > producer.MaxDelay {
		return usagef("publish: --after must be between 0 and %v, got %v", producer.MaxDelay, f.after)
	}
	pctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var opts []producer.PublishOption
	for _, o := range f.callOptions() {
		opts = append(opts, o)
	}
	if f.after > 0 {
		opts = append(opts, producer.After(f.after))
	}
	var info producer.PublishInfo
	if f.once != "" {
		if f.after > 0 {
			return usagef("publish: --idempotency-key and --after exclude each other")
		}
		opts = append(opts, producer.IdempotencyKey(f.once), producer.WithPublishInfo(&info))
	}
	id, err := p.Publish(pctx, f.topic, f.payload, opts...)
	if err != nil {
		return fmt.Errorf("publish to %q: %w", f.topic, err)
	}
	fmt.Fprintln(stdout, id)
	if info.Duplicate {
		fmt.Fprintf(os.Stderr, "duplicate: an earlier publish with idempotency key %q within the window wrote %s; nothing written\n", f.once, id)
	}
	return nil
}

// jsonCache is where a cached request's answer came from, as `request
// --cache --json` prints it: source is handler, local, shared,
// coalesced_local or coalesced_remote.
type jsonCache struct {
	Source string `json:"source"`
	AgeUS  int64  `json:"age_us"`
	Entry  string `json:"entry"`
}

// jsonError is a failed request as `request --json` prints it: what kind of
// failure, the remote error's code when the handler failed, and the text.
type jsonError struct {
	Kind    string `json:"kind"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
}

// describe classifies a request's error for people and scripts: kind is one
// of timeout, remote (code is the handler's), no_responders, breaker_open
// (this client's breaker), unavailable, payload_too_large, cancelled, error.
func describe(err error) (kind, code, msg string) {
	var re *bus.RemoteError
	switch {
	case errors.As(err, &re):
		return "remote", string(re.Code), re.Message
	case errors.Is(err, bus.ErrTimeout):
		return "timeout", "", err.Error()
	case errors.Is(err, bus.ErrNoResponders):
		return "no_responders", "", err.Error()
	case errors.Is(err, bus.ErrBreakerOpen):
		return "breaker_open", "", err.Error()
	case errors.Is(err, bus.ErrUnavailable):
		return "unavailable", "", err.Error()
	case errors.Is(err, bus.ErrPayloadTooLarge):
		return "payload_too_large", "", err.Error()
	case errors.Is(err, bus.ErrStreamBroken):
		return "stream_broken", "", err.Error()
	case errors.Is(err, context.Canceled):
		return "cancelled", "", err.Error()
	}
	return "error", "", err.Error()
}
