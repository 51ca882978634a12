package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/internal/cli"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command ran and failed (remote error, timeout)
	exitUsage = 2 // bad flag or URL, or Redis unreachable
)

// usageError marks errors that exit with exitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

const usage = `bus-worker: run Mycelium workers and send requests from the shell.

Usage:
  bus-worker serve   (--redis URL | --embedded) [--topic reasoning] [--group workers] [--concurrency 64]
                     [--handler echo|sleep:<dur>[,<jitter>]|http(s)://URL] [--http-addr 127.0.0.1:9464] [--cache-ttl D]
  bus-worker request [--redis URL] [--topic T] (--data STR | --data - | --data-file F) [--timeout D] [--json] [--stages] [--wait-for-responders] [--partition-key K]
                     [--priority L] [--tenant ID]
                     [--cache [--cache-key K] [--max-age D] [--no-cache] [--no-store]]
  bus-worker publish [--redis URL] [--topic T] (--data STR | --data - | --data-file F) [--timeout D] [--partition-key K] [--after D | --idempotency-key K]
                     [--priority L] [--tenant ID]
  bus-worker stats   [--redis URL] [--json] [--watch D]
  bus-worker dlq list   [--redis URL] [--topic T] [--limit 20] [--json]   (every topic's without --topic)
  bus-worker dlq replay [--redis URL] --topic T (--id ID | --all)
  bus-worker dlq purge  [--redis URL] --topic T (--older-than D | --all)
  bus-worker cache stats [--redis URL] --topic T [--json]
  bus-worker cache flush [--redis URL] --topic T [--key K | --data STR]   (one entry, else every one)
  bus-worker topic create|set-partitions [--redis URL] --topic T --partitions N [--json]
  bus-worker topic create|set-scheduling [--redis URL] --topic T [--priorities N] [--weights 4,2,1] [--strict[=false]] [--fair-shards M] [--json]
                     (set-scheduling changes what its flags name and keeps the rest)
  bus-worker topic describe [--redis URL] --topic T [--json]
  bus-worker limit set [--redis URL] --topic T [--rate 600/m [--burst 20]] [--tokens 90000/m [--tokens-burst N]] [--concurrency 8]
                     (fleet-wide limits every worker obeys; "none" or 0 removes one)
  bus-worker limit get|clear [--redis URL] --topic T [--json]
  bus-worker limit pause [--redis URL] --topic T --for D   |   limit resume --topic T
  bus-worker acl --role producer|worker|operator [--prefix myc] [--user NAME] [--topics T1,T2]   (the least-privilege ACL rule)
  bus-worker functions load|list|prune [--redis URL] [--json]   (the bus's Redis functions: the operator loads them)
  bus-worker console [--redis URL] [--prefix myc] [--http-addr 127.0.0.1:8090] [--console-token-file F] [--root-path P]
                     [--refresh 2s] [--history 10m] [--prometheus URL] [--allowed-host NAME,...] [--secure-cookies] [--log-level info]
                     (the web console; read-only unless a token is given: docs/console.md)

Every flag can also be set as MYCELIUM_<FLAG> in the environment (--http-addr is
MYCELIUM_HTTP_ADDR); a flag on the command line wins. Run "bus-worker <command> -h"
for all flags of a command.
`

// run is the whole program: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stdout, stderr)
	case "request":
		err = request(ctx, args[1:], stdout, stderr)
	case "publish":
		err = publish(ctx, args[1:], stdout)
	case "dlq":
		err = dlq(ctx, args[1:], stdout)
	case "stats":
		err = stats(ctx, args[1:], stdout)
	case "cache":
		err = cacheCmd(ctx, args[1:], stdout)
	case "acl":
		err = aclCmd(ctx, args[1:], stdout)
	case "topic":
		err = topicCmd(ctx, args[1:], stdout)
	case "functions":
		err = functionsCmd(ctx, args[1:], stdout)
	case "limit":
		err = limitCmd(ctx, args[1:], stdout)
	case "console":
		err = consoleCmd(ctx, args[1:], stderr)
	default:
		err = usagef("unknown command %q (want serve, request, publish, stats, dlq, cache, topic, limit, functions, console or acl; see bus-worker help)", args[0])
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	}
	msg := err.Error()
	if strings.Contains(msg, "MOVED ") {
		// A cluster node reached as a single server (its user may not ask
		// INFO, so Connect could not tell).
		msg += " (the server is a Redis Cluster node: pass --cluster, or list several nodes in --redis)"
	}
	fmt.Fprintln(stderr, "bus-worker: "+cli.OneLine(msg))
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitError
}

// parseFlags parses args into fs, then fills every flag not given on the
// command line from MYCELIUM_<FLAG>. It returns the names of the flags
// given on the command line.
func parseFlags(fs *flag.FlagSet, args []string) (map[string]bool, error) {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
			return nil, err
		}
		return nil, usagef("%s: %v", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := envName(f.Name)
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = usagef("%s: invalid value %q for %s: %v", fs.Name(), v, env, e)
			}
		}
	})
	return given, err
}

func envName(flagName string) string {
	return "MYCELIUM_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// connFlags are a command's password and TLS flags (see cli.ConnFlags;
// MYCELIUM_REDIS_PASSWORD_FILE, MYCELIUM_TLS_CA... in the environment, like
// every flag).
type connFlags struct{ cli.ConnFlags }

// addConnFlags adds the connection flags to fs.
func addConnFlags(fs *flag.FlagSet) *connFlags {
	f := &connFlags{}
	f.Register(fs)
	return f
}

// apply sets cfg's password and TLS from the flags; errors are usage
// errors.
func (f *connFlags) apply(cfg bus.Config, stderr io.Writer) (bus.Config, error) {
	if err := f.Apply(&cfg, "bus-worker", stderr); err != nil {
		return cfg, usageError{err}
	}
	return cfg, nil
}

// opsConn is how the operator commands (stats, dlq, cache) reach Redis:
// --redis, --prefix and the connection flags.
type opsConn struct {
	redis, prefix string
	conn          *connFlags
}

// addOpsConn adds the operator commands' connection flags to fs.
func addOpsConn(fs *flag.FlagSet) *opsConn {
	o := &opsConn{}
	fs.StringVar(&o.redis, "redis", bus.DefaultURL, "Redis URL (redis:// or rediss://)")
	o.conn = addConnFlags(fs)
	fs.StringVar(&o.prefix, "prefix", bus.DefaultPrefix, "key prefix")
	return o
}

// connect connects as the operator commands do (see connect).
func (o *opsConn) connect(ctx context.Context) (*bus.Client, error) {
	return connect(ctx, bus.Config{URL: o.redis, Prefix: o.prefix, ClientName: "myc-cli"}, o.conn)
}

// connect validates the URL and checks that Redis answers; both failures
// are usage errors (exit 2). cf are the command's connection flags.
func connect(ctx context.Context, cfg bus.Config, cf *connFlags) (*bus.Client, error) {
	cfg, err := cf.apply(cfg, os.Stderr)
	if err != nil {
		return nil, err
	}
	c, err := cli.Connect(ctx, cfg)
	if err != nil {
		return nil, usageError{err}
	}
	return c, nil
}
