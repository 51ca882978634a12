// Package consumer runs handlers for the entries of one Mycelium topic as a
// member of a Redis Streams consumer group.
//
// A Consumer reads with XREADGROUP on a dedicated blocking connection, never
// more entries than it has free handler slots, hands them to a fixed pool of
// Concurrency workers, and writes replies, dead letters and acknowledgements
// through one acker that pipelines them (acknowledgements batched in one
// XACK per flush). Requests whose caller's deadline has passed are
// acknowledged and counted without running the handler. A missing group is
// created, also after a Redis restart or FLUSHALL lost it.
//
// Shutdown order (Run returns after it): stop reading; let in-flight
// handlers finish within Config.ShutdownTimeout, then cancel their contexts;
// flush replies and acknowledgements; return. Entries whose handler did not
// finish stay pending in the group for another consumer.
//
// Inside, a Consumer is a composition of components with one job each
// (reader, router, processor, acker, reclaimer, janitor, heartbeat,
// membership, topology, controller, delayer): env.go lists them, Run
// (consumer.go) says the order in which they start and stop.
package consumer
