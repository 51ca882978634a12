package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/rueidis"
)

// DoBatch runs cmds, then tail, as one pipelined round trip and returns one
// result per command (cmds first), like rueidis's DoMulti. Two or more cmds
// are wrapped in MULTI/EXEC, so Redis runs them as one unit; tail runs
// after EXEC, outside the transaction.
//
// Why: Redis serves a client blocked on a stream (XREAD, XREADGROUP with
// BLOCK) right after each top-level command that feeds it. A pipelined
// batch of XADDs to a stream with a blocked reader hands that reader the
// first entry alone; the rest wait for its next read, a full round trip
// later, and the lone entry goes on through every later stage alone. Under
// EXEC the reader is served once, after the last XADD, with all of them.
// Measured with bus-bench rpc at 64 callers: without it, a third of all
// XREADGROUP and XREAD calls returned exactly one entry.
//
// A command refused when queued (OOM, for instance) aborts the whole
// transaction: each of cmds then gets that command's error or the
// EXECABORT. Commands that fail while running (WRONGTYPE) fail alone, as
// in a plain pipeline. Connection errors come back for every command.
//
// rueidis recycles each command that got a reply, so commands must not be
// sent again after DoBatch, even when some failed: rebuild them to retry.
func DoBatch(ctx context.Context, c rueidis.Client, cmds rueidis.Commands, tail ...rueidis.Completed) []rueidis.RedisResult {
	if len(cmds) < 2 && len(tail) == 0 {
		return c.DoMulti(ctx, cmds...)
	}
	all := make(rueidis.Commands, 0, len(cmds)+2+len(tail))
	if len(cmds) < 2 {
		return c.DoMulti(ctx, append(append(all, cmds...), tail...)...)
	}
	all = append(all, c.B().Multi().Build())
	all = append(all, cmds...)
	all = append(all, c.B().Exec().Build())
	all = append(all, tail...)
	res := c.DoMulti(ctx, all...) // one result per command, always
	out := make([]rueidis.RedisResult, len(cmds), len(cmds)+len(tail))
	execResults(out, res[:len(cmds)+2])
	return append(out, res[len(cmds)+2:]...)
}

// execResults maps res, the replies to MULTI, len(out) queued commands and
// EXEC, to one result per queued command in out.
func execResults(out, res []rueidis.RedisResult) {
	n := len(out)
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
	exec := res[n+1]
	if err := exec.NonRedisError(); err != nil {
		for i := range out {
			out[i] = rueidis.NewErrorResult(err)
		}
		return
	}
	if err := res[0].Error(); err != nil {
		fail(fmt.Errorf("bus: MULTI refused: %w", err))
		return
	}
	arr, err := exec.ToArray()
	switch {
	case rueidis.IsRedisNil(err):
		fail(errors.New("bus: transaction discarded (EXEC returned nil)"))
	case err != nil:
		fail(err)
	case len(arr) != n:
		fail(fmt.Errorf("bus: EXEC returned %d replies for %d commands", len(arr), n))
	default:
		for i := range arr {
			out[i] = rueidis.NewResult(arr[i], nil)
		}
	}
}
