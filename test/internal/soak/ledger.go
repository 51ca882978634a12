package soak

import (
	"sync"
	"time"
)

// outcome is what the caller of one message saw.
type outcome uint8

const (
	pending  outcome = iota // not finished yet
	answered                // a request's reply arrived, or an event's publish was acknowledged
	failed                  // the caller got an error
)

// slot is one message in the ledger's ring.
type slot struct {
	id      uint64 // 0: free
	due     int64  // when it was scheduled, ns since the soak started
	first   int64  // its first execution, ns since the soak started
	execs   uint32 // handler executions seen by the backend
	outcome outcome
}

// Tally is what the ledger concluded about the messages it finalised.
type Tally struct {
	Issued   uint64 `json:"issued"`
	Answered uint64 `json:"answered"` // replies received / publishes acknowledged
	Failed   uint64 `json:"failed"`   // the caller got an error
	Executed uint64 `json:"executed"` // messages the handler ran at least once
	// Duplicates counts executions beyond the first; Explained those whose
	// first execution began just before an injected SIGKILL or Redis
	// restart (at-least-once delivery redoing the work it cut short).
	Duplicates uint64 `json:"duplicates"`
	Explained  uint64 `json:"duplicates_explained"`
	// Lost: an acknowledged event never executed, or a reply for a request
	// that never executed. Must be 0.
	Lost uint64 `json:"lost"`
	// FailedExecuted: the caller got an error and the handler ran anyway
	// (a write whose acknowledgement died with Redis, a reply too late).
	FailedExecuted uint64 `json:"failed_executed"`
	// Unfinished: still waiting for its caller when finalised. Must be 0.
	Unfinished uint64 `json:"unfinished"`
	// Stray: executions of a message the ledger does not hold (never
	// issued, or finalised long before). Must be 0.
	Stray uint64 `json:"stray"`
}

// ledger follows every message of one kind from its schedule to its
// executions and its caller's outcome, in constant memory: a ring of slots
// indexed by id, each finalised into the Tally when its slot is reused (by
// then the message is long settled: the ring holds minutes of traffic) or
// by Finalize at the end. A soak must not grow its own heap.
type ledger struct {
	start   time.Time
	slots   []slot
	mask    uint64
	locks   [64]sync.Mutex
	explain func(first int64) bool // does a fault explain a re-execution?

	mu sync.Mutex
	t  Tally
}

// newLedger holds at least n messages (rounded up to a power of two).
func newLedger(start time.Time, n int, explain func(first int64) bool) *ledger {
	size := 1024
	for size < n {
		size <<= 1
	}
	l := &ledger{start: start, slots: make([]slot, size), mask: uint64(size - 1), explain: explain}
	// Touch every page now: a ring filled page by page as ids advance
	// would grow this process's RSS through the first minutes of the soak,
	// and the soak judges that RSS.
	for i := range l.slots {
		l.slots[i].due = -1
	}
	return l
}

func (l *ledger) at(id uint64) (*slot, *sync.Mutex) {
	i := id & l.mask
	return &l.slots[i], &l.locks[i%uint64(len(l.locks))]
}

// Issue records id (ids start at 1 and rise) as scheduled at due.
func (l *ledger) Issue(id uint64, due time.Time) {
	s, mu := l.at(id)
	mu.Lock()
	var old slot
	if s.id != 0 {
		old = *s
	}
	*s = slot{id: id, due: int64(due.Sub(l.start))}
	mu.Unlock()
	l.mu.Lock()
	l.t.Issued++
	if old.id != 0 {
		l.settle(&old)
	}
	l.mu.Unlock()
}

// Executed records one handler execution of id at time at.
func (l *ledger) Executed(id uint64, at time.Time) {
	s, mu := l.at(id)
	mu.Lock()
	if s.id != id {
		mu.Unlock()
		l.mu.Lock()
		l.t.Stray++
		l.mu.Unlock()
		return
	}
	if s.execs == 0 {
		s.first = int64(at.Sub(l.start))
	}
	s.execs++
	mu.Unlock()
}

// Done records what id's caller saw.
func (l *ledger) Done(id uint64, ok bool) {
	s, mu := l.at(id)
	mu.Lock()
	if s.id == id {
		s.outcome = failed
		if ok {
			s.outcome = answered
		}
	}
	mu.Unlock()
}

// Finalize settles every message still in the ring and returns the tally.
func (l *ledger) Finalize() Tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.slots {
		mu := &l.locks[uint64(i)%uint64(len(l.locks))]
		mu.Lock()
		s := l.slots[i]
		l.slots[i] = slot{}
		mu.Unlock()
		if s.id != 0 {
			l.settle(&s)
		}
	}
	return l.t
}

// Snapshot is the tally so far (messages not yet finalised not counted).
func (l *ledger) Snapshot() Tally {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t
}

// settle adds one finished message to the tally; l.mu is held.
func (l *ledger) settle(s *slot) {
	switch s.outcome {
	case answered:
		l.t.Answered++
		if s.execs == 0 {
			l.t.Lost++
		}
	case failed:
		l.t.Failed++
		if s.execs > 0 {
			l.t.FailedExecuted++
		}
	default:
		l.t.Unfinished++
	}
	if s.execs > 0 {
		l.t.Executed++
	}
	if s.execs > 1 {
		d := uint64(s.execs - 1)
		l.t.Duplicates += d
		if l.explain != nil && l.explain(s.first) {
			l.t.Explained += d
		}
	}
}
