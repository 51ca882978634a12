package consumer

import (
	"context"
	"sync"
)

// share is the handler slots a Router's topics share: at most n handlers
// run at once across them, and when several topics wait for a slot, a
// slot that frees goes to them in turn (round robin over the topics with a
// waiter; first come, first served within a topic), so a topic with a
// backlog cannot starve one with a trickle. Each topic is also held to its
// own cap by its Consumer's slots (Config.Concurrency). A nil share admits
// every call at once: a Consumer on its own.
type share struct {
	mu      sync.Mutex
	free    int
	waiting int
	queues  [][]chan struct{} // per topic, the workers waiting, oldest first
	next    int               // the topic served first at the next release
}

func newShare(n, topics int) *share {
	return &share{free: n, queues: make([][]chan struct{}, topics)}
}

// acquire waits for a slot for topic i; false when ctx ended first.
func (s *share) acquire(ctx context.Context, i int) bool {
	if s == nil {
		return true
	}
	s.mu.Lock()
	if s.free > 0 && s.waiting == 0 {
		s.free--
		s.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	s.queues[i] = append(s.queues[i], ch)
	s.waiting++
	s.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
	}
	s.mu.Lock()
	q := s.queues[i]
	for k := range q {
		if q[k] == ch { // still waiting: leave the queue
			s.queues[i] = append(q[:k], q[k+1:]...)
			s.waiting--
			s.mu.Unlock()
			return false
		}
	}
	s.mu.Unlock()
	s.release() // granted as ctx ended: pass it on
	return false
}

// release frees a slot: to the next topic with a waiter, or to the pool.
func (s *share) release() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting == 0 {
		s.free++
		return
	}
	n := len(s.queues)
	for k := range n {
		i := (s.next + k) % n
		if q := s.queues[i]; len(q) > 0 {
			ch := q[0]
			q[0] = nil
			s.queues[i] = q[1:]
			s.waiting--
			s.next = (i + 1) % n
			close(ch)
			return
		}
	}
}
