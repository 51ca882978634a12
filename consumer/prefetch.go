package consumer

import "sync"

// queuedSet is the entries read ahead (Config.Prefetch) and waiting in the
// job queue for a handler: the heartbeat keeps their claims fresh as it
// does a running handler's, so a handler holding one entry long does not
// let the entries queued behind it be reclaimed by another worker. Nil
// without Prefetch (the queue then holds only entries a handler is free
// for).
type queuedSet struct {
	mu sync.Mutex
	m  map[*job]struct{}
}

func newQueuedSet(prefetch int) *queuedSet {
	if prefetch <= 0 {
		return nil
	}
	return &queuedSet{m: make(map[*job]struct{})}
}

// add records j as queued (before it enters the job queue).
func (q *queuedSet) add(j *job) {
	if q == nil {
		return
	}
	q.mu.Lock()
	q.m[j] = struct{}{}
	q.mu.Unlock()
}

// remove records that a worker took j (before j can return to its pool).
func (q *queuedSet) remove(j *job) {
	if q == nil {
		return
	}
	q.mu.Lock()
	delete(q.m, j)
	q.mu.Unlock()
}

// appendTo adds the ids of the queued entries read before old (unix nanos)
// to byPart.
func (q *queuedSet) appendTo(byPart map[*part][]string, old int64) {
	if q == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for j := range q.m {
		if j.readAt < old {
			byPart[j.p] = append(byPart[j.p], j.msg.ID)
		}
	}
}
