// Command bus-bench measures Mycelium end to end: request/reply, publish and
// open-loop scenarios against a Redis server, with in-process echo workers or
// external bus-worker processes. Run `bus-bench -h` for flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
