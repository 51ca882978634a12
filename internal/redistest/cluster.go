package redistest

import (
	"bufio"
	"bytes"
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

// Cluster is a Redis Cluster of 3 masters and 3 replicas on loopback,
// started by test/redis-cluster.sh and owned by one test.
type Cluster struct {
	URL   string // seed URL: redis://h:p1,h:p2,h:p3
	Dir   string
	Ports []int
	tb    testing.TB
}

// StartCluster starts a cluster (about 2.5 s) and stops it when the test
// ends. A missing redis-server skips the test, or fails it under RequireEnv.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	dir, url, ports := startRig(tb, "redis-cluster.sh", 20000, 270)
	return &Cluster{URL: url, Dir: dir, Ports: ports, tb: tb}
}

// Client returns a bus client of the cluster, closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *bus.Client {
	tb.Helper()
	return Connect(tb, bus.Config{URL: c.URL})
}

// Node is one node of the cluster as CLUSTER NODES lists it.
type Node struct {
	ID     string
	Port   int
	Master bool
	Failed bool
	Slots  string // "0-5460", masters only
}

// Nodes lists the cluster's nodes as the node on port sees them.
func (c *Cluster) Nodes(port int) ([]Node, error) {
	out, err := exec.Command("redis-cli", "-p", strconv.Itoa(port), "cluster", "nodes").Output()
	if err != nil {
		return nil, err
	}
	var nodes []Node
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		_, ps, _ := strings.Cut(addr, ":")
		p, _ := strconv.Atoi(ps)
		n := Node{ID: f[0], Port: p, Master: strings.Contains(f[2], "master"), Failed: strings.Contains(f[2], "fail")}
		if n.Master && len(f) > 8 {
			n.Slots = strings.Join(f[8:], " ")
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// MasterOf returns the port of the master serving key, as the node on
// port sees it.
func (c *Cluster) MasterOf(key string) (int, error) {
	out, err := exec.Command("redis-cli", "-p", strconv.Itoa(c.Ports[0]), "cluster", "keyslot", key).Output()
	if err != nil {
		return 0, err
	}
	slot, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, err
	}
	for _, p := range c.Ports {
		nodes, err := c.Nodes(p)
		if err != nil {
			continue
		}
		for _, n := range nodes {
			if !n.Master || n.Failed {
				continue
			}
			for _, r := range strings.Fields(n.Slots) {
				lo, hi, found := strings.Cut(r, "-")
				a, _ := strconv.Atoi(lo)
				b := a
				if found {
					b, _ = strconv.Atoi(hi)
				}
				if slot >= a && slot <= b {
					return n.Port, nil
				}
			}
		}
		return 0, fmt.Errorf("no master serves slot %d", slot)
	}
	return 0, fmt.Errorf("no node answers")
}

// Kill sends SIGKILL to the node on port, as a crash would.
func (c *Cluster) Kill(port int) {
	c.tb.Helper()
	b, err := os.ReadFile(filepath.Join(c.Dir, strconv.Itoa(port)+".pid"))
	if err != nil {
		c.tb.Fatalf("pid of node %d: %v", port, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		c.tb.Fatalf("kill node %d: %v", port, err)
	}
}

// WaitHealthy waits until every live node reports cluster_state:ok and
// every slot has a live master: no node in except (killed) serves slots
// in any live node's view. Right after a kill the live nodes still report
// ok until cluster-node-timeout passes; the slot check waits for the
// replica's promotion.
func (c *Cluster) WaitHealthy(ctx context.Context, except ...int) error {
	for ctx.Err() == nil {
		ok := true
		for _, p := range c.Ports {
			if contains(except, p) {
				continue
			}
			out, err := exec.Command("redis-cli", "-p", strconv.Itoa(p), "cluster", "info").Output()
			if err != nil || !bytes.Contains(out, []byte("cluster_state:ok")) {
				ok = false
				break
			}
			if ok = c.servesNone(p, except); !ok {
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return ctx.Err()
}

// servesNone reports whether, as the node on port sees the cluster, no
// node in ports is a master serving slots.
func (c *Cluster) servesNone(port int, ports []int) bool {
	if len(ports) == 0 {
		return true
	}
	nodes, err := c.Nodes(port)
	if err != nil {
		return false
	}
	for _, n := range nodes {
		if contains(ports, n.Port) && n.Master && n.Slots != "" {
			return false
		}
	}
	return true
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
