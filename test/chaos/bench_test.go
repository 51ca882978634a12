package chaos

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/internal/redistest"
)

// TestChaosBenchSurvivesRedisRestart: bus-bench driving a bus-worker while
// Redis is SIGKILLed and restarted finishes, counts every request as ok or
// error, and prints its JSON line. It used to panic in its error tally
// ("compare and swap of inconsistently typed value": a connection error,
// then an error reply of another type).
func TestChaosBenchSurvivesRedisRestart(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "everysec")
	w := startWorker(t, srv.URL, "--topic", "bench", "--concurrency", "32", "--breaker=false", "--claim-idle", "2s")
	const callers = 16
	bench := exec.Command(redistest.Binary(t, "bus-bench"), "--redis", srv.URL, "--scenario", "rpc", "--no-workers",
		"--topic", "bench", "--concurrency", "16", "--duration", scale("3s", "10s"), "--timeout", "1s", "--json")
	var stdout, stderr bytes.Buffer
	bench.Stdout, bench.Stderr = &stdout, &stderr
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- bench.Wait() }()
	t.Cleanup(func() {
		if bench.ProcessState == nil {
			_ = bench.Process.Kill()
			<-done
		}
	})

	// Past the warm-up (2 x callers requests), into the measured run.
	waitFor(t, 30*time.Second, "bus-bench measuring", func() bool { return w.Stats(t).Handled > 2*callers+200 })
	srv.Kill()
	time.Sleep(300 * time.Millisecond) // the outage
	srv.Restart()

	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("bus-bench did not finish within 2 minutes of the restart; stderr:\n%s", stderr.String())
	}
	var ee *exec.ExitError
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != 1) { // 1: the run had errors
		t.Fatalf("bus-bench exit = %v, want 0 or 1; stderr:\n%s", err, stderr.String())
	}
	if strings.Contains(stderr.String(), "panic") {
		t.Fatalf("bus-bench panicked:\n%s", stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var res struct {
		Requests int `json:"requests"`
		OK       int `json:"ok"`
		Errors   int `json:"errors"`
	}
	if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &res) != nil {
		t.Fatalf("bus-bench stdout = %q, want exactly one JSON line", stdout.String())
	}
	if res.OK == 0 || res.Requests != res.OK+res.Errors {
		t.Fatalf("bus-bench result %s: want ok > 0 and requests = ok + errors", lines[0])
	}
	if (res.Errors > 0) != (err != nil) {
		t.Fatalf("bus-bench exit %v with %d errors: the exit status must say whether there were errors", err, res.Errors)
	}
	first, _, _ := strings.Cut(stderr.String(), "\n")
	t.Logf("bus-bench across a Redis restart: %d requests, %d ok, %d errors (first: %s)", res.Requests, res.OK, res.Errors, first)
}
