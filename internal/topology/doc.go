// Package topology follows how the bus's topics are partitioned: each
// topic's partition metadata (its count, the partitions being drained; see
// redisx.Partitions and docs/cluster.md, "Partitions"), read from Redis on
// a topic's first use and re-read in the background while it is used.
//
// It is a package of its own, not code inside producer, because the
// producer, the consumer and inspect all need partition counts and should
// follow them the same way, through one type (issue 25, point 2: "one
// watcher of partition counts, shared by producer, consumer and
// inspect"); producer cannot be imported by consumer or inspect, and
// bus/ holds vocabulary only. The rules live here once: the caller's
// deadline never reaches the Redis client (redisx.Detach), one read at a
// time per topic, the last count kept while Redis does not answer. The
// producer reads counts through Topic.Count (cached, refreshed in the
// background); the consumer's topology through Topic.Read on its own
// schedule, since it acts on each reading (starts, drains and forgets
// partitions). inspect reads a topic's metadata once per question, through
// its port: there is nothing for it to watch.
//
// It is internal: its shape may change as they adopt it. It starts no
// goroutine of its own: background reads run through the Spawner its owner
// gives, so they stop with the owner.
package topology
