// Package test holds Mycelium's integration suites. They run against real
// redis-server processes that each test starts on a free loopback port
// (package redistest) and, for the binaries, against bus-worker built from
// this module. `make test` runs them with MYCELIUM_REQUIRE_REDIS=1 so a
// missing redis-server fails instead of skipping.
package test
