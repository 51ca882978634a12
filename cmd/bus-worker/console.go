package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/console"
)

// consoleTokenEnv holds the console's token itself (--console-token-file
// names a file holding it).
const consoleTokenEnv = "MYCELIUM_CONSOLE_TOKEN"

// consoleCmd serves the web console (package console) until interrupted.
func consoleCmd(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("console", flag.ContinueOnError)
	oc := addOpsConn(fs)
	addr := fs.String("http-addr", "127.0.0.1:8090", "address the console listens on (loopback by default: put a TLS proxy in front to reach it from elsewhere)")
	tokenFile := fs.String("console-token-file", "", "file holding the token that allows changes (replay, purge, pause, resume); else "+consoleTokenEnv+"; neither: read-only")
	root := fs.String("root-path", "", "path the console is served under (e.g. /console); empty: the root")
	refresh := fs.Duration("refresh", console.DefaultRefresh, "how often live pages update")
	history := fs.Duration("history", console.DefaultHistory, "how far back the charts go")
	prom := fs.String("prometheus", "", "URL of a Prometheus that scrapes the producers, for the fleet's cache hit ratio")
	logLevel := fs.String("log-level", "info", "debug | info | warn | error (every change is logged at info)")
	hosts := fs.String("allowed-host", "", "host names (comma-separated, no port) browsers may reach it by besides localhost and IP addresses, e.g. the name a proxy serves it under; others are refused (DNS rebinding)")
	secure := fs.Bool("secure-cookies", false, "mark the session cookie Secure (HTTPS only): set it behind a TLS proxy")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	level, err := zerolog.ParseLevel(*logLevel)
	if err != nil || *logLevel == "" || level == zerolog.NoLevel {
		return usagef("console: --log-level %q: want debug, info, warn or error", *logLevel)
	}
	token := os.Getenv(consoleTokenEnv)
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return usagef("console: --console-token-file %s: %v", *tokenFile, errors.Unwrap(err))
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return usagef("console: --console-token-file %s is empty", *tokenFile)
		}
	}
	if token != "" && len(token) < console.MinTokenLen {
		src := consoleTokenEnv
		if *tokenFile != "" {
			src = "--console-token-file " + *tokenFile
		}
		return usagef("console: the token in %s has %d characters, at least %d are needed", src, len(token), console.MinTokenLen)
	}
	cfg := console.Config{RootPath: *root, Token: token, Refresh: *refresh, History: *history, PrometheusURL: *prom, SecureCookies: *secure}
	for h := range strings.SplitSeq(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.AllowedHosts = append(cfg.AllowedHosts, h)
		}
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return usagef("console: --http-addr %q: want host:port", *addr)
	}
	c, err := oc.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	log := newLogger(stderr).Level(level)
	con, err := console.New(c, cfg, console.WithLogger(log))
	if err != nil {
		return usageError{err}
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", *addr)
	if err != nil {
		return usagef("console: --http-addr %s: %v", *addr, err)
	}
	mode := "read-only (no token)"
	if token != "" {
		mode = "changes need the token"
	}
	fmt.Fprintf(stderr, "bus-worker console: serving http://%s%s/ on %s, %s\n", ln.Addr(), strings.TrimSuffix(*root, "/"), c.Redacted(), mode)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		fmt.Fprintln(stderr, "bus-worker console: warning: listening beyond loopback over plain HTTP: whoever reaches it reads every topic's figures and dead letters, and a token or session crosses the network in clear; put a TLS proxy with authentication in front")
	}

	mux := http.NewServeMux()
	if r := strings.TrimSuffix(*root, "/"); r != "" {
		mux.Handle(r+"/", con)
		mux.Handle(r, con)
	} else {
		mux.Handle("/", con)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return runCtx }} // live pages end when the console stops
	done := make(chan error, 2)
	go func() { done <- con.Run(runCtx) }()
	go func() { done <- srv.Serve(ln) }()
	var serveErr error
	waiting := 2
	select {
	case <-ctx.Done():
	case serveErr = <-done:
		waiting--
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	for ; waiting > 0; waiting-- {
		if err := <-done; serveErr == nil {
			serveErr = err
		}
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("console: %w", serveErr)
	}
	return nil
}
