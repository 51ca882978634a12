// Package inspect answers what operators ask of a running bus, in the manner
// of asynq's Inspector or franz-go's kadm: which topics exist, how long their
// streams are and how old their entries, each consumer group's pending
// entries, lag and consumers, the dead letters (list, replay, purge) and the
// producers' reply streams.
//
// bus-worker stats, bus-worker dlq and the Prometheus stream collector (package
// prom) all call it, so each question is answered one way. Reads cost O(1) in
// a stream's length except where a method says otherwise; discovering topics
// walks the keyspace with SCAN.
package inspect
