package main

import (
	"context"
	"encoding/json"
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
	var sched inspect.Scheduling
	scheduled := false
	if levels != nil {
		scheduled = given["priorities"] || given["weights"] || given["strict"] || given["fair-shards"]
		if *levels < 1 || *levels > bus.MaxPriorities {
			return usagef("topic %s: --priorities: want 1 to %d, got %d", sub, bus.MaxPriorities, *levels)
		}
		sched = inspect.Scheduling{Levels: *levels, Strict: *strict, Shards: *shards}
		if *weights != "" {
			if sched.Weights, err = inspect.ParseWeights(*weights, *levels); err != nil {
				return usagef("topic %s: --weights: %v", sub, err)
			}
		}
		if *shards < 0 || *shards > bus.MaxPartitions {
			return usagef("topic %s: --fair-shards: want 0 to %d, got %d", sub, bus.MaxPartitions, *shards)
		}
		if n != nil && *shards > *n {
			return usagef("topic %s: --fair-shards: want at most the partition count (%d), got %d", sub, *n, *shards)
		}
		if sub == "set-scheduling" && !scheduled {
			return usagef("topic set-scheduling: want --priorities, --weights, --strict or --fair-shards")
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
		if err == nil && scheduled {
			p, err = insp.SetScheduling(ctx, *topic, sched)
		}
	case "set-partitions":
		p, err = insp.SetPartitions(ctx, *topic, *n)
	case "set-scheduling":
		p, err = insp.SetScheduling(ctx, *topic, sched)
	default:
		p, err = insp.Partitions(ctx, *topic)
	}
	if err != nil {
		return err
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
