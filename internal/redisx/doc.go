// Package redisx is Mycelium's one port to Redis: the only code that builds
// Redis commands or parses their replies. Stream writes and reads, batches and
// transactions, the blocking-read watchdog, the outage backoff, Lua scripts,
// the dead-letter layout, operator queries and the classification of Redis
// errors all live here, so the facts measured about rueidis and Redis
// (docs/performance.md: blocking reads on the dedicated pool with a
// watchdog, writes never retried by the client, commands rebuilt rather than
// resent, errors classified by prefix once) are applied in one place. The
// bus's Lua scripts are a Redis Functions library here (functions.go), the
// ACL roles' rules too (acl.go), and the cluster's partitions and routing.
//
// It is internal so that its shape can change freely; the public vocabulary
// (Config, Client, keys, errors) is package bus. Functions take the rueidis
// client that a bus.Client owns; every call that blocks takes a ctx.
package redisx
