package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// countingEcho answers "re:<payload>" and counts its calls per payload.
type countingEcho struct {
	mu        sync.Mutex
	calls     map[string]int
	gate      chan struct{} // when not nil, every call waits for it to close
	total     atomic.Int64
	cancelled atomic.Int64 // calls that gave up waiting for the gate
}

func newCounting() *countingEcho { return &countingEcho{calls: map[string]int{}} }

func (h *countingEcho) Handle(ctx context.Context, m *consumer.Message) ([]byte, error) {
	h.total.Add(1)
	h.mu.Lock()
	h.calls[string(m.Payload)]++
	gate := h.gate
	h.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			h.cancelled.Add(1)
			return nil, ctx.Err()
		}
	}
	switch {
	case bytes.HasPrefix(m.Payload, []byte("fail")):
		return nil, errors.New("refused")
	case bytes.HasPrefix(m.Payload, []byte("random")):
		m.CacheTTL = 0 // a non-deterministic answer
	case bytes.HasPrefix(m.Payload, []byte("short")):
		m.CacheTTL = 50 * time.Millisecond
	}
	return append([]byte("re:"), m.Payload...), nil
}

func (h *countingEcho) count(p string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[p]
}

func cachedProducer(t *testing.T, c *bus.Client, topics ...string) *producer.Producer {
	t.Helper()
	m := map[string]producer.CacheConfig{}
	for _, tp := range topics {
		m[tp] = producer.CacheConfig{}
	}
	return newProducer(t, c, producer.Config{Cache: m})
}

func request(t *testing.T, p *producer.Producer, topic, payload string, opts ...producer.RequestOption) (string, producer.CacheInfo) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var info producer.CacheInfo
	got, err := p.Request(ctx, topic, []byte(payload), append(opts, producer.WithCacheInfo(&info))...)
	if err != nil {
		t.Fatalf("Request(%q) = %v", payload, err)
	}
	if want := "re:" + payload; string(got) != want {
		t.Fatalf("Request(%q) = %q, want %q", payload, got, want)
	}
	return string(got), info
}

func TestCacheTiersAndSources(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	p1 := cachedProducer(t, c, "llm")
	p2 := cachedProducer(t, c, "llm")

	if _, info := request(t, p1, "llm", "hello"); info.Source != producer.SourceHandler || info.Age != 0 || info.Entry == "" {
		t.Fatalf("first request: %+v, want a handler answer", info)
	}
	if _, info := request(t, p1, "llm", "hello"); info.Source != producer.SourceLocal {
		t.Fatalf("same producer again: %+v, want the local tier", info)
	}
	_, info := request(t, p2, "llm", "hello")
	if info.Source != producer.SourceShared {
		t.Fatalf("other producer: %+v, want the shared tier", info)
	}
	if _, info := request(t, p2, "llm", "hello"); info.Source != producer.SourceLocal {
		t.Fatalf("other producer again: %+v, want its local tier", info)
	}
	if n := h.count("hello"); n != 1 {
		t.Fatalf("handler calls = %d, want 1", n)
	}
	// Uncached topics are untouched.
	runConsumer(t, c, consumer.Config{Topic: "plain"}, h)
	for range 2 {
		if _, info := request(t, p1, "plain", "hello"); info.Source != producer.SourceNone {
			t.Fatalf("uncached topic: %+v, want SourceNone", info)
		}
	}
	if n := h.count("hello"); n != 3 {
		t.Fatalf("handler calls = %d, want 3 (1 cached + 2 uncached)", n)
	}
	if s := p1.Stats(); s.CacheHitsLocal != 1 || s.CacheMisses != 1 || s.CacheLocalEntries != 1 || s.CacheLocalBytes == 0 {
		t.Fatalf("p1 stats = %+v", s)
	}
	if s := p2.Stats(); s.CacheHitsShared != 1 || s.CacheHitsLocal != 1 {
		t.Fatalf("p2 stats = %+v", s)
	}
}

func TestCacheNeverStoresFailuresOrUncacheable(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	co := runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	p := cachedProducer(t, c, "llm")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		var re *bus.RemoteError
		if _, err := p.Request(ctx, "llm", []byte("fail")); !errors.As(err, &re) {
			t.Fatalf("Request(fail) = %v, want a remote error", err)
		}
	}
	if n := h.count("fail"); n != 2 {
		t.Fatalf("failing handler calls = %d, want 2 (errors are not cached)", n)
	}
	for range 2 {
		if _, info := request(t, p, "llm", "random"); info.Source != producer.SourceHandler {
			t.Fatalf("uncacheable answer served from %v", info.Source)
		}
	}
	// A timeout is never stored either: the handler outlives the deadline.
	h.mu.Lock()
	h.gate = make(chan struct{})
	h.mu.Unlock()
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := p.Request(short, "llm", []byte("slow"))
	cancelShort()
	var re *bus.RemoteError // the handler's own deadline error may arrive first
	if !errors.Is(err, bus.ErrTimeout) && (!errors.As(err, &re) || !strings.Contains(re.Message, "deadline")) {
		t.Fatalf("Request(slow) = %v, want ErrTimeout", err)
	}
	// (A handler that finished after the deadline with an answer would
	// have it stored: the answer is good. This one gives up.)
	waitFor(t, 5*time.Second, "the handler gave up", func() bool { return h.cancelled.Load() == 1 })
	h.mu.Lock()
	close(h.gate)
	h.gate = nil
	h.mu.Unlock()
	if _, info := request(t, p, "llm", "slow"); info.Source != producer.SourceHandler {
		t.Fatalf("after a timeout: %+v, want a fresh handler call", info)
	}
	// The worker counts a store once its pipeline returned, which may be
	// after the caller got the reply.
	waitFor(t, 5*time.Second, "the slow answer's store counted", func() bool { return co.Stats().CacheStores >= 1 })
	if s := co.Stats(); s.CacheStores != 1 {
		t.Fatalf("cache stores = %d, want 1 (only the last slow answer)", s.CacheStores)
	}
}

func TestCacheCallOptions(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	p := cachedProducer(t, c, "llm")
	p2 := cachedProducer(t, c, "llm")

	request(t, p, "llm", "a", producer.NoStore())
	if _, info := request(t, p2, "llm", "a"); info.Source != producer.SourceHandler {
		t.Fatalf("after NoStore: %v, want handler", info.Source)
	}
	if _, info := request(t, p, "llm", "a", producer.NoCache()); info.Source != producer.SourceHandler {
		t.Fatalf("NoCache: %v, want handler", info.Source)
	}
	if n := h.count("a"); n != 3 {
		t.Fatalf("handler calls = %d, want 3", n)
	}
	// MaxAge: a stored answer older than asked is replaced.
	time.Sleep(30 * time.Millisecond) // ages the stored answer (not synchronisation)
	if _, info := request(t, p, "llm", "a", producer.MaxAge(20*time.Millisecond)); info.Source != producer.SourceHandler {
		t.Fatalf("MaxAge(20ms) of an older answer: %v, want handler", info.Source)
	}
	if _, info := request(t, p2, "llm", "a", producer.MaxAge(time.Hour)); info.Source == producer.SourceHandler {
		t.Fatalf("MaxAge(1h): %v, want a stored answer", info.Source)
	}
	// A caller-chosen key: different payloads, one answer.
	k := producer.CacheKey("model=x prompt=greeting")
	got1, _ := request(t, p, "llm", "b", k)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var info producer.CacheInfo
	got2, err := p2.Request(ctx, "llm", []byte("c"), k, producer.WithCacheInfo(&info))
	if err != nil || string(got2) != got1 || info.Source != producer.SourceShared {
		t.Fatalf("same key, other payload = %q, %v, %v; want %q from the shared tier", got2, err, info.Source, got1)
	}
}

func TestCacheCoalescesInProcess(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	h.gate = make(chan struct{})
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	p := cachedProducer(t, c, "llm")

	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, err := p.Request(ctx, "llm", []byte("same"))
			if err != nil || string(got) != "re:same" {
				errs <- fmt.Errorf("Request = %q, %w", got, err)
			}
		})
	}
	waitFor(t, 5*time.Second, "99 callers joined", func() bool { return p.Stats().CoalescedLocal == n-1 })
	close(h.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := h.count("same"); got != 1 {
		t.Fatalf("handler calls = %d, want 1", got)
	}
}

func TestCacheCoalescesAcrossProducers(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	h.gate = make(chan struct{})
	co := runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	const n = 5
	ps := make([]*producer.Producer, n)
	for i := range ps {
		ps[i] = cachedProducer(t, c, "llm")
	}
	var wg sync.WaitGroup
	infos := make([]producer.CacheInfo, n)
	errs := make([]error, n)
	for i, p := range ps {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []byte
			got, errs[i] = p.Request(ctx, "llm", []byte("q"), producer.WithCacheInfo(&infos[i]))
			if errs[i] == nil && string(got) != "re:q" {
				errs[i] = fmt.Errorf("got %q", got)
			}
		})
	}
	joined := func() bool {
		k := 0
		for _, p := range ps {
			k += int(p.Stats().CoalescedRemote)
		}
		return k == n-1
	}
	waitFor(t, 5*time.Second, "4 producers joined the flight", joined)
	close(h.gate)
	wg.Wait()
	sources := map[producer.CacheSource]int{}
	for i := range ps {
		if errs[i] != nil {
			t.Fatalf("producer %d: %v", i, errs[i])
		}
		sources[infos[i].Source]++
	}
	if h.count("q") != 1 || sources[producer.SourceHandler] != 1 || sources[producer.SourceCoalescedRemote] != n-1 {
		t.Fatalf("handler calls = %d, sources = %v; want 1 call, 1 handler and %d coalesced", h.count("q"), sources, n-1)
	}
	waitFor(t, 5*time.Second, "the worker's counts", func() bool { s := co.Stats(); return s.CoalescedReplies == n-1 && s.CacheStores == 1 })
}

// TestCacheLeaderGivesUp: the caller whose request a worker is computing
// gives up (its deadline passes, so the handler is cancelled); the callers
// that joined it, with later deadlines, still get an answer.
func TestCacheLeaderGivesUp(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	h.gate = make(chan struct{})
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	leader := cachedProducer(t, c, "llm")
	other := cachedProducer(t, c, "llm")

	lctx, lcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer lcancel()
	ldone := make(chan error, 1)
	go func() {
		_, err := leader.Request(lctx, "llm", []byte("x"))
		ldone <- err
	}()
	waitFor(t, 5*time.Second, "the leader's request reached the handler", func() bool { return h.count("x") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	odone := make(chan error, 1)
	var info producer.CacheInfo
	go func() {
		got, err := other.Request(ctx, "llm", []byte("x"), producer.WithCacheInfo(&info))
		if err == nil && string(got) != "re:x" {
			err = fmt.Errorf("got %q", got)
		}
		odone <- err
	}()
	waitFor(t, 5*time.Second, "the other caller joined", func() bool { return other.Stats().CoalescedRemote == 1 })
	if err := <-ldone; !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("leader = %v, want ErrTimeout", err)
	}
	waitFor(t, 5*time.Second, "the joined caller took over", func() bool { return h.count("x") == 2 })
	h.mu.Lock()
	close(h.gate)
	h.mu.Unlock()
	if err := <-odone; err != nil {
		t.Fatalf("joined caller = %v, want the answer", err)
	}
	if s := other.Stats(); s.CacheTakeovers != 1 || info.Source != producer.SourceHandler {
		t.Fatalf("joined caller: takeovers %d, source %v; want 1 and handler", s.CacheTakeovers, info.Source)
	}
}

func TestCacheInvalidationAndCorruption(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	p := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{"llm": {LocalTTL: -1}}})
	insp := inspect.New(c)
	ctx := context.Background()

	request(t, p, "llm", "a")
	request(t, p, "llm", "b")
	if _, info := request(t, p, "llm", "a"); info.Source != producer.SourceShared {
		t.Fatalf("before flush: %v", info.Source)
	}
	st, err := insp.CacheStats(ctx, "llm")
	if err != nil || st.Entries != 2 || st.Bytes == 0 || st.Generation != 0 {
		t.Fatalf("CacheStats = %+v, %v; want 2 entries of generation 0", st, err)
	}
	if ok, err := insp.FlushCacheEntry(ctx, "llm", bus.HashPayload([]byte("a"))); !ok || err != nil {
		t.Fatalf("FlushCacheEntry(a) = %v, %v", ok, err)
	}
	if _, info := request(t, p, "llm", "a"); info.Source != producer.SourceHandler {
		t.Fatalf("after flushing a: %v, want handler", info.Source)
	}
	if _, info := request(t, p, "llm", "b"); info.Source != producer.SourceShared {
		t.Fatalf("b after flushing a: %v, want shared", info.Source)
	}
	if g, err := insp.FlushCache(ctx, "llm"); g != 1 || err != nil {
		t.Fatalf("FlushCache = %d, %v; want generation 1", g, err)
	}
	for _, k := range []string{"a", "b"} {
		if _, info := request(t, p, "llm", k); info.Source != producer.SourceHandler || info.Entry[:2] != "1:" {
			t.Fatalf("%s after FlushCache: %+v, want a handler answer in generation 1", k, info)
		}
	}
	// Corrupt values: no time prefix, and an undecodable envelope.
	rc := c.Redis()
	for i, bad := range []string{"garbage", "1700000000000\n\xc1not msgpack"} {
		key := c.Keys().Cache("llm", bus.CacheEntryID(1, bus.HashPayload([]byte("a"))))
		if err := rc.Do(ctx, rc.B().Set().Key(key).Value(bad).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		if _, info := request(t, p, "llm", "a"); info.Source != producer.SourceHandler {
			t.Fatalf("corrupt value %d: %v, want handler", i, info.Source)
		}
		if s := p.Stats(); s.CacheCorrupt != uint64(i+1) {
			t.Fatalf("corrupt count = %d, want %d", s.CacheCorrupt, i+1)
		}
	}
	if _, info := request(t, p, "llm", "a"); info.Source != producer.SourceShared {
		t.Fatalf("after a corrupt value was replaced: %v, want shared", info.Source)
	}
}

// TestCacheOnMiniredis: the cache's scripts run on miniredis too (make run's
// embedded Redis): tiers, coalescing across producers, the shared tier's
// TTL, and an evicted entry or flight marker.
func TestCacheOnMiniredis(t *testing.T) {
	m, c := redistest.Mini(t)
	h := newCounting()
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	noLocal := map[string]producer.CacheConfig{"llm": {TTL: 5 * time.Second, LocalTTL: -1}}
	p1 := newProducer(t, c, producer.Config{Cache: noLocal})
	p2 := newProducer(t, c, producer.Config{Cache: noLocal})

	request(t, p1, "llm", "a")
	if _, info := request(t, p2, "llm", "a"); info.Source != producer.SourceShared {
		t.Fatalf("second producer: %v, want shared", info.Source)
	}
	m.FastForward(6 * time.Second) // not beyond the reply streams' TTL
	if _, info := request(t, p2, "llm", "a"); info.Source != producer.SourceHandler {
		t.Fatalf("after the TTL: %v, want handler", info.Source)
	}
	// Redis evicting the entry (maxmemory) is a miss, nothing worse.
	m.Del(c.Keys().Cache("llm", bus.CacheEntryID(0, bus.HashPayload([]byte("a")))))
	if _, info := request(t, p1, "llm", "a"); info.Source != producer.SourceHandler {
		t.Fatalf("after eviction: %v, want handler", info.Source)
	}
	if n := h.count("a"); n != 3 {
		t.Fatalf("handler calls = %d, want 3", n)
	}
}

// TestBusWorkerRequestCacheProcesses: 20 `bus-worker request --cache`
// processes asking the same at once cause one handler call and 20 correct
// answers; `cache stats` and `cache flush` see and drop the answer.
func TestBusWorkerRequestCacheProcesses(t *testing.T) {
	srv := redistest.Start(t)
	w := redistest.StartWorker(t, "--redis", srv.URL, "--topic", "llm", "--handler", "sleep:2s")
	bin := buildCmd(t, "bus-worker")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"request", "--redis", srv.URL, "--topic", "llm", "--data", "the same prompt", "--cache", "--json", "--timeout", "30s"}
	type answer struct {
		Reply string `json:"reply"`
		Cache struct {
			Source string `json:"source"`
		} `json:"cache"`
	}
	const n = 20
	answers := make([]answer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			out, err := exec.CommandContext(ctx, bin, args...).Output()
			if err != nil {
				errs[i] = fmt.Errorf("process %d: %w\n%s", i, err, out)
				return
			}
			errs[i] = json.Unmarshal(out, &answers[i])
		})
	}
	wg.Wait()
	sources := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if answers[i].Reply != "the same prompt" {
			t.Fatalf("process %d got %q", i, answers[i].Reply)
		}
		sources[answers[i].Cache.Source]++
	}
	if s := w.Stats(t); s.Handled != 1 {
		t.Fatalf("handler calls = %d (sources %v), want 1", s.Handled, sources)
	}
	if sources["handler"] != 1 {
		t.Fatalf("sources = %v, want exactly one handler answer", sources)
	}
	out, err := exec.CommandContext(ctx, bin, "cache", "stats", "--redis", srv.URL, "--topic", "llm", "--json").Output()
	var st struct {
		Entries  int `json:"entries"`
		InFlight int `json:"in_flight"`
	}
	if err != nil || json.Unmarshal(out, &st) != nil || st.Entries != 1 || st.InFlight != 0 {
		t.Fatalf("cache stats = %s, %v; want 1 entry, nothing in flight", out, err)
	}
	out, err = exec.CommandContext(ctx, bin, "cache", "flush", "--redis", srv.URL, "--topic", "llm", "--data", "the same prompt").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "flushed the answer") {
		t.Fatalf("cache flush --data = %s, %v", out, err)
	}
	out, err = exec.CommandContext(ctx, bin, "cache", "flush", "--redis", srv.URL, "--topic", "llm").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "generation now 1") {
		t.Fatalf("cache flush = %s, %v", out, err)
	}
	out, err = exec.CommandContext(ctx, bin, "request", "--redis", srv.URL, "--topic", "llm", "--data", "x", "--max-age", "1s").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "need --cache") {
		t.Fatalf("request --max-age without --cache = %s, %v; want a usage error", out, err)
	}
}

// TestCacheLeaderCancelledOrKilled: the caller whose request a worker is
// computing cancels (in process) or is killed (a process); the callers that
// joined it get the answer of that one handler call.
func TestCacheLeaderCancelledOrKilled(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	h.gate = make(chan struct{})
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	leader := cachedProducer(t, c, "llm")
	other := cachedProducer(t, c, "llm")

	lctx, lcancel := context.WithCancel(context.Background())
	ldone := make(chan error, 1)
	go func() {
		_, err := leader.Request(lctx, "llm", []byte("x"))
		ldone <- err
	}()
	waitFor(t, 5*time.Second, "the leader's request reached the handler", func() bool { return h.count("x") == 1 })
	odone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := other.Request(ctx, "llm", []byte("x"))
		if err == nil && string(got) != "re:x" {
			err = fmt.Errorf("got %q", got)
		}
		odone <- err
	}()
	waitFor(t, 5*time.Second, "the other caller joined", func() bool { return other.Stats().CoalescedRemote == 1 })
	lcancel()
	if err := <-ldone; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader = %v, want context.Canceled", err)
	}
	h.mu.Lock()
	close(h.gate)
	h.gate = nil
	h.mu.Unlock()
	if err := <-odone; err != nil {
		t.Fatalf("joined caller after the leader cancelled = %v", err)
	}

	// A leader process killed mid-flight.
	w := redistest.StartWorker(t, "--redis", srv.URL, "--topic", "slow", "--handler", "sleep:1s")
	bin := buildCmd(t, "bus-worker")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	killed := exec.CommandContext(ctx, bin, "request", "--redis", srv.URL, "--topic", "slow", "--data", "p", "--cache")
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the leader's request reached the worker", func() bool { return w.Stats(t).Received == 1 })
	p := newProducer(t, c, producer.Config{Cache: map[string]producer.CacheConfig{"slow": {}}})
	jdone := make(chan error, 1)
	go func() {
		got, err := p.Request(ctx, "slow", []byte("p"))
		if err == nil && string(got) != "p" {
			err = fmt.Errorf("got %q", got)
		}
		jdone <- err
	}()
	waitFor(t, 5*time.Second, "the caller joined", func() bool { return p.Stats().CoalescedRemote == 1 })
	_ = killed.Process.Kill()
	_ = killed.Wait()
	if err := <-jdone; err != nil {
		t.Fatalf("joined caller after the leader was killed = %v", err)
	}
	waitFor(t, 5*time.Second, "the worker's counts", func() bool { s := w.Stats(t); return s.CoalescedReplies == 1 })
	if s := w.Stats(t); s.Handled != 1 {
		t.Fatalf("worker: handled %d, want 1", s.Handled)
	}
}
