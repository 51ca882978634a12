package producer

import (
	"sync/atomic"
	"time"
)

// respondersTTL is how long a topic's answer to "does a worker serve it?"
// is used before it is checked again: at most one check per topic and
// second, whatever the request rate.
const respondersTTL = time.Second

// respondersTimeout bounds one check made in the background.
const respondersTimeout = 2 * time.Second

// responders caches whether a worker serves a topic (see
// redisx.Responders). While the topic is known to be served, a request
// costs one atomic load and goes ahead at once; a stale answer is refreshed
// in the background, so no request waits for a check. While nobody is known
// to serve it (or nothing is known yet), one caller at a time checks,
// bounded by its ctx.
type responders struct {
	// state is the last answer: its time in unix nanoseconds shifted left
	// by one, with the low bit set when a worker served the topic; 0 until
	// the first answer. One word, so the answer and its age are read
	// together without a lock.
	state      atomic.Int64
	refreshing atomic.Bool
	check      chan struct{} // one caller checks at a time (buffered 1)
}

func newResponders() *responders { return &responders{check: make(chan struct{}, 1)} }

// get returns the last answer and whether it is still fresh at now.
func (r *responders) get(now time.Time) (known, ok, fresh bool) {
	s := r.state.Load()
	return s != 0, s&1 == 1, now.UnixNano()-s>>1 < int64(respondersTTL)
}

func (r *responders) set(ok bool) {
	s := time.Now().UnixNano() << 1
	if ok {
		s |= 1
	}
	r.state.Store(s)
}
