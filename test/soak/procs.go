package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/egos/mycelium/consumer"
)

// ProcSample is one process's resources at one moment.
type ProcSample struct {
	Role       string `json:"role"` // "caller" (this process: producer and HTTP backend) or a worker's role
	Pid        int    `json:"pid"`
	RSS        uint64 `json:"rss_bytes"`
	HeapLive   uint64 `json:"heap_live_bytes"` // the live heap marked by the last GC
	Goroutines int    `json:"goroutines"`
	FDs        int    `json:"fds"`
	OK         bool   `json:"ok"` // false: it could not be read (a worker being replaced)
}

// proc is one bus-worker process.
type proc struct {
	cmd  *exec.Cmd
	name string
	addr string // its /readyz, /stats, /metrics
	log  *os.File
	done chan struct{}
	err  error // its exit, once done is closed
}

// startProc runs `bin serve --http-addr <free> --name name args...`,
// logging to dir/name.log, and waits until /readyz answers.
func startProc(ctx context.Context, bin, dir, name string, args []string) (*proc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, addr: addr, log: log, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"serve", "--http-addr", addr, "--name", name}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		log.Close()
		close(p.done)
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case <-p.done:
			if p.err == nil {
				return nil, fmt.Errorf("%s exited before it was ready (see %s)", name, log.Name())
			}
			return nil, fmt.Errorf("%s exited before it was ready: %w (see %s)", name, p.err, log.Name())
		case <-ctx.Done():
			p.kill()
			return nil, fmt.Errorf("%s not ready within 30s (see %s)", name, log.Name())
		case <-tick.C: // polling a child's HTTP port: there is nothing to wait on
		}
	}
}

// terminate sends SIGTERM and waits for the exit (a graceful drain).
func (p *proc) terminate(within time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(within):
		p.kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM", p.name, within)
	}
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

var httpc = &http.Client{Timeout: 2 * time.Second}

// stats reads the worker's /stats.
func (p *proc) stats() (consumer.Stats, error) {
	var s consumer.Stats
	resp, err := httpc.Get("http://" + p.addr + "/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// sample reads the process's RSS and descriptors from /proc and its live
// heap and goroutines from its /metrics.
func (p *proc) sample(role string) ProcSample {
	s := ProcSample{Role: role, Pid: p.cmd.Process.Pid}
	var err error
	if s.RSS, s.FDs, err = procResources(s.Pid); err != nil {
		return s
	}
	resp, err := httpc.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return s
	}
	defer resp.Body.Close()
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case "go_gc_heap_live_bytes":
			f, _ := strconv.ParseFloat(val, 64)
			s.HeapLive, found = uint64(f), found+1
		case "go_goroutines":
			f, _ := strconv.ParseFloat(val, 64)
			s.Goroutines, found = int(f), found+1
		}
	}
	s.OK = sc.Err() == nil && found == 2
	return s
}

// selfSample is this process's resources.
func selfSample() ProcSample {
	s := ProcSample{Role: "caller", Pid: os.Getpid(), Goroutines: runtime.NumGoroutine()}
	m := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(m)
	if m[0].Value.Kind() == metrics.KindUint64 {
		s.HeapLive = m[0].Value.Uint64()
	}
	var err error
	s.RSS, s.FDs, err = procResources(s.Pid)
	s.OK = err == nil
	return s
}

// procResources reads a process's resident set (bytes) and open file
// descriptors from /proc.
func procResources(pid int) (rss uint64, fds int, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("VmRSS %q: %w", v, err)
			}
			rss = kb * 1024
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS in /proc/pid/status")
	}
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return rss, len(ents), err
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// role is one worker's place in the soak: its arguments and its current
// process, replaced on restarts and kills.
type role struct {
	name, bin, dir string
	args           []string

	mu  sync.Mutex
	cur *proc
	gen int
}

func (r *role) current() *proc { r.mu.Lock(); defer r.mu.Unlock(); return r.cur }

// start runs the role's next process (generation gen+1).
func (r *role) start(ctx context.Context) (*proc, error) {
	r.mu.Lock()
	r.gen++
	name := fmt.Sprintf("%s-%d", r.name, r.gen)
	r.mu.Unlock()
	return startProc(ctx, r.bin, r.dir, name, r.args)
}

// swap makes p the role's current process and returns the one it replaces.
func (r *role) swap(p *proc) *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.cur
	r.cur = p
	return old
}
