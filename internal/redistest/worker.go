package redistest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
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
	addr, err := freeAddr()
	if err != nil {
		tb.Fatal(err)
	}
	return addr
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Worker is a `bus-worker serve` process owned by one test.
type Worker struct {
	Cmd      *exec.Cmd
	Logs     *SyncBuffer // its stdout and stderr (StartWorker; nil after Launch)
	HTTPAddr string      // its /healthz, /readyz and /stats
}

// StartWorker runs `bus-worker serve --http-addr <free> args...`, waits until
// /readyz answers 200, and kills it (logging its output if the test failed)
// when the test ends.
func StartWorker(tb testing.TB, args ...string) *Worker {
	tb.Helper()
	logs := &SyncBuffer{}
	w, err := Launch(context.Background(), Binary(tb, "bus-worker"), logs, args...)
	if err != nil {
		tb.Fatalf("%v; its output:\n%s", err, logs)
	}
	w.Logs = logs
	tb.Cleanup(func() {
		if w.Cmd.ProcessState == nil {
			w.Kill()
		}
		if tb.Failed() {
			tb.Logf("bus-worker %s logs:\n%s", w.HTTPAddr, w.Logs)
		}
	})
	return w
}

// Launch runs `bin serve --http-addr <free> args...` with its output to out
// and waits (at most 30 s, and while ctx lasts) until /readyz answers 200.
// It neither fails a test nor cleans up: for the goroutines of a harness
// that replaces workers as it runs (the soak), which Kill or Terminate them.
func Launch(ctx context.Context, bin string, out io.Writer, args ...string) (*Worker, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	w := &Worker{HTTPAddr: addr}
	w.Cmd = exec.Command(bin, append([]string{"serve", "--http-addr", addr}, args...)...)
	w.Cmd.Stdout, w.Cmd.Stderr = out, out
	if err := w.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("start bus-worker: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := statusClient.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return w, nil
			}
		}
		select {
		case <-ctx.Done():
			w.Kill()
			return nil, fmt.Errorf("bus-worker %s not ready: %w", addr, ctx.Err())
		case <-tick.C: // polling a child's HTTP port: there is nothing to wait on
		}
	}
}

// statusClient reads the worker's HTTP endpoints, never for long.
var statusClient = &http.Client{Timeout: 2 * time.Second}

// Kill sends SIGKILL and reaps the process.
func (w *Worker) Kill() {
	_ = w.Cmd.Process.Kill()
	_ = w.Cmd.Wait()
}

// Stop sends SIGINT and fails the test unless the worker exits cleanly
// within 30s.
func (w *Worker) Stop(tb testing.TB) {
	tb.Helper()
	if err := w.signal(os.Interrupt, 30*time.Second); err != nil {
		tb.Errorf("bus-worker after SIGINT: %v", err)
	}
}

// Terminate sends SIGTERM (a service manager's stop) and returns how the
// worker exited: nil for a clean exit; an error if it failed, or did not
// exit within within (then it is killed).
func (w *Worker) Terminate(within time.Duration) error { return w.signal(syscall.SIGTERM, within) }

func (w *Worker) signal(sig os.Signal, within time.Duration) error {
	_ = w.Cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- w.Cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		_ = w.Cmd.Process.Kill()
		return fmt.Errorf("no exit within %v of %v (killed: %w)", within, sig, <-done)
	}
}

// Stats reads the worker's /stats, failing the test if it cannot.
func (w *Worker) Stats(tb testing.TB) consumer.Stats {
	tb.Helper()
	s, err := w.ReadStats()
	if err != nil {
		tb.Fatalf("/stats: %v", err)
	}
	return s
}

// ReadStats reads the worker's /stats.
func (w *Worker) ReadStats() (consumer.Stats, error) {
	var s consumer.Stats
	resp, err := statusClient.Get("http://" + w.HTTPAddr + "/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
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
