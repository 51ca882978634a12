package redisx

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/rueidis"
)

// Port is the bus's Redis port: producer, consumer and inspect reach Redis
// through it (each through an interface of the methods it uses, declared
// where it is consumed), never through bus.Client.Redis(). Its methods are
// this package's functions (port_ops.go) with the rules the callers used
// to apply one by one:
//
//   - No caller deadline reaches the client: a non-blocking command runs
//     under a ctx without the caller's deadline, cancelled when the
//     caller's ctx ends (Detach: rueidis closes a connection whose command
//     overran its ctx's deadline, and every other command on it then waits
//     for a reconnection; 300 ms calls once took 2.1 s that way). Blocking
//     reads (those with a block argument) keep their ctx: its deadline is
//     the read watchdog's (ReadDeadline), on a dedicated connection.
//   - Errors come classified (IsConnErr, IsPermission, IsNoGroup,
//     Unavailable): the functions do it, once.
//   - Idempotent reads (partition counts, group and consumer lists,
//     pending entries, server and stream info) are tried once more at once
//     after a connection error: a client reconnects on its own, and the
//     second try usually finds the new connection.
//
// Tests reach the faults of a real Redis through the client a Port wraps
// (internal/faults): Redis paused, commands failing, slow
// replies, error replies, a pipeline cut in the middle.
type Port struct {
	rc rueidis.Client
}

// NewPort returns a Port over rc.
func NewPort(rc rueidis.Client) *Port { return &Port{rc: rc} }

// PortOf returns a Port over the client c holds (a *bus.Client: this
// package cannot import bus, which imports it).
func PortOf(c interface{ Redis() rueidis.Client }) *Port { return &Port{rc: c.Redis()} }

// detach applies the first rule: ctx without its deadline when it has one
// (no allocation otherwise).
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok {
		return ctx, func() {}
	}
	return Detach(ctx)
}

// overran returns err, or, when the caller's ctx ended by its deadline
// while the detached command ran (then cancelled: context.Canceled), an
// error that says so: the caller sees its deadline, as if the command had
// carried it (context.DeadlineExceeded).
func overran(ctx context.Context, err error) error {
	if err != nil && errors.Is(err, context.Canceled) && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("redis: the command overran its caller's deadline: %w", context.DeadlineExceeded)
	}
	return err
}

// retryable reports whether a read that failed with err may be tried once
// more: a connection error while its caller still waits.
func retryable(ctx context.Context, err error) bool {
	return err != nil && IsConnErr(err) && ctx.Err() == nil
}
