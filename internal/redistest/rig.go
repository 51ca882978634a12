package redistest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// startRig runs test/<script> start DIR BASE (a redis-cluster.sh or
// redis-sentinel.sh rig) with env added, on a random base port among lo,
// lo+10 … lo+10*(spread-1) (another package's rig may take the ports
// between the script's check and its bind: three tries), stops it when the test ends, and returns its
// directory, its URL (the script's last line) and the ports it wrote. A
// missing redis-server skips the test, or fails it under RequireEnv.
func startRig(tb testing.TB, script string, lo, spread int, env ...string) (dir, url string, ports []int) {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("redis-server not found: %v", err)
		}
		tb.Skip("redis-server not found")
	}
	root, err := moduleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(root, "test", script)
	var lastErr error
	for range 3 {
		dir, err := os.MkdirTemp("", "mycelium-rig-")
		if err != nil {
			tb.Fatal(err)
		}
		cmd := exec.Command(path, "start", dir, strconv.Itoa(lo+10*rand.IntN(spread)))
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			lastErr = fmt.Errorf("%w: %s", err, out)
			_ = exec.Command(path, "stop", dir).Run()
			continue
		}
		tb.Cleanup(func() { _ = exec.Command(path, "stop", dir).Run() })
		b, _ := os.ReadFile(filepath.Join(dir, "ports"))
		for _, f := range strings.Fields(string(b)) {
			p, _ := strconv.Atoi(f)
			ports = append(ports, p)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return dir, strings.TrimSpace(lines[len(lines)-1]), ports
	}
	tb.Fatalf("start %s: %v", script, lastErr)
	return "", "", nil
}
