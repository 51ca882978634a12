package bench

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
)

// startProgress prints a live line on stderr (requests done, current
// rate, errors) every half second while a run lasts, when stderr is a
// terminal. The returned stop ends it and clears the line.
func startProgress(e *env, stderr io.Writer) (stop func()) {
	f, ok := stderr.(*os.File)
	if !ok || !isatty.IsTerminal(f.Fd()) {
		return func() {}
	}
	name := e.o.Case
	if name == "" {
		name = e.o.Scenario
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		var last int64
		lastAt := time.Now()
		for {
			select {
			case <-done:
				fmt.Fprint(stderr, "\r\033[K")
				return
			case now := <-tick.C:
				ok, errs := e.tl.ok.Load(), e.tl.errs.Load()
				rate := float64(ok-last) / now.Sub(lastAt).Seconds()
				last, lastAt = ok, now
				fmt.Fprintf(stderr, "\r\033[K%s %s: %d done, %.0f req/s now, %d errors", e.system, name, ok, rate, errs)
			}
		}
	}()
	return func() { close(done); <-exited }
}
