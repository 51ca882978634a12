// Package redistest starts throwaway Redis servers for tests: a real
// redis-server process on a free loopback port (integration tests) or an
// in-process miniredis (unit tests). Only _test files import it; nothing of
// it is compiled into the library.
package redistest

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
)

// RequireEnv names the variable that, set to 1 (as `make test` does), turns a missing
// redis-server into a test failure instead of a skip.
const RequireEnv = "MYCELIUM_REQUIRE_REDIS"

// SecureEnv names the variable that, set to 1, makes Start run the server
// with TLS only and mutual authentication, and create the ACL users of
// each role (see RoleClient): the integration suite's secure mode.
const SecureEnv = "MYCELIUM_TEST_SECURE"

// Server is a redis-server process owned by one test.
type Server struct {
	Addr string
	URL  string
	Dir  string
	Port int
	args []string
	cmd  *exec.Cmd
	tb   testing.TB
	TLS  *TLSFiles // set by StartTLS: the server listens with TLS only
}

// Start runs redis-server on a free loopback port with persistence off
// (extra args are appended, e.g. "--appendonly", "yes") and stops it when
// the test ends.
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	if Secure() {
		return startSecure(tb, extra...)
	}
	return launch(tb, nil, extra)
}

// launch starts redis-server (with TLS only when f is not nil) on a free
// loopback port, trying a few ports, and stops it when the test ends.
func launch(tb testing.TB, f *TLSFiles, extra []string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("redis-server not found on PATH and %s=1: install it (apt-get install redis-server)", RequireEnv)
		}
		tb.Skip("redis-server not on PATH; `make test` installs it")
	}
	s := &Server{Dir: tb.TempDir(), tb: tb, TLS: f}
	s.args = append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.Dir, "--daemonize", "no", "--loglevel", "warning"}, extra...)
	for attempt := 0; ; attempt++ {
		s.Port = freePort(tb)
		if err := s.start(bin); err == nil {
			break
		} else if attempt == 4 {
			tb.Fatalf("start redis-server: %v", err)
		}
	}
	s.Addr = "127.0.0.1:" + strconv.Itoa(s.Port)
	s.URL = "redis://" + s.Addr
	if f != nil {
		s.URL = "rediss://" + s.Addr
	}
	tb.Cleanup(s.Stop)
	return s
}

func (s *Server) start(bin string) error {
	args := append([]string{"--port", strconv.Itoa(s.Port)}, s.args...)
	if s.TLS != nil {
		args = append([]string{"--port", "0", "--tls-port", strconv.Itoa(s.Port)}, s.args...)
	}
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(filepath.Join(s.Dir, fmt.Sprintf("redis-%d.log", time.Now().UnixNano())))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := s.dial(); err == nil {
			ok := ping(c)
			c.Close()
			if ok {
				return nil
			}
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling a child process's port: there is nothing to wait on
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	b, _ := os.ReadFile(logf.Name())
	return fmt.Errorf("redis-server on port %d did not answer: %s", s.Port, strings.TrimSpace(string(b)))
}

// dial opens a connection to the server for the readiness check: TCP, or
// TLS as the test's client (its CA and client certificate).
func (s *Server) dial() (net.Conn, error) {
	addr := "127.0.0.1:" + strconv.Itoa(s.Port)
	if s.TLS == nil {
		return net.DialTimeout("tcp", addr, 100*time.Millisecond)
	}
	return tls.DialWithDialer(&net.Dialer{Timeout: 100 * time.Millisecond}, "tcp", addr, s.TLS.ClientConfig())
}

func ping(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	// -NOAUTH: a server started with --requirepass answers too.
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH"))
}

// Stop kills the server (idempotent).
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Shutdown sends SIGTERM, as a service manager's restart would: Redis
// writes its append-only file and exits. It waits up to 30s for the exit;
// Restart starts the server again.
func (s *Server) Shutdown() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		s.cmd = nil
		return err
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		kerr := <-done
		s.cmd = nil
		return fmt.Errorf("redis-server did not exit within 30s of SIGTERM (killed: %w)", kerr)
	}
}

// Pid is the server process's id (0 when stopped).
func (s *Server) Pid() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Kill sends SIGKILL, as a crash would.
func (s *Server) Kill() { s.Stop() }

// Restart starts the server again on the same port with the same args
// (and data directory, so an append-only file is replayed).
func (s *Server) Restart() {
	s.tb.Helper()
	if err := s.Relaunch(); err != nil {
		s.tb.Fatalf("restart redis-server: %v", err)
	}
}

// Relaunch is Restart returning its error instead of failing the test
// (for goroutines other than the test's). A server still running is killed
// first: started beside it, the new one could not bind the port, the old
// one would answer in its place (no restart at all) and outlive the test.
func (s *Server) Relaunch() error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return err
	}
	s.Stop()
	return s.start(bin)
}

// Signal sends sig (for example syscall.SIGSTOP) to the server.
func (s *Server) Signal(sig syscall.Signal) {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Client returns a bus client of the server (as in production), closed when
// the test ends.
func (s *Server) Client(tb testing.TB) *bus.Client {
	tb.Helper()
	return Connect(tb, s.Config())
}

// Config is the bus.Config of the server's default (all-powerful) user:
// its URL, and over TLS the test CA and client certificate.
func (s *Server) Config() bus.Config {
	cfg := bus.Config{URL: s.URL}
	if s.TLS != nil {
		cfg.TLS = s.TLS.ClientConfig()
	}
	return cfg
}

// Mini starts an in-process miniredis and returns it with a bus client of
// it, both closed when the test ends.
func Mini(tb testing.TB) (*miniredis.Miniredis, *bus.Client) {
	tb.Helper()
	m := miniredis.RunT(tb)
	return m, Connect(tb, bus.Config{URL: "redis://" + m.Addr()})
}

// Connect returns a bus client for cfg, closed when the test ends.
func Connect(tb testing.TB, cfg bus.Config) *bus.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := bus.Connect(ctx, cfg)
	if err != nil {
		tb.Fatalf("bus.Connect(%s) = %v", cfg.URL, err)
	}
	tb.Cleanup(c.Close)
	return c
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
