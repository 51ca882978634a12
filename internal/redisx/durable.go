package redisx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// ErrNotReplicated is returned for a write Redis applied but fewer replicas
// than asked acknowledged within the wait (bus.ErrNotReplicated).
var ErrNotReplicated = errors.New("mycelium: not replicated")

// NotReplicatedError says how many replicas acknowledged a write. It
// wraps ErrNotReplicated.
type NotReplicatedError struct {
	Want, Got int
	Timeout   time.Duration
}

func (e *NotReplicatedError) Error() string {
	return fmt.Sprintf("%v: written, but acknowledged by %d of %d replicas within %v (a failover now may lose it)", ErrNotReplicated, e.Got, e.Want, e.Timeout)
}

// Unwrap returns ErrNotReplicated.
func (e *NotReplicatedError) Unwrap() error { return ErrNotReplicated }

// Durability asks each write to wait for replicas: WAIT Replicas Timeout
// after it, on the same connection.
type Durability struct {
	Replicas int
	Timeout  time.Duration
}

// AddBatchDurable writes adds like AddBatch (no acks), then waits until
// d.Replicas replicas acknowledged them or d.Timeout passed (WAIT, sent in
// the same pipeline, so it covers exactly the writes before it on that
// connection). On Redis Cluster the adds go in one pipeline per hash slot,
// each followed by its own WAIT (a master answers for its own replicas),
// concurrently. An add whose WAIT fell short gets its id and an error
// wrapping ErrNotReplicated (*NotReplicatedError).
func AddBatchDurable(ctx context.Context, c rueidis.Client, adds []Add, d Durability, out []Result) []Result {
	base := len(out)
	for range adds {
		out = append(out, Result{})
	}
	res := out[base:]
	var groups [][]int
	if c.Mode() == rueidis.ClientModeCluster {
		index := map[uint16]int{}
		for i := range adds {
			cmd := adds[i].cmd(c) // built once to learn its slot (rueidis has no slot function)
			slot := cmd.Slot()
			k, ok := index[slot]
			if !ok {
				k = len(groups)
				index[slot] = k
				groups = append(groups, nil)
			}
			groups[k] = append(groups[k], i)
		}
	} else {
		g := make([]int, len(adds))
		for i := range g {
			g[i] = i
		}
		groups = [][]int{g}
	}
	ms := strconv.FormatInt(max(d.Timeout.Milliseconds(), 1), 10)
	run := func(g []int) {
		cmds := make(rueidis.Commands, 0, len(g)+1)
		for _, i := range g {
			cmds = append(cmds, adds[i].cmd(c))
		}
		cmds = append(cmds, c.B().Arbitrary("WAIT").Args(strconv.Itoa(d.Replicas), ms).Build())
		r := c.DoMulti(ctx, cmds...)
		got, werr := r[len(g)].AsInt64()
		for k, i := range g {
			id, err := r[k].ToString()
			switch {
			case err != nil:
				id = ""
			case werr != nil:
				err = fmt.Errorf("redis: WAIT: %w", werr)
			case got < int64(d.Replicas):
				err = &NotReplicatedError{Want: d.Replicas, Got: int(got), Timeout: d.Timeout}
			}
			res[i] = Result{ID: id, Err: err}
		}
	}
	if len(groups) == 1 {
		run(groups[0])
		return out
	}
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Go(func() { run(g) })
	}
	wg.Wait()
	return out
}
