package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
)

// topicCmd creates, describes, repartitions and schedules topics.
func topicCmd(ctx context.Context, args []string, stdout io.Writer) error {
	const want = "create, describe, set-partitions or set-scheduling"
	if len(args) == 0 {
		return usagef("topic: want %s (see bus-worker help)", want)
	}
	sub := args[0]
	fs := flag.NewFlagSet("topic "+sub, flag.ContinueOnError)
	oc := addOpsConn(fs)
	topic := fs.String("topic", "", "topic (required)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	var n, levels, shards *int
	var weights *string
	var strict *bool
	switch sub {
	case "create", "set-partitions":
		n = fs.Int("partitions", 0, "partition count, 1 to 1024 (required for set-partitions; create: 1 by default)")
	case "describe":
	case "set-scheduling":
	default:
		return usagef("topic: unknown command %q (want %s)", sub, want)
	}
	if sub == "create" || sub == "set-scheduling" {
		// set-scheduling changes what its flags name, and keeps the rest.
		levels = fs.Int("priorities", 1, "priority levels, 1 to 10 (1: none; level 0 the most urgent; never lowered)")
		weights = fs.String("weights", "", "the levels' weights, level 0 first, comma-separated (default: each level twice the next one's, 4,2,1 for 3)")
		strict = fs.Bool("strict", false, "serve the levels strictly in order (a less urgent level waits while a more urgent one has entries: it starves under load)")
		shards = fs.Int("fair-shards", 0, "tenant fairness: each tenant's entries go to this many of the topic's partitions (0: off)")
	}
	given, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if err := bus.ValidateName("topic", *topic); err != nil {
		return usagef("topic %s: --topic: %v", sub, err)
	}
	if n != nil && sub == "create" && !given["partitions"] {
		*n = 1
	}
	if n != nil && (*n < 1 || *n > bus.MaxPartitions) {
		return usagef("topic %s: --partitions: want 1 to %d, got %d", sub, bus.MaxPartitions, *n)
	}
	scheduled := false
	if levels != nil {
		scheduled = given["priorities"] || given["weights"] || given["strict"] || given["fair-shards"]
		switch {
		case sub == "set-scheduling" && !scheduled:
			return usagef("topic set-scheduling: want --priorities, --weights, --strict or --fair-shards")
		case *levels < 1 || *levels > bus.MaxPriorities:
			return usagef("topic %s: --priorities: want 1 to %d, got %d", sub, bus.MaxPriorities, *levels)
		case *shards < 0 || *shards > bus.MaxPartitions:
			return usagef("topic %s: --fair-shards: want 0 to %d, got %d", sub, bus.MaxPartitions, *shards)
		case n != nil && *shards > *n:
			return usagef("topic %s: --fair-shards: want at most the partition count (%d), got %d", sub, *n, *shards)
		}
		if given["weights"] && given["priorities"] {
			if _, err := inspect.ParseWeights(*weights, *levels); err != nil {
				return usagef("topic %s: --weights: %v", sub, err)
			}
		}
	}
	c, err := oc.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	insp := inspect.New(c)
	var p inspect.Partitions
	switch sub {
	case "create":
		p, err = insp.CreateTopic(ctx, *topic, *n)
	case "set-partitions":
		p, err = insp.SetPartitions(ctx, *topic, *n)
	default:
		p, err = insp.Partitions(ctx, *topic)
		if sub == "set-scheduling" && given["priorities"] && errors.Is(err, bus.ErrCorruptMeta) {
			// A setting nobody can read (written by hand): the flags
			// replace it whole.
			fmt.Fprintf(stdout, "topic %s: replacing a malformed setting (%v)\n", *topic, err)
			p, err = inspect.Partitions{Topic: *topic, Count: bus.MaxPartitions, Levels: 1}, nil
		} else if sub == "set-scheduling" && errors.Is(err, bus.ErrCorruptMeta) {
			return fmt.Errorf("%w (give --priorities, and the other settings, to replace it whole)", err)
		}
	}
	if err != nil {
		return err
	}
	if scheduled {
		// What the flags name changes; the rest of the topic's setting stays.
		s := inspect.Scheduling{Levels: p.Levels, Weights: p.Weights, Strict: p.Strict, Shards: p.Shards}
		if given["priorities"] {
			if *levels < p.Levels {
				return usagef("topic %s: --priorities: %s has %d levels, and levels are never lowered (their entries would be stranded)", sub, *topic, p.Levels)
			}
			if *levels != p.Levels {
				s.Levels, s.Weights = *levels, nil // the new count's default weights, unless --weights
			}
		}
		if given["weights"] {
			if s.Weights, err = inspect.ParseWeights(*weights, s.Levels); err != nil {
				return usagef("topic %s: --weights: %v", sub, err)
			}
		}
		if given["strict"] {
			s.Strict = *strict
		}
		if given["fair-shards"] {
			s.Shards = *shards
		}
		switch {
		case s.Levels < 2 && (given["weights"] || (given["strict"] && *strict)):
			return usagef("topic %s: --weights and --strict need priority levels (--priorities 2 or more)", sub)
		case s.Shards > p.Count:
			return usagef("topic %s: --fair-shards: want at most the partition count (%d), got %d", sub, p.Count, s.Shards)
		}
		if p, err = insp.SetScheduling(ctx, *topic, s); err != nil {
			return err
		}
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(p)
	}
	fmt.Fprintf(stdout, "topic %s: %d partition(s)", p.Topic, p.Count)
	if !p.Set {
		fmt.Fprint(stdout, " (never set)")
	}
	if p.Draining > 0 {
		fmt.Fprintf(stdout, ", %d removed partition(s) still drained", p.Draining)
	}
	if p.Levels > 1 {
		mode := "weighted"
		if p.Strict {
			mode = "strict"
		}
		fmt.Fprintf(stdout, ", %d priority levels (%s, weights %s)", p.Levels, mode, inspect.FormatWeights(p.Weights))
	}
	if p.Shards > 0 {
		fmt.Fprintf(stdout, ", tenant fairness: %d shard(s) per tenant", p.Shards)
	}
	fmt.Fprintf(stdout, "\nstreams: %s\n", strings.Join(p.Streams, " "))
	return nil
}
