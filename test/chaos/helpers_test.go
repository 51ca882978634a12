package chaos

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/producer"
	"github.com/egos/mycelium/test/redistest"
)

// long reports whether the long versions were asked for (make chaos).
func long() bool { return os.Getenv("MYCELIUM_CHAOS_LONG") == "1" }

// scale picks the short or the long figure.
func scale[T any](short, lng T) T {
	if long() {
		return lng
	}
	return short
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type worker struct {
	cmd  *exec.Cmd
	logs *logBuffer
	http string
}

// startWorker runs `bus-worker serve` against url and waits until ready.
func startWorker(t *testing.T, url string, args ...string) *worker {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	w := &worker{logs: &logBuffer{}, http: addr}
	w.cmd = exec.Command(redistest.Binary(t, "bus-worker"), append([]string{"serve", "--redis", url, "--http-addr", addr}, args...)...)
	w.cmd.Stdout, w.cmd.Stderr = w.logs, w.logs
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if w.cmd.ProcessState == nil {
			_ = w.cmd.Process.Kill()
			_ = w.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("worker %s logs:\n%s", addr, w.logs)
		}
	})
	waitFor(t, 20*time.Second, "bus-worker ready", func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return w
}

func (w *worker) kill() {
	_ = w.cmd.Process.Kill()
	_ = w.cmd.Wait()
}

func (w *worker) stop(t *testing.T) {
	t.Helper()
	_ = w.cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- w.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("bus-worker exit after SIGINT = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("bus-worker did not stop within 30s of SIGINT")
	}
}

func newProducer(t *testing.T, c rueidis.Client, cfg producer.Config) *producer.Producer {
	t.Helper()
	p, err := producer.New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond) // polling external processes with a deadline
	}
}
