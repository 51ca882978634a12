// Package breaker is Mycelium's circuit breaker: closed, open and half-open,
// tripping on the failure ratio and the slow-call ratio over a rolling time
// window, with a hot path that takes no lock.
//
// The success path of Allow+Done is two atomic loads and one atomic add on
// a cache-line-padded stripe: the state lives in one atomic word (state and
// generation), outcome counters are striped so concurrent callers rarely
// share a cache line, the rolling window's bucket index comes from a shared
// coarse clock instead of a clock read per call, and the window is summed
// only when a failure or slow call could change the state. Half-open admits
// a bounded number of probes by atomic decrement; transitions happen by
// compare-and-swap, and only the winner fires the state-change hook.
//
// The package imports nothing of Mycelium's and can be used on its own.
package breaker
