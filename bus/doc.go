// Package bus is Mycelium's shared vocabulary and its one port to Redis:
// connection Config and setup (a rueidis client tuned for this workload), the
// key builders, the error catalogue, and the handful of stream commands the
// producer and consumer roles issue.
//
// Everything that touches Redis goes through the functions here, so the
// facts measured about rueidis (blocking reads on the dedicated pool with a
// ctx deadline, writes never retried by the client, errors classified by
// prefix once) are applied in one place.
package bus
