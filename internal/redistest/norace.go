//go:build !race

package redistest

// raceEnabled: without the race detector here (the soak, measuring memory
// and latency), Binary builds plain binaries too.
const raceEnabled = false
