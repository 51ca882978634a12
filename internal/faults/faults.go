// Package faults injects Redis's failures into a rueidis client: the
// fault-injecting side of the bus's Redis port (redisx.Port), for unit
// tests on miniredis. It earns its own package because the consumer's and
// producer's own tests use it, and internal/redistest imports both.
package faults

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Faults injects Redis's failures into the commands of a client it wraps
// (Wrap): the fault-injecting side of the Redis port (redisx.Port), so that
// unit tests on miniredis see what the bus does when Redis pauses, refuses
// or drops a connection, without a redis-server. Commands are matched by
// name (upper case, e.g. "XACK"); faults apply to Do and DoMulti (every
// command the bus sends, scripts included). Safe for concurrent use.
type Faults struct {
	mu      sync.Mutex
	paused  chan struct{} // non-nil while paused: closed by Resume
	down    map[string]bool
	allDown bool
	replies map[string]*reply
	slow    map[string]time.Duration
	cut     int // the next pipeline longer than this is cut after it; -1: none
	cuts    int // pipelines cut
	seen    map[string]int
	dropped map[string]int
}

type reply struct {
	text  string
	times int // -1: until cleared
}

// ErrDropped is the error of a command that a fault dropped: a lost
// connection to the bus (redisx.IsConnErr).
var ErrDropped = fmt.Errorf("faults: connection dropped by a fault: %w", net.ErrClosed)

// NewFaults returns Faults that inject nothing until told to.
func NewFaults() *Faults {
	return &Faults{down: map[string]bool{}, replies: map[string]*reply{}, slow: map[string]time.Duration{}, cut: -1, seen: map[string]int{}, dropped: map[string]int{}}
}

// Wrap returns rc with f's faults injected.
func (f *Faults) Wrap(rc rueidis.Client) rueidis.Client { return &faultClient{Client: rc, f: f} }

// Pause makes every command wait (Redis busy: a long script, a fork, a
// stopped process) until Resume, or until its ctx ends; a reply under way
// (a blocked read's) is held back the same way.
func (f *Faults) Pause() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused == nil {
		f.paused = make(chan struct{})
	}
}

// Resume ends a Pause: the waiting commands go on.
func (f *Faults) Resume() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused != nil {
		close(f.paused)
		f.paused = nil
	}
}

// Down makes the commands named (every command when none) fail at once as
// on a lost connection (ErrDropped), unsent, until Up.
func (f *Faults) Down(cmds ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(cmds) == 0 {
		f.allDown = true
	}
	for _, c := range cmds {
		f.down[strings.ToUpper(c)] = true
	}
}

// Up ends every Down.
func (f *Faults) Up() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allDown = false
	clear(f.down)
}

// Reply makes the next times commands named cmd (times < 0: every one
// until ClearReplies) get Redis's error reply text (e.g. "NOGROUP no such
// group", "NOPERM this user has no permissions to run the 'xack'
// command") instead of running: the server answers it, so the bus sees a
// genuine error reply.
func (f *Faults) Reply(cmd, text string, times int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies[strings.ToUpper(cmd)] = &reply{text: text, times: times}
}

// ClearReplies ends every Reply.
func (f *Faults) ClearReplies() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.replies)
}

// Slow makes commands named cmd answer d late (d <= 0 ends it).
func (f *Faults) Slow(cmd string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d <= 0 {
		delete(f.slow, strings.ToUpper(cmd))
		return
	}
	f.slow[strings.ToUpper(cmd)] = d
}

// Cut drops the connection in the middle of the next pipeline of more than
// after commands: the first after run, the others fail with ErrDropped,
// unsent (a cut inside a MULTI/EXEC falls before its MULTI: a transaction
// the server never got whole never ran).
func (f *Faults) Cut(after int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut = after
}

// Cuts returns how many pipelines Cut cut.
func (f *Faults) Cuts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cuts
}

// Seen returns how many commands named cmd reached the wrapped client.
func (f *Faults) Seen(cmd string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[strings.ToUpper(cmd)]
}

// Dropped returns how many commands named cmd a fault dropped (Down, Cut).
func (f *Faults) Dropped(cmd string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped[strings.ToUpper(cmd)]
}

// decision is what happens to one command.
type decision struct {
	drop  bool
	reply string // an error reply to answer instead, when not ""
	delay time.Duration
}

// decideLocked takes the command named name past f's faults (under f.mu).
func (f *Faults) decideLocked(name string) decision {
	if f.allDown || f.down[name] {
		return decision{drop: true}
	}
	var d decision
	if r := f.replies[name]; r != nil {
		d.reply = r.text
		if r.times > 0 {
			if r.times--; r.times == 0 {
				delete(f.replies, name)
			}
		}
	}
	d.delay = f.slow[name]
	return d
}

// wait waits out a pause and a delay; false when ctx ended first.
func (f *Faults) wait(ctx context.Context, delay time.Duration) bool {
	f.mu.Lock()
	paused := f.paused
	f.mu.Unlock()
	if paused != nil {
		select {
		case <-paused:
		case <-ctx.Done():
			return false
		}
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

type faultClient struct {
	rueidis.Client
	f *Faults
}

func name(cmd rueidis.Completed) string {
	if args := cmd.Commands(); len(args) > 0 {
		return strings.ToUpper(args[0])
	}
	return ""
}

// errorReply is a command that makes the server answer text as an error.
func (c *faultClient) errorReply(text string) rueidis.Completed {
	return c.Client.B().Eval().Script("return redis.error_reply(ARGV[1])").Numkeys(0).Arg(text).Build()
}

func (c *faultClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.f.mu.Lock()
	d := c.f.decideLocked(name(cmd))
	switch {
	case d.drop:
		c.f.dropped[name(cmd)]++
	case d.reply == "":
		c.f.seen[name(cmd)]++
	}
	c.f.mu.Unlock()
	if d.drop {
		return rueidis.NewErrorResult(ErrDropped)
	}
	if !c.f.wait(ctx, d.delay) {
		return rueidis.NewErrorResult(ctx.Err())
	}
	if d.reply != "" {
		cmd = c.errorReply(d.reply)
	}
	r := c.Client.Do(ctx, cmd)
	if !c.f.wait(ctx, 0) { // a reply under way when Redis paused comes after it
		return rueidis.NewErrorResult(ctx.Err())
	}
	return r
}

func (c *faultClient) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	out := make([]rueidis.RedisResult, len(multi))
	send := make([]rueidis.Completed, 0, len(multi))
	idx := make([]int, 0, len(multi))
	var delay time.Duration
	c.f.mu.Lock()
	cut := len(multi)
	if c.f.cut >= 0 && len(multi) > c.f.cut {
		cut = c.f.cut
		c.f.cut = -1
		c.f.cuts++
		for i := 0; i < cut; i++ { // never in the middle of a transaction
			if name(multi[i]) == "MULTI" && !execBefore(multi[i:], cut-i) {
				cut = i
				break
			}
		}
	}
	ds := make([]decision, len(multi))
	for i, cmd := range multi {
		if i >= cut {
			ds[i].drop = true
			continue
		}
		ds[i] = c.f.decideLocked(name(cmd))
	}
	dropTransactions(multi, ds)

	for i, cmd := range multi {
		switch {
		case ds[i].drop:
			c.f.dropped[name(cmd)]++
			out[i] = rueidis.NewErrorResult(ErrDropped)
			continue
		case ds[i].reply != "":
			cmd = c.errorReply(ds[i].reply)
		default:
			c.f.seen[name(cmd)]++
		}
		delay = max(delay, ds[i].delay)
		send = append(send, cmd)
		idx = append(idx, i)
	}
	c.f.mu.Unlock()
	if len(send) == 0 {
		return out
	}
	if !c.f.wait(ctx, delay) {
		for _, i := range idx {
			out[i] = rueidis.NewErrorResult(ctx.Err())
		}
		return out
	}
	res := c.Client.DoMulti(ctx, send...)
	if !c.f.wait(ctx, 0) { // replies under way when Redis paused come after it
		for _, i := range idx {
			out[i] = rueidis.NewErrorResult(ctx.Err())
		}
		return out
	}
	for k, r := range res {
		out[idx[k]] = r
	}
	return out
}

// dropTransactions drops every command of a MULTI/EXEC in which one is
// dropped: the server never runs part of a transaction.
func dropTransactions(multi []rueidis.Completed, ds []decision) {
	for i := 0; i < len(multi); i++ {
		if name(multi[i]) != "MULTI" {
			continue
		}
		end := i
		for end < len(multi)-1 && name(multi[end]) != "EXEC" {
			end++
		}
		drop := false
		for k := i; k <= end; k++ {
			drop = drop || ds[k].drop
		}
		if drop {
			for k := i; k <= end; k++ {
				ds[k].drop = true
			}
		}
		i = end
	}
}

// execBefore reports whether the transaction starting at cmds[0] (a MULTI)
// ends (EXEC) within its first n commands.
func execBefore(cmds []rueidis.Completed, n int) bool {
	for i := 1; i < n && i < len(cmds); i++ {
		if name(cmds[i]) == "EXEC" {
			return true
		}
	}
	return false
}
