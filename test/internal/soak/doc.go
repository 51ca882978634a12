// Package soak is Mycelium's long-running stability test (make soak; a
// 60-second version runs in make test): a redis-server with AOF on,
// bus-worker processes calling an HTTP backend, an open-loop mix of
// requests, events and poison entries at half the capacity measured at the
// start, worker restarts (SIGTERM, and once SIGKILL) and one Redis restart.
// It records every process's resources, Redis's and the load's figures
// over time (soak.jsonl), judges them (no drift after warm-up, a steady
// p99, nothing lost, re-executions only where a kill explains them, every
// poison entry dead-lettered) and draws them (report.html). See
// docs/soak.md. It is a package of its own because it is neither a test of
// one feature nor a benchmark: its code is the harness (internal to test/:
// nothing outside the module's tests imports it), test/soak the run.
package soak
