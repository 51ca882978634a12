package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/egos/mycelium/cmd/bus-bench/internal/bench"
	"github.com/egos/mycelium/cmd/bus-bench/internal/suite"
	"github.com/egos/mycelium/cmd/internal/cli"
)

// run is the whole program: it returns the exit status (0 ok, 1 the run
// had errors, 2 bad flags or Redis unreachable).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "bus-bench: "+cli.OneLine(err.Error()))
		return 2
	}
	tp, stopTracing, err := cli.Tracing(ctx, "bus-bench")
	if err != nil {
		fmt.Fprintln(stderr, "bus-bench: "+cli.OneLine(err.Error()))
		return 2
	}
	defer stopTracing()
	o.TracerProvider = tp
	if o.servePubsub {
		return exitCode(bench.ServePubsub(ctx, &o.Options, stdout), stderr)
	}
	if o.suite != "" {
		err := suite.Run(ctx, suite.Config{Base: o.Options, Name: o.suite, Compare: o.compare, Quick: o.quick, Report: o.report, JSON: o.json, IgnoreTargets: o.ignore}, stdout, stderr)
		return exitCode(err, stderr)
	}
	out, err := bench.Run(ctx, &o.Options, stderr)
	if err != nil {
		return exitCode(err, stderr)
	}
	res := out.Result
	if o.json {
		b, _ := json.Marshal(res)
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		bench.PrintResult(stdout, res)
	}
	if res.Errors > 0 {
		return 1
	}
	return 0
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "bus-bench: "+cli.OneLine(err.Error()))
	if errors.Is(err, bench.ErrUsage) {
		return 2
	}
	return 1
}
