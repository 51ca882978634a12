//go:build race

package redistest

// raceEnabled: this test binary runs with the race detector, and so do the
// binaries Binary builds for it.
const raceEnabled = true
