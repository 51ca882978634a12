package soak

import (
	"sync"
	"time"
)

// Fault kinds the soak injects.
const (
	FaultRestart      = "sigterm"       // a worker replaced: the new one started, then the old one sent SIGTERM
	FaultKill         = "sigkill"       // a worker killed, then started again
	FaultRedisRestart = "redis-restart" // redis-server sent SIGTERM (it writes its AOF) and started again
)

// Fault is one injected failure.
type Fault struct {
	Kind string  `json:"kind"`
	Role string  `json:"role,omitempty"` // the worker, for restarts and kills
	At   float64 `json:"at_s"`           // seconds since the soak started
	End  float64 `json:"end_s"`          // when it was over (the replacement ready, Redis answering)
	// InFlight is what the worker held when it was stopped (kills and
	// restarts: read from its /stats just before).
	InFlight int64 `json:"in_flight"`
	// Exit is how a worker sent SIGTERM exited ("ok" or the error).
	Exit string `json:"exit,omitempty"`
}

// timeline is the faults injected so far, and which effects they explain.
type timeline struct {
	start time.Time
	// handlerMax is the longest a handler runs; timeout a request's; grace
	// how long after a fault its effects may still show (the reclaim of
	// what it left pending, the producer's breaker).
	handlerMax, timeout, grace time.Duration

	mu     sync.Mutex
	faults []Fault
}

// begin records a fault as it starts (it explains effects until finish
// says when it ended) and returns its index.
func (t *timeline) begin(f Fault) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	f.End = 1e9 // until finish: ~30 years
	t.faults = append(t.faults, f)
	return len(t.faults) - 1
}

// finish records when fault i was over and how a stopped process exited.
func (t *timeline) finish(i int, end float64, exit string) {
	t.mu.Lock()
	t.faults[i].End, t.faults[i].Exit = end, exit
	t.mu.Unlock()
}

func (t *timeline) all() []Fault {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Fault(nil), t.faults...)
}

// disruptive: a fault that may cut a handler's work short or make callers
// wait (a graceful restart may not).
func disruptive(kind string) bool { return kind == FaultKill || kind == FaultRedisRestart }

// explainsDuplicate reports whether a message first executed at first (ns
// since the start) was cut short by a kill or a Redis restart: it began at
// most one handler's time before the fault and no later than its end.
func (t *timeline) explainsDuplicate(first int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range t.faults {
		lo := int64(f.At*1e9) - int64(t.handlerMax+time.Second)
		hi := int64(f.End*1e9) + int64(time.Second)
		if disruptive(f.Kind) && first >= lo && first <= hi {
			return true
		}
	}
	return false
}

// explainsError reports whether a caller error for a message due at due
// (ns since the start) falls in a disruptive fault's shadow: scheduled
// within one request timeout before it, up to grace after it ended.
func (t *timeline) explainsError(due int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range t.faults {
		lo := int64(f.At*1e9) - int64(t.timeout)
		hi := int64(f.End*1e9) + int64(t.grace)
		if disruptive(f.Kind) && due >= lo && due <= hi {
			return true
		}
	}
	return false
}
