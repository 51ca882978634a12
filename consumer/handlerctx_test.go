package consumer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type ctxKey struct{}

func newTestDeadlineCtx(t *testing.T, d time.Duration) (*deadlineCtx, context.CancelFunc) {
	t.Helper()
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	t.Cleanup(cancel)
	return newDeadlineCtx(parent, context.WithoutCancel(parent), time.Now().Add(d)), cancel
}

func waitDone(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context not done within 5s")
	}
}

func TestDeadlineCtxDeadlinePasses(t *testing.T) {
	c, _ := newTestDeadlineCtx(t, 20*time.Millisecond)
	if d, ok := c.Deadline(); !ok || d != c.deadline {
		t.Fatalf("Deadline = %v, %v", d, ok)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err before the deadline = %v", err)
	}
	if got := c.Value(ctxKey{}); got != "v" {
		t.Fatalf("Value = %v, want the parent's", got)
	}
	child, cancelChild := context.WithCancel(c) // linked through AfterFunc
	defer cancelChild()
	waitDone(t, c)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want DeadlineExceeded", c.Err())
	}
	if !errors.Is(context.Cause(c), context.DeadlineExceeded) {
		t.Fatalf("Cause = %v, want DeadlineExceeded (not the parent's nil cause)", context.Cause(c))
	}
	waitDone(t, child)
	if !errors.Is(child.Err(), context.DeadlineExceeded) {
		t.Fatalf("child Err = %v, want DeadlineExceeded", child.Err())
	}
}

func TestDeadlineCtxErrWithoutDone(t *testing.T) {
	// Nobody asked for Done, so no timer runs: Err still sees the deadline.
	c, _ := newTestDeadlineCtx(t, time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for c.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("Err stayed nil past the deadline")
		}
		time.Sleep(time.Millisecond)
	}
	if c.timer != nil {
		t.Fatal("Err armed a timer")
	}
	select {
	case <-c.Done(): // created closed: consistent with Err
	default:
		t.Fatal("Done not closed after Err reported the deadline")
	}
}

func TestDeadlineCtxParentCancel(t *testing.T) {
	c, cancelParent := newTestDeadlineCtx(t, time.Hour)
	done := c.Done()
	cancelParent()
	waitDone(t, c)
	_ = done
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want Canceled", c.Err())
	}

	// Parent cancelled before anyone asked: Err sees it without Done.
	c2, cancel2 := newTestDeadlineCtx(t, time.Hour)
	cancel2()
	if !errors.Is(c2.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want Canceled", c2.Err())
	}
}

func TestDeadlineCtxCancelReleases(t *testing.T) {
	c, _ := newTestDeadlineCtx(t, time.Hour)
	_ = c.Done()
	fired := make(chan struct{})
	stop := context.AfterFunc(c, func() { close(fired) })
	c.cancel(context.Canceled)
	waitDone(t, c)
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc not run after cancel")
	}
	if stop() {
		t.Fatal("stop after the func ran reported true")
	}
	if c.timer.Stop() {
		t.Fatal("timer still armed after cancel")
	}
	c.cancel(context.DeadlineExceeded) // second cancel: no effect
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want the first cancel's", c.Err())
	}

	// A stopped AfterFunc never runs.
	c2, _ := newTestDeadlineCtx(t, time.Hour)
	ran := make(chan struct{}, 1)
	stop2 := c2.AfterFunc(func() { ran <- struct{}{} })
	if !stop2() {
		t.Fatal("stop before cancel reported false")
	}
	c2.cancel(context.Canceled)
	// AfterFunc on an ended context runs at once (in its own goroutine).
	c2.AfterFunc(func() { ran <- struct{}{} })
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc on an ended context did not run")
	}
	select {
	case <-ran:
		t.Fatal("the stopped func ran")
	default:
	}
}

func TestDeadlineCtxConcurrent(t *testing.T) {
	for range 50 {
		c, cancelParent := newTestDeadlineCtx(t, time.Millisecond)
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Go(func() {
				switch i {
				case 0:
					<-c.Done()
				case 1:
					for c.Err() == nil {
						time.Sleep(100 * time.Microsecond)
					}
				case 2:
					cancelParent()
				case 3:
					child, cancel := context.WithTimeout(c, time.Hour)
					<-child.Done()
					cancel()
				}
			})
		}
		wg.Wait()
		c.cancel(context.Canceled)
		if c.Err() == nil {
			t.Fatal("Err nil after the context ended")
		}
	}
}
