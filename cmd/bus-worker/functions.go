package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/egos/mycelium/inspect"
)

// functionsCmd loads, lists and prunes the bus's Redis functions (the
// operator's step before producers and workers with least-privilege users
// run scripts).
func functionsCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("functions: want load, list or prune (see bus-worker help)")
	}
	sub := args[0]
	fs := flag.NewFlagSet("functions "+sub, flag.ContinueOnError)
	oc := addOpsConn(fs)
	var asJSON *bool
	switch sub {
	case "load", "prune":
	case "list":
		asJSON = fs.Bool("json", false, "print one JSON array")
	default:
		return usagef("functions: unknown command %q (want load, list or prune)", sub)
	}
	if _, err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	c, err := oc.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	insp := inspect.New(c)
	switch sub {
	case "load":
		if err := insp.LoadFunctions(ctx); err != nil {
			return fmt.Errorf("functions load: %w", err)
		}
		fmt.Fprintf(stdout, "loaded %s (or it was there)\n", inspect.FunctionsLibrary())
	case "prune":
		deleted, err := insp.DeleteOldFunctions(ctx)
		for _, d := range deleted {
			fmt.Fprintf(stdout, "deleted %s\n", d)
		}
		if err != nil {
			return fmt.Errorf("functions prune: %w", err)
		}
		if len(deleted) == 0 {
			fmt.Fprintln(stdout, "no other library of the bus")
		}
	case "list":
		libs, err := insp.Functions(ctx)
		if err != nil {
			return fmt.Errorf("functions list: %w", err)
		}
		if *asJSON {
			if libs == nil {
				libs = []inspect.FunctionLibrary{}
			}
			return json.NewEncoder(stdout).Encode(libs)
		}
		if len(libs) == 0 {
			fmt.Fprintf(stdout, "no library of the bus loaded (this build's is %s: bus-worker functions load)\n", inspect.FunctionsLibrary())
		}
		for _, l := range libs {
			mark := ""
			if l.Current {
				mark = " (this build's)"
			}
			node := ""
			if l.Node != "" {
				node = l.Node + " "
			}
			fmt.Fprintf(stdout, "%s%s%s: %s\n", node, l.Name, mark, strings.Join(l.Functions, " "))
		}
	}
	return nil
}
