// Package cli holds what the two commands, bus-worker and bus-bench, share:
// connecting to Redis, errors printed as one line, and the embedded
// in-memory Redis they start when asked to run without a real one.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/alicebob/miniredis/v2"

	"github.com/egos/mycelium/bus"
)

// ConnectTimeout bounds Connect.
const ConnectTimeout = 5 * time.Second

// Connect validates cfg and connects within ConnectTimeout (or ctx). Its
// error is one short line naming the redacted URL and the root cause
// (never the password); commands wrap it in their usage error.
func Connect(ctx context.Context, cfg bus.Config) (*bus.Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
	defer cancel()
	c, err := bus.Connect(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot reach Redis at %s: %w", cfg.Redacted(), rootCause(err))
	}
	return c, nil
}

// OneLine collapses s onto one line (every run of white space becomes one
// space), for an error a command prints before it exits.
func OneLine(s string) string { return Printable(strings.Join(strings.Fields(s), " ")) }

// PrintableWriter returns a writer that passes text through Printable: for
// tables and text that carry data read from Redis. Each Write must hold
// whole characters (fmt and tabwriter write whole strings).
func PrintableWriter(w io.Writer) io.Writer { return printableWriter{w} }

type printableWriter struct{ w io.Writer }

func (p printableWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, Printable(string(b))); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Printable escapes what a terminal would act on in s (control characters
// such as ESC, as \x1b; invalid UTF-8, as \xNN), keeping newlines and
// tabs: text from Redis or a backend (a dead letter's error, a remote
// error, a reply) must not reach a terminal raw.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if (r < ' ' && r != '\n' && r != '\t') || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case (r < ' ' && r != '\n' && r != '\t') || r == 0x7f || (r >= 0x80 && r < 0xa0):
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// rootCause strips every wrapping from err, so that a dial error prints as
// one short line ("dial tcp 127.0.0.1:1: connect: connection refused").
func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// Embedded is an in-process miniredis whose clock follows the wall clock,
// so that keys expire as on Redis (reply streams, cache entries, flight
// markers): miniredis alone only expires keys when told to. Close stops
// both.
type Embedded struct {
	*miniredis.Miniredis
	stop chan struct{}
	done chan struct{}
}

// clockTick is how often the embedded Redis's clock catches up.
const clockTick = 250 * time.Millisecond

func newEmbedded(m *miniredis.Miniredis) *Embedded {
	e := &Embedded{Miniredis: m, stop: make(chan struct{}), done: make(chan struct{})}
	go e.tick()
	return e
}

// tick advances the miniredis clock by the time that passed, until Close.
func (e *Embedded) tick() {
	defer close(e.done)
	t := time.NewTicker(clockTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-e.stop:
			return
		case now := <-t.C:
			e.FastForward(now.Sub(last))
			last = now
		}
	}
}

// Close stops the clock and the server.
func (e *Embedded) Close() {
	close(e.stop)
	<-e.done
	e.Miniredis.Close()
}

// PasswordEnv holds the Redis password when no password file is given.
const PasswordEnv = "MYCELIUM_REDIS_PASSWORD"

// Password returns the Redis password the commands use instead of one in
// the URL: the content of file (its trailing newline removed; at most 4
// KiB), else the environment variable PasswordEnv, else "". Errors never
// carry the file's content.
func Password(file string) (string, error) {
	if file == "" {
		return os.Getenv(PasswordEnv), nil
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("--redis-password-file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4<<10+1))
	if err != nil {
		return "", fmt.Errorf("--redis-password-file %s: %w", file, err)
	}
	if len(b) > 4<<10 {
		return "", fmt.Errorf("--redis-password-file %s: larger than 4 KiB: not a password file", file)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("--redis-password-file %s: empty", file)
	}
	return pw, nil
}

// StartEmbedded starts an in-process miniredis on 127.0.0.1, on the first
// free port from port up (up to 100 tries), or on any free port when port
// is 0. Its data lives in memory and is lost when it stops: it is for trying
// the bus out and for tests, never for production.
func StartEmbedded(port int) (*Embedded, error) {
	if port == 0 {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("start embedded Redis: %w", err)
		}
		return newEmbedded(m), nil
	}
	var last error
	for p := port; p < port+100; p++ {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:" + strconv.Itoa(p)); err != nil {
			last = err
			continue
		}
		return newEmbedded(m), nil
	}
	return nil, fmt.Errorf("start embedded Redis on a port from %d: %w", port, last)
}
