package redisx

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// ClusterNode is one node of a Redis Cluster as CLUSTER NODES lists it.
type ClusterNode struct {
	ID, Addr   string
	Flags      string // "master", "slave", "myself,master", "master,fail"…
	Master     bool
	MasterAddr string // a replica's master ("" for a master)
	Slots      [][2]int
}

// Serves reports whether the node serves slot.
func (n ClusterNode) Serves(slot int) bool {
	for _, r := range n.Slots {
		if slot >= r[0] && slot <= r[1] {
			return true
		}
	}
	return false
}

// ClusterNodes reads CLUSTER NODES from one node of a cluster client.
func ClusterNodes(ctx context.Context, c rueidis.Client) ([]ClusterNode, error) {
	if c.Mode() != rueidis.ClientModeCluster {
		return nil, fmt.Errorf("redisx: not a Redis Cluster client (%s)", c.Mode())
	}
	out, err := c.Do(ctx, c.B().ClusterNodes().Build()).ToString()
	if err != nil {
		return nil, err
	}
	return parseClusterNodes(out)
}

// parseClusterNodes parses CLUSTER NODES ("<id> <ip:port@cport[,host]>
// <flags> <master> <ping> <pong> <epoch> <link> <slot>…"); migrating
// slots ("[…]") are skipped.
func parseClusterNodes(s string) ([]ClusterNode, error) {
	var nodes []ClusterNode
	byID := map[string]string{}
	var masters []string // master id per node, resolved below
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 8 {
			return nil, fmt.Errorf("redis: CLUSTER NODES line %q: want 8 fields at least", clipValue(line))
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := ClusterNode{ID: f[0], Addr: addr, Flags: f[2], Master: strings.Contains(f[2], "master")}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue
			}
			lo, hi, found := strings.Cut(r, "-")
			a, err1 := strconv.Atoi(lo)
			b := a
			var err2 error
			if found {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil || a < 0 || b > 16383 || a > b {
				return nil, fmt.Errorf("redis: CLUSTER NODES slot range %q", clipValue(r))
			}
			n.Slots = append(n.Slots, [2]int{a, b})
		}
		byID[n.ID] = n.Addr
		masters = append(masters, f[3])
		nodes = append(nodes, n)
	}
	for i := range nodes {
		if m := masters[i]; m != "-" {
			nodes[i].MasterAddr = byID[m]
		}
	}
	return nodes, nil
}

// KeySlot returns the hash slot of key (CLUSTER KEYSLOT).
func KeySlot(ctx context.Context, c rueidis.Client, key string) (int, error) {
	n, err := c.Do(ctx, c.B().ClusterKeyslot().Key(key).Build()).AsInt64()
	return int(n), err
}

// FailoverTo asks the replica n (a client of that node alone) to take
// over from its master (CLUSTER FAILOVER: the master stops writes until
// the replica caught up, so nothing is lost).
func FailoverTo(ctx context.Context, n rueidis.Client) error {
	return n.Do(ctx, n.B().ClusterFailover().Build()).Error()
}

// ShutdownNode stops the node n (a client of that node alone) at once,
// without saving and without waiting for its replicas (SHUTDOWN NOSAVE NOW
// FORCE): as a crash does, it loses what its replicas had not received.
// The connection closing is the expected answer.
func ShutdownNode(ctx context.Context, n rueidis.Client) error {
	err := n.Do(ctx, n.B().Shutdown().Nosave().Now().Force().Build()).Error()
	if err != nil && IsConnErr(err) {
		return nil
	}
	return err
}

// ClusterEnabled reports whether the server c reaches is a Redis Cluster
// node (INFO cluster: cluster_enabled:1). Any failure (a user without
// INFO, a server that does not know the section) reports false.
func ClusterEnabled(ctx context.Context, c rueidis.Client) bool {
	info, err := c.Do(ctx, c.B().Info().Section("cluster").Build()).ToString()
	return err == nil && strings.Contains(info, "cluster_enabled:1")
}
