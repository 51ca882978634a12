package consumer

import (
	"context"
	"sync"
	"time"
)

// deadlineCtx is the context a handler gets for a message with a deadline.
// It behaves like context.WithDeadline(parent, deadline), but it arms its
// timer and its link to parent only when somebody asks for Done: most fast
// handlers never do, and context.WithDeadline per message (an allocation, a
// runtime timer, registration in parent) showed in a worker's CPU profile
// (docs/performance.md, "Decisions in the code").
//
// Values come from values, which is parent without its cancellation
// (context.WithoutCancel): context.Cause then reports this context's own
// error instead of looking through to parent's.
type deadlineCtx struct {
	parent   context.Context // cancels this context (shutdown)
	values   context.Context // context.WithoutCancel(parent), for Value
	deadline time.Time

	mu     sync.Mutex
	done   chan struct{} // made by the first Done; closed by cancel
	err    error
	timer  *time.Timer  // armed by the first Done
	unlink func() bool  // stops the parent's AfterFunc, armed by the first Done
	afters []*afterFunc // registered by AfterFunc (context.WithCancel and friends on this ctx)
}

type afterFunc struct {
	f    func()
	once sync.Once
}

func newDeadlineCtx(parent, values context.Context, deadline time.Time) *deadlineCtx {
	return &deadlineCtx{parent: parent, values: values, deadline: deadline}
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *deadlineCtx) Value(key any) any { return c.values.Value(key) }

// Done returns a channel closed when the deadline passes, parent is
// cancelled or the handler returned; the first call arms the timer.
func (c *deadlineCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	if c.err == nil {
		c.checkLocked() // before done exists, so ending here does not close it
	}
	c.done = make(chan struct{})
	if c.err != nil {
		close(c.done)
		return c.done
	}
	c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.cancel(context.DeadlineExceeded) })
	c.unlink = context.AfterFunc(c.parent, func() { c.cancel(c.parent.Err()) })
	return c.done
}

// Err reports why the context ended, checking the deadline and parent
// itself when nothing armed a timer.
func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.checkLocked()
	}
	return c.err
}

// checkLocked ends the context if parent ended or the deadline passed.
func (c *deadlineCtx) checkLocked() {
	if err := c.parent.Err(); err != nil {
		c.endLocked(err)
	} else if !time.Now().Before(c.deadline) {
		c.endLocked(context.DeadlineExceeded)
	}
}

// AfterFunc lets context.WithCancel (and context.AfterFunc) on this context
// link to it without a goroutine each: f runs in its own goroutine once the
// context ends. The returned stop reports whether it prevented f.
func (c *deadlineCtx) AfterFunc(f func()) (stop func() bool) {
	a := &afterFunc{f: f}
	c.mu.Lock()
	ended := c.err != nil
	if !ended {
		c.afters = append(c.afters, a)
	}
	c.mu.Unlock()
	if ended {
		a.once.Do(func() { go f() })
	}
	return func() bool {
		stopped := false
		a.once.Do(func() { stopped = true })
		return stopped
	}
}

// cancel ends the context with err (first call wins) and releases its
// timer and parent link.
func (c *deadlineCtx) cancel(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.endLocked(err)
	}
}

func (c *deadlineCtx) endLocked(err error) {
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.unlink != nil {
		c.unlink()
	}
	for _, a := range c.afters {
		a.once.Do(func() { go a.f() })
	}
	c.afters = nil
}
