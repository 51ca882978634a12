package redistest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
)

// SyncBuffer is a bytes.Buffer that a child process and a test can share.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// FreeAddr returns a loopback address nothing listens on right now.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Worker is a `bus-worker serve` process owned by one test.
type Worker struct {
	Cmd      *exec.Cmd
	Logs     *SyncBuffer // its stdout and stderr
	HTTPAddr string      // its /healthz, /readyz and /stats
}

// StartWorker runs `bus-worker serve --http-addr <free> args...`, waits until
// /readyz answers 200, and kills it (logging its output if the test failed)
// when the test ends.
func StartWorker(tb testing.TB, args ...string) *Worker {
	tb.Helper()
	w := &Worker{Logs: &SyncBuffer{}, HTTPAddr: FreeAddr(tb)}
	w.Cmd = exec.Command(Binary(tb, "bus-worker"), append([]string{"serve", "--http-addr", w.HTTPAddr}, args...)...)
	w.Cmd.Stdout, w.Cmd.Stderr = w.Logs, w.Logs
	if err := w.Cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if w.Cmd.ProcessState == nil {
			_ = w.Cmd.Process.Kill()
			_ = w.Cmd.Wait()
		}
		if tb.Failed() {
			tb.Logf("bus-worker %s logs:\n%s", w.HTTPAddr, w.Logs)
		}
	})
	WaitFor(tb, 20*time.Second, "bus-worker /readyz", func() bool {
		resp, err := http.Get("http://" + w.HTTPAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return w
}

// Kill sends SIGKILL and reaps the process.
func (w *Worker) Kill() {
	_ = w.Cmd.Process.Kill()
	_ = w.Cmd.Wait()
}

// Stop sends SIGINT and fails the test unless the worker exits cleanly
// within 30s.
func (w *Worker) Stop(tb testing.TB) {
	tb.Helper()
	_ = w.Cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- w.Cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			tb.Errorf("bus-worker exit after SIGINT = %v", err)
		}
	case <-time.After(30 * time.Second):
		tb.Errorf("bus-worker did not stop within 30s of SIGINT")
	}
}

// Stats reads the worker's /stats.
func (w *Worker) Stats(tb testing.TB) consumer.Stats {
	tb.Helper()
	resp, err := http.Get("http://" + w.HTTPAddr + "/stats")
	if err != nil {
		tb.Fatalf("/stats: %v", err)
	}
	defer resp.Body.Close()
	var s consumer.Stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		tb.Fatalf("/stats: %v", err)
	}
	return s
}

// NewProducer builds a producer on c, closed when the test ends.
func NewProducer(tb testing.TB, c *bus.Client, cfg producer.Config) *producer.Producer {
	tb.Helper()
	p, err := producer.New(c, cfg)
	if err != nil {
		tb.Fatalf("producer.New = %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil && !errors.Is(err, context.Canceled) {
			tb.Errorf("producer Close = %v", err)
		}
	})
	return p
}

// WaitFor polls cond every 5ms until it holds, failing the test after within.
func WaitFor(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", within, what)
		}
		<-tick.C
	}
}

// Load calls fn in a loop on n goroutines until stop is closed; the
// returned wait blocks until they have all returned.
func Load(n int, stop <-chan struct{}, fn func()) (wait func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				fn()
			}
		})
	}
	return wg.Wait
}
