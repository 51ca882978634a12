package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
)

// Sentinel is one master, one replica and three sentinels on loopback,
// started by test/redis-sentinel.sh and owned by one test.
type Sentinel struct {
	URL       string // redis://s1,s2,s3?master_set=mymaster
	Dir       string
	Master    int // the first master's port
	Replica   int
	Sentinels []int
	// Password is what the sentinels require ("" for none; see
	// StartSentinelAuth).
	Password string
	tb       testing.TB
}

// StartSentinel starts the setup (about 2.5 s) and stops it when the test
// ends. A missing redis-server skips the test, or fails it under RequireEnv.
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	return StartSentinelAuth(tb, "")
}

// StartSentinelAuth is StartSentinel with sentinels that require password
// (the data nodes require none).
func StartSentinelAuth(tb testing.TB, password string) *Sentinel {
	tb.Helper()
	dir, url, ports := startRig(tb, "redis-sentinel.sh", 10000, 900, "SENTINEL_PASSWORD="+password)
	if len(ports) != 5 {
		tb.Fatalf("redis-sentinel.sh wrote ports %v", ports)
	}
	return &Sentinel{URL: url, Dir: dir, Master: ports[0], Replica: ports[1], Sentinels: ports[2:], Password: password, tb: tb}
}

// Client returns a bus client that follows the master, closed when the
// test ends.
func (s *Sentinel) Client(tb testing.TB) *bus.Client {
	tb.Helper()
	return Connect(tb, bus.Config{URL: s.URL, SentinelPassword: s.Password})
}

// CurrentMaster asks the first answering sentinel for the master's port.
func (s *Sentinel) CurrentMaster() (int, error) {
	var lastErr error
	for _, p := range s.Sentinels {
		cmd := exec.Command("redis-cli", "-p", strconv.Itoa(p), "sentinel", "get-master-addr-by-name", "mymaster")
		cmd.Env = append(os.Environ(), "REDISCLI_AUTH="+s.Password)
		out, err := cmd.Output()
		if err != nil {
			lastErr = err
			continue
		}
		f := strings.Fields(string(out))
		if len(f) == 2 {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no sentinel names the master: %w", lastErr)
}

// Kill sends SIGKILL to the data node on port (master or replica).
func (s *Sentinel) Kill(port int) {
	s.tb.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir, strconv.Itoa(port)+".pid"))
	if err != nil {
		s.tb.Fatalf("pid of %d: %v", port, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		s.tb.Fatalf("kill %d: %v", port, err)
	}
}

// WaitPromoted waits until the sentinels name a master other than old and
// it answers as a master.
func (s *Sentinel) WaitPromoted(ctx context.Context, old int) error {
	for ctx.Err() == nil {
		if p, err := s.CurrentMaster(); err == nil && p != old {
			out, err := exec.Command("redis-cli", "-p", strconv.Itoa(p), "role").Output()
			if err == nil && strings.HasPrefix(strings.TrimSpace(string(out)), "master") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return ctx.Err()
}
