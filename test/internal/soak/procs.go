package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/egos/mycelium/internal/redistest"
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

// proc is one bus-worker process of a role, logging to its own file.
type proc struct {
	*redistest.Worker
	name string
	log  *os.File
}

// startProc runs `bin serve --name name args...`, logging to dir/name.log,
// and waits until it is ready.
func startProc(ctx context.Context, bin, dir, name string, args []string) (*proc, error) {
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	w, err := redistest.Launch(ctx, bin, log, append([]string{"--name", name}, args...)...)
	if err != nil {
		log.Close()
		return nil, fmt.Errorf("%s: %w (see %s)", name, err, log.Name())
	}
	return &proc{Worker: w, name: name, log: log}, nil
}

// terminate sends SIGTERM and waits for the exit (a graceful drain).
func (p *proc) terminate(within time.Duration) error {
	defer p.log.Close()
	return p.Terminate(within)
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	p.Kill()
	p.log.Close()
}

var httpc = &http.Client{Timeout: 2 * time.Second}

// sample reads the process's RSS and descriptors from /proc and its live
// heap and goroutines from its /metrics.
func (p *proc) sample(role string) ProcSample {
	s := ProcSample{Role: role, Pid: p.Cmd.Process.Pid}
	var err error
	if s.RSS, s.FDs, err = procResources(s.Pid); err != nil {
		return s
	}
	resp, err := httpc.Get("http://" + p.HTTPAddr + "/metrics")
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
