package breaker

import "strconv"

// State is a breaker's state.
type State uint8

// States.
const (
	Closed   State = iota // calls flow; outcomes are counted
	Open                  // calls fail fast with ErrOpen
	HalfOpen              // a bounded number of probe calls test recovery
)

// String returns "closed", "open" or "half-open".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Outcome is what a call reports to Done.
type Outcome uint8

// Outcomes.
const (
	Success Outcome = iota // the dependency worked
	Failure                // the dependency failed (counts toward tripping)
	Ignored                // not the dependency's fault (e.g. the caller cancelled): not counted
)

// String returns "success", "failure" or "ignored".
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case Ignored:
		return "ignored"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// word is the breaker's whole state machine in one atomic value:
//
//	bits 0-1   state
//	bits 2-11  half-open permits left (probes still to admit)
//	bits 12-21 half-open successes so far
//	bits 22-63 generation (+1 on every transition)
//
// Keeping the half-open counters in the word makes admitting a probe and
// counting its success single compare-and-swaps that cannot mix
// generations.
type word uint64

const (
	permitShift = 2
	succShift   = 12
	genShift    = 22
	fieldMask   = 1<<10 - 1
	// MaxProbes is the largest Config.HalfOpenProbes.
	MaxProbes = fieldMask
)

func pack(gen uint64, s State, permits, succ int) word {
	return word(gen<<genShift | uint64(succ)<<succShift | uint64(permits)<<permitShift | uint64(s))
}

func (w word) state() State { return State(w & 3) }
func (w word) permits() int { return int(w>>permitShift) & fieldMask }
func (w word) succ() int    { return int(w>>succShift) & fieldMask }
func (w word) gen() uint64  { return uint64(w) >> genShift }
func (w word) next(s State, permits int) word {
	return pack(w.gen()+1, s, permits, 0)
}
