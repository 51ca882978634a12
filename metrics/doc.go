// Package metrics records where a request's time goes: one lock-free
// latency histogram per stage of the data path (encode, breaker admission,
// Redis write, queue wait, handler, reply write, reply transit, decode, end
// to end).
//
// It earns its own package because three parts of the module share it and
// none of them owns it: the producer and the consumer record into a
// Recorder on their hot paths, and bus-bench and bus-worker read snapshots
// (percentiles for reports, Prometheus histograms for /metrics). It has no
// dependencies, so services that import producer or consumer do not pull in
// a metrics library; the Prometheus export lives in package prom.
//
// Recording is a few atomic adds: no lock, no allocation, no clock read
// (callers pass durations they measured). Histograms have two bucket sets,
// both exact: fine exponential buckets (8 per power of two, so quantiles
// are within about 4.5%) for percentiles, and the classic Prometheus bounds
// (ClassicBounds, 50 µs to 60 s) for export.
package metrics
