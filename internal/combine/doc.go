// Package combine batches work by flat combining: callers queue items, and
// while fewer than a set number of flushes run, an arriving caller starts
// one (on its own goroutine or on a tracked helper) that drains everything
// queued meanwhile. Batches grow with the time a flush takes, so under load
// many callers share one pipelined Redis round trip, and at low load an
// item is flushed at once.
//
// It exists as a package because the producer (XADD of requests and
// events) and the consumer (replies, dead letters and XACK) need the same
// mechanism, and it is subtle enough (no item may ever be left queued
// without a flusher) to be written and tested once. It is internal: not
// part of Mycelium's API.
package combine
