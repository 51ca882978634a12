package chaos

import (
	"os"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"

	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// long reports whether the long versions were asked for (make chaos).
func long() bool { return os.Getenv("MYCELIUM_CHAOS_LONG") == "1" }

// scale picks the short or the long figure.
func scale[T any](short, lng T) T {
	if long() {
		return lng
	}
	return short
}

// startWorker runs a bus-worker against url (see redistest.StartWorker).
func startWorker(t *testing.T, url string, args ...string) *redistest.Worker {
	t.Helper()
	return redistest.StartWorker(t, append([]string{"--redis", url}, args...)...)
}

func newProducer(t *testing.T, c *bus.Client, cfg producer.Config) *producer.Producer {
	t.Helper()
	return redistest.NewProducer(t, c, cfg)
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	redistest.WaitFor(t, within, what, cond)
}

// load calls fn in a loop on n goroutines until stop is closed.
func load(n int, stop <-chan struct{}, fn func()) (wait func()) { return redistest.Load(n, stop, fn) }
