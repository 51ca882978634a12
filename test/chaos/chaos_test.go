package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestChaosWorkerKilled: two workers serve a topic; one is SIGKILLed
// mid-run. Every request gets exactly one correct reply; the dead worker's
// pending entries are reclaimed by the survivor.
func TestChaosWorkerKilled(t *testing.T) {
	srv := redistest.Start(t)
	// Handlers long enough (20 ms) that the entries w1 holds when killed are
	// mid-handler, not mid-flush (a reply written just before the kill
	// leaves its entry pending with its caller answered).
	args := []string{"--topic", "chaos", "--concurrency", "16", "--handler", "sleep:20ms", "--claim-idle", "1s"}
	w1 := startWorker(t, srv.URL, args...)
	w2 := startWorker(t, srv.URL, args...)
	p := newProducer(t, srv.Client(t), producer.Config{NoBreaker: true})

	total, conc := scale(2000, 20000), 64
	var next, okN, errN atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(total) {
					return
				}
				req := []byte("req-" + strconv.FormatInt(i, 10))
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				got, err := p.Request(ctx, "chaos", req)
				cancel()
				if err == nil && !bytes.Equal(got, req) {
					err = fmt.Errorf("reply %q for request %q", got, req)
				}
				if err != nil {
					errN.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				okN.Add(1)
			}
		}()
	}
	// Kill w1 while it holds entries (on a loaded machine it can be idle for
	// a moment, and then the survivor has nothing to reclaim).
	waitFor(t, 60*time.Second, "a third of the requests, with w1 holding entries", func() bool {
		return okN.Load() >= int64(total/3) && w1.Stats(t).InFlight > 0
	})
	w1.Kill()
	killedAt := time.Since(start)
	wg.Wait()
	elapsed := time.Since(start)
	s2 := w2.Stats(t)
	st := p.Stats()
	t.Logf("worker killed at %v: %d requests sent, %d replies, %d errors, %d duplicate executions (late replies dropped), survivor reclaimed %d entries, run took %v",
		killedAt.Round(time.Millisecond), total, okN.Load(), errN.Load(), st.Late, s2.Reclaimed, elapsed.Round(time.Millisecond))
	if errN.Load() != 0 || okN.Load() != int64(total) {
		t.Fatalf("%d of %d requests failed; first: %v", errN.Load(), total, firstErr.Load())
	}
	// The entries w1 held are reclaimed after ClaimIdle, possibly after the
	// last reply (when w1 had written their replies but not its XACKs).
	waitFor(t, 15*time.Second, "the survivor to reclaim the killed worker's entries", func() bool { return w2.Stats(t).Reclaimed > 0 })
}

// recorder is a downstream HTTP service that remembers what it was sent.
type recorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen map[string]int
	last atomic.Int64 // unix nanos of the last recorded payload
}

func newRecorder(t *testing.T, fail func(body string) int) *recorder {
	r := &recorder{seen: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		if code := fail(string(b)); code != 0 {
			http.Error(w, "refused", code)
			return
		}
		r.mu.Lock()
		r.seen[string(b)]++
		r.mu.Unlock()
		r.last.Store(time.Now().UnixNano())
		_, _ = w.Write(b)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) count(k string) int { r.mu.Lock(); defer r.mu.Unlock(); return r.seen[k] }

// TestChaosRedisRestarted: Redis with appendonly/appendfsync always is
// SIGKILLed and restarted on the same port under publish load. Every
// publish that returned success is handled at least once; every failed one
// returned an error; producer and worker resume on their own.
func TestChaosRedisRestarted(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	rec := newRecorder(t, func(string) int { return 0 })
	// Entries Redis delivered on the connection that died with it stay
	// pending under the worker's name until reclaimed: ClaimIdle bounds how
	// late they are handled.
	w := startWorker(t, srv.URL, "--topic", "ev", "--concurrency", "32", "--handler", rec.srv.URL, "--breaker=false", "--claim-idle", "2s")
	p := newProducer(t, srv.Client(t), producer.Config{Breaker: breaker.Config{MinCalls: 5, OpenTimeout: 200 * time.Millisecond}})

	var mu sync.Mutex
	published := map[string]time.Time{} // payload -> when Publish returned success
	kinds := map[string]int{}
	var seq atomic.Int64
	stop := make(chan struct{})
	wait := load(8, stop, func() {
		payload := "ev-" + strconv.FormatInt(seq.Add(1), 10)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := p.Publish(ctx, "ev", []byte(payload))
		cancel()
		mu.Lock()
		switch {
		case err == nil:
			published[payload] = time.Now()
		case errors.Is(err, bus.ErrBreakerOpen):
			kinds["breaker open"]++
		case errors.Is(err, context.DeadlineExceeded):
			kinds["timeout"]++
		case errors.Is(err, bus.ErrUnavailable):
			kinds["unavailable"]++
		default:
			kinds["untyped: "+err.Error()]++
		}
		mu.Unlock()
		if err != nil {
			time.Sleep(5 * time.Millisecond) // pace retries: load, not synchronisation
		}
	})
	time.Sleep(scale(700*time.Millisecond, 5*time.Second)) // publish under steady load first
	srv.Kill()
	time.Sleep(300 * time.Millisecond) // the outage
	srv.Restart()
	back := time.Now()
	var producerBack, workerBack time.Duration
	waitFor(t, 30*time.Second, "a publish and a handled event after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		if producerBack == 0 {
			for _, at := range published {
				if at.After(back) {
					producerBack = time.Since(back)
					break
				}
			}
		}
		if workerBack == 0 && rec.last.Load() > back.UnixNano() {
			workerBack = time.Since(back)
		}
		return producerBack > 0 && workerBack > 0
	})
	time.Sleep(scale(500*time.Millisecond, 5*time.Second)) // and keep going after it
	close(stop)
	wait()

	mu.Lock()
	ok := len(published)
	pending := make([]string, 0, ok)
	for k := range published {
		pending = append(pending, k)
	}
	failed := fmt.Sprint(kinds)
	mu.Unlock()
	lost := 0
	drainStart := time.Now()
	defer func() { t.Logf("drain wait %v", time.Since(drainStart).Round(time.Millisecond)) }()
	waitFor(t, 60*time.Second, "every successful publish to be handled", func() bool {
		lost = 0
		for _, k := range pending {
			if rec.count(k) == 0 {
				lost++
			}
		}
		return lost == 0
	})
	dups := 0
	for _, k := range pending {
		dups += max(0, rec.count(k)-1)
	}
	t.Logf("Redis SIGKILLed and restarted (AOF always): %d publishes succeeded, failed ones by kind %s, %d handled at least once, %d handled twice, lost %d; after Redis answered again the producer resumed in %v and the worker in %v",
		ok, failed, ok-lost, dups, lost, producerBack.Round(time.Millisecond), workerBack.Round(time.Millisecond))
	for k := range kinds {
		if strings.HasPrefix(k, "untyped") {
			t.Fatalf("a failed publish returned an error with no sentinel: %s", k)
		}
	}
	if producerBack > 5*time.Second || workerBack > 5*time.Second {
		t.Fatalf("resume took producer %v, worker %v; want seconds at most", producerBack, workerBack)
	}
	stopStart := time.Now()
	w.Stop(t)
	t.Logf("worker stopped in %v", time.Since(stopStart).Round(time.Millisecond))
	// One line per loop when an outage starts (and one when it ends), not one
	// per retry: the worker retried many times during the outage. A loop
	// that did not touch Redis meanwhile (say, all slots busy) logs nothing.
	logs := w.Logs.String()
	starts := strings.Count(logs, "lost Redis") + strings.Count(logs, "cannot write replies/acks")
	t.Logf("worker logged %d outage starts and %d recoveries", starts, strings.Count(logs, `"recovered"`))
	if starts > 6 {
		t.Fatalf("worker logged %d outage starts for one outage: logging per attempt?\n%s", starts, logs)
	}
}

// TestChaosRedisPaused: SIGSTOP under request load; callers get timeouts
// bounded by their ctx, nothing hangs, everything resumes after SIGCONT.
func TestChaosRedisPaused(t *testing.T) {
	srv := redistest.Start(t)
	w := startWorker(t, srv.URL, "--topic", "rq", "--concurrency", "16")
	p := newProducer(t, srv.Client(t), producer.Config{Breaker: breaker.Config{MinCalls: 5, OpenTimeout: 300 * time.Millisecond}})
	const timeout = 300 * time.Millisecond
	var maxTook atomic.Int64
	var calls, okN atomic.Int64
	stop := make(chan struct{})
	wait := load(8, stop, func() {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err := p.Request(ctx, "rq", []byte("x"))
		cancel()
		took := time.Since(t0)
		for {
			m := maxTook.Load()
			if int64(took) <= m || maxTook.CompareAndSwap(m, int64(took)) {
				break
			}
		}
		calls.Add(1)
		if err == nil {
			okN.Add(1)
		} else {
			time.Sleep(time.Millisecond) // pace fast failures
		}
	})
	pause := scale(2*time.Second, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	srv.Signal(syscall.SIGSTOP)
	time.Sleep(pause)
	srv.Signal(syscall.SIGCONT)
	resumed := time.Now()
	before := okN.Load()
	waitFor(t, 30*time.Second, "requests to succeed again", func() bool { return okN.Load() > before+10 })
	recovered := time.Since(resumed)
	close(stop)
	wait()
	took := time.Duration(maxTook.Load())
	t.Logf("Redis paused %v under load: %d calls, slowest %v (ctx timeout %v), requests succeed again %v after SIGCONT",
		pause, calls.Load(), took.Round(time.Millisecond), timeout, recovered.Round(time.Millisecond))
	if took > timeout+500*time.Millisecond {
		t.Fatalf("a call took %v with a %v ctx: not bounded by its ctx", took, timeout)
	}
	w.Stop(t)
}

// TestChaosPoisonAndMalformed: garbage, truncated, empty and oversized
// entries and an event whose handler always fails all end in the
// dead-letter stream with their reason; the worker keeps serving.
func TestChaosPoisonAndMalformed(t *testing.T) {
	srv := redistest.Start(t)
	rec := newRecorder(t, func(body string) int {
		if body == "always-fails" {
			return http.StatusInternalServerError
		}
		return 0
	})
	w := startWorker(t, srv.URL, "--topic", "poison", "--handler", rec.srv.URL, "--max-deliveries", "3", "--claim-idle", "1s", "--breaker=false")
	c := srv.Client(t)
	ctx := context.Background()
	cli := func(args ...string) {
		t.Helper()
		out, err := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(srv.Port)}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli %v: %v %s", args, err, out)
		}
	}
	cli("XADD", "myc:{poison}", "*", "m", "garbage")
	cli("XADD", "myc:{poison}", "*", "m", "")
	cli("XADD", "myc:{poison}", "*", "other", "field")
	good := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("truncated soon")})
	for _, data := range [][]byte{good[:len(good)-4], bytes.Repeat([]byte("x"), consumer.DefaultMaxEntrySize+1)} {
		if err := c.Redis().Do(ctx, c.Redis().B().Xadd().Key("myc:{poison}").Id("*").FieldValue().FieldValue("m", string(data)).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	p := newProducer(t, c, producer.Config{NoBreaker: true})
	if _, err := p.Publish(ctx, "poison", []byte("always-fails")); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if got, err := p.Request(rctx, "poison", []byte("still serving")); err != nil || string(got) != "still serving" {
		t.Fatalf("Request while poison is processed = %q, %v", got, err)
	}
	waitFor(t, 30*time.Second, "6 dead letters", func() bool {
		n, err := c.Redis().Do(ctx, c.Redis().B().Xlen().Key("myc:{poison}:dlq").Build()).AsInt64()
		return err == nil && n == 6
	})
	letters, err := inspect.New(c).DeadLetters(ctx, "poison", 0)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, d := range letters {
		reasons[d.Reason]++
	}
	if reasons["malformed"] != 5 || reasons["max_deliveries"] != 1 {
		t.Fatalf("dead-letter reasons = %v, want 5 malformed and 1 max_deliveries", reasons)
	}
	s := w.Stats(t)
	t.Logf("poison: 5 malformed entries dead-lettered at once, the failing event after %d deliveries; worker stats %+v", 3, s)
	if s.InFlight != 0 {
		t.Fatalf("worker still holds %d entries", s.InFlight)
	}
	w.Stop(t)
}

// TestChaosSlowHandler: a handler running 3 x ClaimIdle on two workers
// completes once per request and is never reclaimed or run twice.
func TestChaosSlowHandler(t *testing.T) {
	srv := redistest.Start(t)
	args := []string{"--topic", "slow", "--handler", "sleep:3s", "--claim-idle", "1s", "--concurrency", "4"}
	w1 := startWorker(t, srv.URL, args...)
	w2 := startWorker(t, srv.URL, args...)
	p := newProducer(t, srv.Client(t), producer.Config{NoBreaker: true})
	n := scale(4, 16)
	var wg sync.WaitGroup
	var errN atomic.Int64
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req := []byte(strconv.Itoa(i))
			if got, err := p.Request(ctx, "slow", req); err != nil || !bytes.Equal(got, req) {
				errN.Add(1)
			}
		}()
	}
	wg.Wait()
	time.Sleep(time.Second) // a window for a wrongful reclaim to show up
	s1, s2 := w1.Stats(t), w2.Stats(t)
	t.Logf("slow handler (3s, ClaimIdle 1s): %d requests, %d errors, handled %d, reclaimed %d, heartbeats %d, late replies %d",
		n, errN.Load(), s1.Handled+s2.Handled, s1.Reclaimed+s2.Reclaimed, s1.Heartbeats+s2.Heartbeats, p.Stats().Late)
	if errN.Load() != 0 || s1.Handled+s2.Handled != uint64(n) || s1.Reclaimed+s2.Reclaimed != 0 || p.Stats().Late != 0 {
		t.Fatalf("slow handler ran more than once per request or failed")
	}
	if s1.Heartbeats+s2.Heartbeats == 0 {
		t.Fatal("no heartbeats for handlers running 3 x ClaimIdle")
	}
}
