package redisx

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/rueidis"
)

// DoBatch runs cmds, then tail, as one pipelined round trip and returns one
// result per command (cmds first, in their order), like rueidis's DoMulti.
// cmds are single-key commands with the key as their first argument (XADD);
// two or more to the same key are wrapped in MULTI/EXEC, so Redis runs them
// as one unit. tail runs after them, outside any transaction.
//
// Why: Redis serves a client blocked on a stream (XREAD, XREADGROUP with
// BLOCK) right after each top-level command that feeds it. A pipelined
// batch of XADDs to a stream with a blocked reader hands that reader the
// first entry alone; the rest wait for its next read, a full round trip
// later, and the lone entry goes on through every later stage alone. Under
// EXEC the reader is served once, after the last XADD, with all of them
// (test/batch_test.go shows it; docs/performance.md what it changed).
//
// A transaction per key, not one for the whole batch: a command refused
// when queued (OOM, an ACL that denies the key) aborts its transaction, and
// each command of it then gets its own error or the EXECABORT; a refusal
// tied to one stream must not fail the writes to the others. Commands that
// fail while running (WRONGTYPE) fail alone, as in a plain pipeline. If
// MULTI itself is refused (an ACL user without @transaction), the commands
// run one by one as in a plain pipeline and their replies are the results.
// Connection errors come back for every command.
//
// rueidis recycles each command that got a reply, so commands must not be
// sent again after DoBatch, even when some failed: rebuild them to retry.
func DoBatch(ctx context.Context, c rueidis.Client, cmds rueidis.Commands, tail ...rueidis.Completed) []rueidis.RedisResult {
	_, out := doBatch(ctx, c, nil, cmds, tail)
	return out
}

// doBatch is DoBatch with head: commands sent first, outside any
// transaction, whose results come back apart.
func doBatch(ctx context.Context, c rueidis.Client, head, cmds rueidis.Commands, tail []rueidis.Completed) (headRes, out []rueidis.RedisResult) {
	if len(cmds) < 2 && len(tail) == 0 && len(head) == 0 {
		return nil, c.DoMulti(ctx, cmds...)
	}
	groups := byKey(cmds)
	all := make(rueidis.Commands, 0, len(head)+len(cmds)+2*len(groups)+len(tail))
	all = append(all, head...)
	for _, g := range groups {
		if len(g) == 1 {
			all = append(all, cmds[g[0]])
			continue
		}
		all = append(all, c.B().Multi().Build())
		for _, i := range g {
			all = append(all, cmds[i])
		}
		all = append(all, c.B().Exec().Build())
	}
	all = append(all, tail...)
	res := doMulti(ctx, c, all) // one result per command, always
	headRes, res = res[:len(head)], res[len(head):]

	out = make([]rueidis.RedisResult, len(cmds), len(cmds)+len(tail))
	at := 0 // position in res
	for _, g := range groups {
		if len(g) == 1 {
			out[g[0]] = res[at]
			at++
			continue
		}
		dst := out[g[0] : g[0]+len(g)] // in place when the group's commands are adjacent
		if g[len(g)-1]-g[0] != len(g)-1 {
			dst = make([]rueidis.RedisResult, len(g))
		}
		execResults(dst, res[at:at+len(g)+2])
		for k, i := range g {
			out[i] = dst[k]
		}
		at += len(g) + 2
	}
	return headRes, append(out, res[at:]...)
}

// doMulti sends all as one pipeline (c.DoMulti). On Redis Cluster, a
// pipeline that holds a transaction must not hold commands of other hash
// slots (rueidis refuses the mix): each transaction span of all (MULTI to
// EXEC, one slot) then goes as a pipeline of its own, concurrently with one
// pipeline of the other commands, which the cluster client splits by node.
// Results come back in all's order either way.
//
// What that changes on a cluster: the commands of different nodes (a
// reply and its request's XACK, say) are not ordered among themselves, as
// they never are across nodes; within one slot, order holds.
func doMulti(ctx context.Context, c rueidis.Client, all rueidis.Commands) []rueidis.RedisResult {
	if c.Mode() != rueidis.ClientModeCluster {
		return c.DoMulti(ctx, all...)
	}
	var spans [][2]int
	for i := 0; i < len(all); i++ {
		if !isWord(all[i], "MULTI") {
			continue
		}
		j := i + 1
		for j < len(all) && !isWord(all[j], "EXEC") {
			j++
		}
		spans = append(spans, [2]int{i, min(j+1, len(all))})
		i = j
	}
	if len(spans) == 0 || (len(spans) == 1 && spans[0] == [2]int{0, len(all)}) {
		return c.DoMulti(ctx, all...)
	}
	out := make([]rueidis.RedisResult, len(all))
	var plain rueidis.Commands
	var plainAt []int
	next := 0
	for _, sp := range spans {
		for i := next; i < sp[0]; i++ {
			plain, plainAt = append(plain, all[i]), append(plainAt, i)
		}
		next = sp[1]
	}
	for i := next; i < len(all); i++ {
		plain, plainAt = append(plain, all[i]), append(plainAt, i)
	}
	var wg sync.WaitGroup
	for _, sp := range spans[1:] {
		wg.Go(func() { copy(out[sp[0]:sp[1]], c.DoMulti(ctx, all[sp[0]:sp[1]]...)) })
	}
	if len(plain) > 0 {
		wg.Go(func() {
			for k, r := range c.DoMulti(ctx, plain...) {
				out[plainAt[k]] = r
			}
		})
	}
	sp := spans[0]
	copy(out[sp[0]:sp[1]], c.DoMulti(ctx, all[sp[0]:sp[1]]...))
	wg.Wait()
	return out
}

// isWord reports whether cmd is the one-word command w (MULTI, EXEC).
func isWord(cmd rueidis.Completed, w string) bool {
	args := cmd.Commands()
	return len(args) == 1 && args[0] == w
}

// byKey groups the indexes of cmds by key (the first argument), keys in
// order of first appearance and each group in command order. One key, the
// common case, costs no map.
func byKey(cmds rueidis.Commands) [][]int {
	if len(cmds) == 0 {
		return nil
	}
	key := func(i int) string {
		if args := cmds[i].Commands(); len(args) > 1 {
			return args[1]
		}
		return ""
	}
	first := key(0)
	same := true
	for i := 1; i < len(cmds) && same; i++ {
		same = key(i) == first
	}
	if same {
		g := make([]int, len(cmds))
		for i := range g {
			g[i] = i
		}
		return [][]int{g}
	}
	var groups [][]int
	index := make(map[string]int)
	for i := range cmds {
		k := key(i)
		gi, ok := index[k]
		if !ok {
			gi = len(groups)
			index[k] = gi
			groups = append(groups, nil)
		}
		groups[gi] = append(groups[gi], i)
	}
	return groups
}

// execResults maps res, the replies to MULTI, len(out) queued commands and
// EXEC, to one result per queued command in out.
func execResults(out, res []rueidis.RedisResult) {
	n := len(out)
	exec := res[n+1]
	if err := exec.NonRedisError(); err != nil {
		for i := range out {
			out[i] = rueidis.NewErrorResult(err) // whether EXEC ran is unknown
		}
		return
	}
	if err := res[0].Error(); err != nil {
		// MULTI refused: the commands ran one by one, outside a
		// transaction, and EXEC failed without one.
		copy(out, res[1:n+1])
		return
	}
	fail := func(err error) {
		for i := range out {
			// A queue-time refusal is more telling than EXECABORT.
			if qerr := res[i+1].Error(); qerr != nil && IsRedisReply(qerr) {
				out[i] = res[i+1]
			} else {
				out[i] = rueidis.NewErrorResult(err)
			}
		}
	}
	arr, err := exec.ToArray()
	switch {
	case rueidis.IsRedisNil(err):
		fail(errors.New("redis: transaction discarded (EXEC returned nil)"))
	case err != nil:
		fail(err)
	case len(arr) != n:
		fail(fmt.Errorf("redis: EXEC returned %d replies for %d commands", len(arr), n))
	default:
		for i := range arr {
			out[i] = rueidis.NewResult(arr[i], nil)
		}
	}
}
