package consumer

import (
	"context"
	"testing"
	"time"
)

// TestShareCancelledWaiter: a worker whose ctx ends while it waits for a
// shared slot leaves the queue, and no slot is lost or made up.
func TestShareCancelledWaiter(t *testing.T) {
	var none *share
	if !none.acquire(context.Background(), 0) {
		t.Fatal("a Consumer on its own waited for a share")
	}
	s := newShare(1, 2)
	if !s.acquire(context.Background(), 0) {
		t.Fatal("the free slot was refused")
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan bool, 1)
	go func() { got <- s.acquire(ctx, 1) }()
	for {
		s.mu.Lock()
		w := s.waiting
		s.mu.Unlock()
		if w == 1 {
			break
		}
		time.Sleep(time.Millisecond) // polling the queue
	}
	cancel()
	if <-got {
		t.Fatal("a cancelled waiter got a slot")
	}
	s.release()
	if s.waiting != 0 || s.free != 1 || len(s.queues[1]) != 0 {
		t.Fatalf("after the release: free %d, waiting %d, queue %d; want 1, 0, 0", s.free, s.waiting, len(s.queues[1]))
	}
	if !s.acquire(context.Background(), 1) || s.free != 0 {
		t.Fatal("the slot released was not there to take")
	}
}
