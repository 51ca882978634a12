// Package cli holds what the two commands, bus-worker and bus-bench, share:
// connecting to Redis, errors printed as one line, and the embedded
// in-memory Redis they start when asked to run without a real one.
package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
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
		return nil, fmt.Errorf("cannot reach Redis at %s: %w%s", cfg.Redacted(), rootCause(err), tlsHint(cfg, err))
	}
	return c, nil
}

// tlsHint explains a TLS connection the server dropped right after the
// handshake: with TLS 1.3 a server that wants a client certificate (or
// refuses the one given) says so only by closing the connection, which
// reads as "connection reset by peer"; and one that never answered: a
// plaintext server waits for the end of a "command" (the TLS hello) that
// never comes.
func tlsHint(cfg bus.Config, err error) string {
	if !strings.HasPrefix(cfg.URL, "rediss://") {
		return ""
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return " (no TLS handshake: is the server speaking TLS on that port? a plaintext Redis wants a redis:// URL)"
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) ||
		strings.Contains(err.Error(), "certificate required") || strings.Contains(err.Error(), "bad certificate") {
		if cfg.TLS == nil || len(cfg.TLS.Certificates) == 0 {
			return " (the server closed the TLS connection: it probably requires a client certificate: --tls-cert and --tls-key)"
		}
		return " (the server closed the TLS connection: it probably refuses this client certificate: is it signed by the CA the server trusts?)"
	}
	return ""
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

// ConnFlags are how every command that connects finds Redis besides the
// URL: the password (never needed in argv) and TLS. Register them on a
// flag set, then Apply them to a bus.Config.
type ConnFlags struct {
	PasswordFile string
	TLS          TLSFlags
	// Cluster, MasterSet and SentinelPasswordFile: Redis Cluster and
	// Sentinel (docs/cluster.md).
	Cluster              bool
	MasterSet            string
	SentinelPasswordFile string
}

// ConnFlagNames are the flags Register adds (each also read from
// MYCELIUM_<NAME> by the commands).
var ConnFlagNames = []string{"redis-password-file", "tls-ca", "tls-cert", "tls-key", "tls-server-name", "tls-insecure-skip-verify",
	"cluster", "sentinel-master", "sentinel-password-file"}

// Register adds --redis-password-file and the --tls-* flags to fs.
func (f *ConnFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.PasswordFile, "redis-password-file", "", "read the Redis password from this file instead of the URL (else "+PasswordEnv+"); keeps it out of argv")
	fs.StringVar(&f.TLS.CA, "tls-ca", "", "rediss://: PEM file of the CA(s) that signed the server's certificate (default: the system's)")
	fs.StringVar(&f.TLS.Cert, "tls-cert", "", "rediss://: PEM client certificate, for mutual TLS (with --tls-key)")
	fs.StringVar(&f.TLS.Key, "tls-key", "", "rediss://: PEM private key of --tls-cert")
	fs.StringVar(&f.TLS.ServerName, "tls-server-name", "", "rediss://: the name the server's certificate must carry (default: the URL's host)")
	fs.BoolVar(&f.TLS.InsecureSkipVerify, "tls-insecure-skip-verify", false, "rediss://: do not check the server's certificate (warned about at every start; for tests only)")
	fs.BoolVar(&f.Cluster, "cluster", false, "the URL's host is a Redis Cluster node (a URL of several comma-separated hosts implies it)")
	fs.StringVar(&f.MasterSet, "sentinel-master", "", "the URL's hosts are Redis Sentinels watching this master set (or master_set=NAME in the URL)")
	fs.StringVar(&f.SentinelPasswordFile, "sentinel-password-file", "", "read the sentinels' password from this file (else "+SentinelPasswordEnv+")")
}

// SentinelPasswordEnv holds the sentinels' password when no file is given.
const SentinelPasswordEnv = "MYCELIUM_SENTINEL_PASSWORD"

// Apply sets cfg's password (see Password) and TLS from the flags. With
// --tls-insecure-skip-verify it prints TLSWarning to warn, prefixed by
// the command's name.
func (f *ConnFlags) Apply(cfg *bus.Config, command string, warn io.Writer) error {
	pw, err := Password(f.PasswordFile)
	if err != nil {
		return err
	}
	tc, err := f.TLS.Config()
	if err != nil {
		return err
	}
	cfg.Password, cfg.TLS = pw, tc
	cfg.Cluster, cfg.MasterSet = f.Cluster, f.MasterSet
	if f.SentinelPasswordFile != "" {
		if cfg.SentinelPassword, err = ReadSecret(f.SentinelPasswordFile, "--sentinel-password-file"); err != nil {
			return err
		}
	} else {
		cfg.SentinelPassword = os.Getenv(SentinelPasswordEnv)
	}
	if f.TLS.InsecureSkipVerify {
		fmt.Fprintln(warn, command+": "+TLSWarning)
	}
	return nil
}

// TLSFlags are the TLS options every command that connects takes.
type TLSFlags struct {
	CA, Cert, Key, ServerName string
	InsecureSkipVerify        bool
}

// Set reports whether any TLS option was given.
func (f TLSFlags) Set() bool {
	return f.CA != "" || f.Cert != "" || f.Key != "" || f.ServerName != "" || f.InsecureSkipVerify
}

// Config builds the tls.Config the flags describe (nil when none was
// given): the CA file's certificates as the only roots, a client
// certificate and key for mutual TLS, the server name to check, TLS 1.2 at
// least. Errors name the file and what is wrong with it.
func (f TLSFlags) Config() (*tls.Config, error) {
	if !f.Set() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName, InsecureSkipVerify: f.InsecureSkipVerify} //nolint:gosec // only with the explicit flag, which warns
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", f.CA)
		}
		tc.RootCAs = pool
	}
	switch {
	case f.Cert != "" && f.Key != "":
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", f.Cert, f.Key, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	case f.Cert != "" || f.Key != "":
		return nil, errors.New("--tls-cert and --tls-key go together (mutual TLS needs both)")
	}
	return tc, nil
}

// TLSWarning is the line a command prints at every start with
// --tls-insecure-skip-verify.
const TLSWarning = "WARNING: --tls-insecure-skip-verify: the Redis server's certificate is not checked; anyone on the path can read and change everything, the password included"

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
	return ReadSecret(file, "--redis-password-file")
}

// ReadSecret reads a secret file given by flag: its content without the
// trailing newline, at most 4 KiB, not empty. Errors never carry the
// content.
func ReadSecret(file, flag string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4<<10+1))
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", flag, file, err)
	}
	if len(b) > 4<<10 {
		return "", fmt.Errorf("%s %s: larger than 4 KiB: not a password file", flag, file)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("%s %s: empty", flag, file)
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
