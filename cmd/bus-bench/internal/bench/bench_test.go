package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/goleak"

	"github.com/egos/mycelium/bus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// options returns the command line's defaults against m, changed by set,
// and checked.
func options(t *testing.T, m *miniredis.Miniredis, set func(o *Options)) *Options {
	t.Helper()
	o := &Options{
		Redis: "redis://" + m.Addr(), Scenario: "rpc", Concurrency: 64, Requests: 10000, Payload: 1024, Topic: "reasoning",
		Group: "workers", Rate: 100, Timeout: 30 * time.Second, Prefix: bus.DefaultPrefix, Transport: "mycelium",
		PubsubConn: "fresh", Handler: "echo",
	}
	set(o)
	if err := o.Check(nil); err != nil {
		t.Fatalf("Check(%+v) = %v", o, err)
	}
	return o
}

func TestSummarize(t *testing.T) {
	var lat []int64
	for i := 1; i <= 1000; i++ {
		lat = append(lat, int64(time.Duration(i)*time.Microsecond))
	}
	var r Result
	summarize(&r, lat)
	if r.P50US != 500 || r.P90US != 900 || r.P99US != 990 || r.MaxUS != 1000 {
		t.Fatalf("summarize = p50 %d p90 %d p99 %d max %d", r.P50US, r.P90US, r.P99US, r.MaxUS)
	}
	var empty Result
	summarize(&empty, nil) // must not panic
}

func TestPayloadsCheck(t *testing.T) {
	p := newPayloads(64, "random")
	b := p.fill(nil, 42)
	if seq, ok := p.check(b); !ok || seq != 42 || len(b) != 64 {
		t.Fatalf("check(fill(42)) = %d, %v (len %d)", seq, ok, len(b))
	}
	b[40] ^= 1
	if _, ok := p.check(b); ok {
		t.Fatal("check accepted a corrupted payload")
	}
	if _, ok := newPayloads(64, "random").check(p.fill(nil, 1)); ok {
		t.Fatal("check accepted another run's payload")
	}
}

type otherErr struct{}

func (otherErr) Error() string { return "other" }

// TestTallyKeepsTheFirstErrorOfAnyType: errors of different concrete types
// from many goroutines (a Redis restart yields connection errors, then
// LOADING replies) are counted, and the first is kept. An atomic.Value here
// panicked with "compare and swap of inconsistently typed value".
func TestTallyKeepsTheFirstErrorOfAnyType(t *testing.T) {
	var tl tally
	first := errors.New("first")
	tl.failed(first)
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			switch i % 3 {
			case 0:
				tl.failed(fmt.Errorf("wrapped %d: %w", i, first))
			case 1:
				tl.failed(otherErr{})
			default:
				tl.failed(&os.PathError{Op: "x", Err: first})
			}
		})
	}
	wg.Wait()
	if tl.errs.Load() != 65 || tl.firstErr() != first { //nolint:errorlint // identity: the first error itself, not one wrapping it
		t.Fatalf("tally = %d errors, first %v; want 65 and the first one", tl.errs.Load(), tl.firstErr())
	}
	var empty tally
	if empty.firstErr() != nil {
		t.Fatal("an empty tally has a first error")
	}
	empty.first.set(nil)
	if empty.firstErr() != nil {
		t.Fatal("set(nil) recorded an error")
	}
}

// TestBaselineOnMiniredis: the PubSub baseline answers requests byte for
// byte with fresh and with pooled connections.
func TestBaselineOnMiniredis(t *testing.T) {
	m := miniredis.RunT(t)
	for _, conn := range []string{"fresh", "pooled"} {
		t.Run(conn, func(t *testing.T) {
			o := options(t, m, func(o *Options) {
				o.Transport, o.PubsubConn, o.Concurrency, o.Requests, o.Payload = "pubsub", conn, 4, 50, 100
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := Run(ctx, o, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			// miniredis has no INFO cpu: no CPU figures rather than wrong ones.
			if r := out.Result; r.System != SystemPubsub || r.OK != 50 || r.Errors != 0 || len(r.Stages) != 0 || len(out.Lat) != 50 || r.ClientCPUUS != 0 || r.RedisCPUUS != 0 || r.Batches != nil {
				t.Fatalf("result %+v, %d samples", r, len(out.Lat))
			}
		})
	}
}

// TestSleepHandlerReportsOverhead: with a simulated handler the result
// carries the bus overhead: end to end minus the handler, so at least the
// handler's shortest time (20 ms) below end to end at every percentile
// (the arithmetic, not the machine's speed: a slow moment under -race made
// a bound on its size flaky).
func TestSleepHandlerReportsOverhead(t *testing.T) {
	m := miniredis.RunT(t)
	o := options(t, m, func(o *Options) { o.Concurrency, o.Requests, o.Handler = 4, 8, "sleep:30ms,10ms" })
	out, err := Run(context.Background(), o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := out.Result
	// 19 ms, not 20: the histograms' buckets round by up to ~1%.
	if r.OK != 8 || r.OverheadP50US <= 0 || r.OverheadP99US < r.OverheadP50US || r.OverheadP50US > r.P50US-19_000 ||
		r.OverheadP99US > r.P99US-19_000 || r.P50US < 20_000 || r.Handler != "sleep:30ms,10ms" {
		t.Fatalf("result %+v", r)
	}
	// Batches: at least one entry per round trip on every path, at most
	// the 4 callers' worth.
	if b := r.Batches; b == nil {
		t.Fatal("no batches in a mycelium result")
	} else {
		for name, v := range map[string]float64{"per_write": b.PerWrite, "per_reply_read": b.PerReplyRead, "per_read": b.PerRead, "per_ack_write": b.PerAckWrite} {
			if v < 1 || v > 4 {
				t.Errorf("batches %s = %v, want 1..4", name, v)
			}
		}
	}
}

// --cpuprofile and --trace write a CPU profile and an execution trace of the
// measured run; an unwritable path is a usage error.
func TestProfileAndTraceFiles(t *testing.T) {
	m := miniredis.RunT(t)
	dir := t.TempDir()
	prof, tr := filepath.Join(dir, "cpu.prof"), filepath.Join(dir, "run.trace")
	o := options(t, m, func(o *Options) { o.Concurrency, o.Requests, o.CPUProfile, o.Trace = 2, 20, prof, tr })
	if _, err := Run(context.Background(), o, io.Discard); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(prof); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("cpu profile: %d bytes, %v; want a gzipped pprof", len(b), err)
	}
	if b, err := os.ReadFile(tr); err != nil || !bytes.HasPrefix(b, []byte("go 1.")) {
		t.Fatalf("trace: %.20q, %v; want a Go execution trace", b, err)
	}
	o = options(t, m, func(o *Options) { o.Requests, o.Trace = 1, filepath.Join(dir, "no", "such", "dir") })
	if _, err := Run(context.Background(), o, io.Discard); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "--trace") {
		t.Fatalf("unwritable --trace = %v, want a usage error naming the flag", err)
	}
}
