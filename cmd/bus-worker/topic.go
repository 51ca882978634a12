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

// topicCmd creates, describes and repartitions topics.
func topicCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("topic: want create, describe or set-partitions (see bus-worker help)")
	}
	sub := args[0]
	fs := flag.NewFlagSet("topic "+sub, flag.ContinueOnError)
	oc := addOpsConn(fs)
	topic := fs.String("topic", "", "topic (required)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	var n *int
	switch sub {
	case "create", "set-partitions":
		n = fs.Int("partitions", 0, "partition count, 1 to 1024 (required)")
	case "describe":
	default:
		return usagef("topic: unknown command %q (want create, describe or set-partitions)", sub)
	}
	given, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if err := bus.ValidateName("topic", *topic); err != nil {
		return usagef("topic %s: --topic: %v", sub, err)
	}
	if n != nil && (!given["partitions"] || *n < 1 || *n > bus.MaxPartitions) {
		return usagef("topic %s: --partitions: want 1 to %d, got %d", sub, bus.MaxPartitions, *n)
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
	fmt.Fprintf(stdout, "\nstreams: %s\n", strings.Join(p.Streams, " "))
	return nil
}
