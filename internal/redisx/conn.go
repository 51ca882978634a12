package redisx

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Ping checks that Redis answers. On Redis Cluster, one node answering is
// enough (a master failing over leaves the others usable): it fails only
// when none does, with the last error.
func Ping(ctx context.Context, c rueidis.Client) error {
	err := c.Do(ctx, c.B().Ping().Build()).Error()
	if err == nil || c.Mode() != rueidis.ClientModeCluster {
		return err
	}
	for _, n := range c.Nodes() {
		if e := n.Do(ctx, n.B().Ping().Build()).Error(); e == nil {
			return nil
		}
	}
	return err
}

// Server is what INFO says about the server.
type Server struct {
	Addr    string        // the node's address, from ServerInfos on a cluster
	Version string        // redis_version; "" when not reported
	CPU     time.Duration // used_cpu_user + used_cpu_sys since it started
	CPUOK   bool          // both CPU fields were reported (miniredis has none)
	// Memory is used_memory and MaxMemory maxmemory (0: no limit), in
	// bytes; Clients is connected_clients; Uptime is uptime_in_seconds.
	// All zero when the server does not report them.
	Memory, MaxMemory int64
	Clients           int64
	Uptime            time.Duration
	Role              string // role (master, slave); "" when not reported
}

// ServerInfo reads INFO server, cpu, memory, clients and replication in
// one round trip. A section
// the server refuses (miniredis knows neither) leaves its fields zero; only
// a connection failure is an error.
func ServerInfo(ctx context.Context, c rueidis.Client) (Server, error) {
	res := c.DoMulti(ctx, c.B().Info().Section("server").Build(), c.B().Info().Section("cpu").Build(),
		c.B().Info().Section("memory").Build(), c.B().Info().Section("clients").Build(), c.B().Info().Section("replication").Build())
	var s Server
	num := func(info, key string) int64 {
		n, err := strconv.ParseInt(infoField(info, key), 10, 64)
		if err != nil || n < 0 {
			return 0
		}
		return n
	}
	for i, r := range res {
		info, err := r.ToString()
		switch {
		case IsConnErr(err):
			return Server{}, err
		case err != nil:
			continue
		}
		switch i {
		case 0:
			s.Version = infoField(info, "redis_version")
			s.Uptime = time.Duration(num(info, "uptime_in_seconds")) * time.Second
		case 1:
			s.CPU, s.CPUOK = parseCPU(info)
		case 2:
			s.Memory, s.MaxMemory = num(info, "used_memory"), num(info, "maxmemory")
		case 3:
			s.Clients = num(info, "connected_clients")
		case 4:
			s.Role = infoField(info, "role")
		}
	}
	return s, nil
}

// ServerInfos is ServerInfo of each master (see EachMaster), with its
// address ("" when c is not a cluster client).
func ServerInfos(ctx context.Context, c rueidis.Client) ([]Server, error) {
	var out []Server
	err := EachMaster(ctx, c, func(addr string, n rueidis.Client) error {
		s, err := ServerInfo(ctx, n)
		if err != nil {
			return err
		}
		s.Addr = addr
		out = append(out, s)
		return nil
	})
	return out, err
}

// infoField returns the value of key in an INFO reply, "" when absent.
func infoField(info, key string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+":"); ok {
			return v
		}
	}
	return ""
}

// parseCPU sums used_cpu_user and used_cpu_sys (seconds) of an INFO cpu
// reply; ok is false unless both are present and numbers.
func parseCPU(info string) (time.Duration, bool) {
	var total float64
	for _, k := range []string{"used_cpu_user", "used_cpu_sys"} {
		f, err := strconv.ParseFloat(infoField(info, k), 64)
		if err != nil {
			return 0, false
		}
		total += f
	}
	return time.Duration(total * float64(time.Second)), true
}

// Detach returns a context without ctx's deadline that is cancelled when
// ctx ends, for commands sent on behalf of a caller. rueidis runs a command
// whose ctx has a deadline synchronously on an idle connection and closes
// the connection when the deadline passes (every other caller then waits
// for a reconnection, up to the dial timeout); a command whose ctx is only
// cancelled waits in the queue and is abandoned, the connection kept.
func Detach(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok {
		return context.WithCancel(ctx)
	}
	d, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	return d, func() {
		stop()
		cancel()
	}
}

// EachMaster calls fn with a client of each master of a Redis Cluster, in
// address order (replicas hold copies of the same keys), or with c itself
// when c is not a cluster client. Keyless commands a node answers about
// itself (SCAN, INFO) go through it.
func EachMaster(ctx context.Context, c rueidis.Client, fn func(addr string, node rueidis.Client) error) error {
	if c.Mode() != rueidis.ClientModeCluster {
		return fn("", c)
	}
	nodes := c.Nodes()
	addrs := slices.Sorted(maps.Keys(nodes))
	for _, addr := range addrs {
		n := nodes[addr]
		role, err := n.Do(ctx, n.B().Role().Build()).ToArray()
		if err != nil {
			return fmt.Errorf("redis: ROLE of %s: %w", addr, err)
		}
		if len(role) == 0 {
			continue
		}
		if r, _ := role[0].ToString(); r != "master" {
			continue
		}
		if err := fn(addr, n); err != nil {
			return err
		}
	}
	return nil
}

// DeleteEach deletes each key with its own DEL, in one pipelined round
// trip (the keys may live in different hash slots).
func DeleteEach(ctx context.Context, c rueidis.Client, keys ...string) error {
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = c.B().Del().Key(k).Build()
	}
	for _, r := range c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes keys and returns how many existed. Keys of one call must
// share a hash slot (Redis Cluster).
func Delete(ctx context.Context, c rueidis.Client, keys ...string) (int64, error) {
	return c.Do(ctx, c.B().Del().Key(keys...).Build()).AsInt64()
}
