package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
)

// dlq inspects and repairs a topic's dead-letter stream.
func dlq(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("dlq: want list, replay or purge (see bus-worker help)")
	}
	sub := args[0]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	redisURL := fs.String("redis", bus.DefaultURL, "Redis URL (redis:// or rediss://)")
	prefix := fs.String("prefix", bus.DefaultPrefix, "key prefix")
	topic := fs.String("topic", "reasoning", "topic")
	var (
		limit     *int
		asJSON    *bool
		id        *string
		all       *bool
		olderThan *time.Duration
	)
	switch sub {
	case "list":
		limit = fs.Int("limit", 20, "most entries to show, oldest first (0: all)")
		asJSON = fs.Bool("json", false, "one JSON object per line")
	case "replay":
		id = fs.String("id", "", "dead-letter entry id to replay")
		all = fs.Bool("all", false, "replay every entry")
	case "purge":
		olderThan = fs.Duration("older-than", 0, "delete entries older than this")
		all = fs.Bool("all", false, "delete every entry")
	default:
		return usagef("dlq: unknown command %q (want list, replay or purge)", sub)
	}
	if _, err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if err := bus.ValidateName("topic", *topic); err != nil {
		return usagef("dlq %s: --topic: %v", sub, err)
	}
	switch {
	case sub == "replay" && (*id == "") == !*all:
		return usagef("dlq replay: give exactly one of --id ID or --all")
	case sub == "purge" && (*olderThan > 0) == *all:
		return usagef("dlq purge: give exactly one of --older-than D or --all")
	case sub == "purge" && *olderThan < 0:
		return usagef("dlq purge: --older-than must be positive")
	case sub == "list" && *limit < 0:
		return usagef("dlq list: --limit must not be negative")
	}
	c, err := connect(ctx, bus.Config{URL: *redisURL, Prefix: *prefix, ClientName: "myc-cli"})
	if err != nil {
		return err
	}
	defer c.Close()
	insp := inspect.New(c)
	switch sub {
	case "list":
		letters, err := insp.DeadLetters(ctx, *topic, *limit)
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			for i := range letters {
				if err := enc.Encode(&letters[i]); err != nil {
					return err
				}
			}
			return nil
		}
		return printDeadLetters(stdout, *topic, letters)
	case "replay":
		var ids []string
		if *id != "" {
			ids = []string{*id}
		}
		n, err := insp.ReplayDeadLetters(ctx, *topic, ids...)
		fmt.Fprintf(stdout, "replayed %d dead letter(s) onto %q\n", n, *topic)
		return err
	default: // purge
		n, err := insp.PurgeDeadLetters(ctx, *topic, *olderThan)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "deleted %d dead letter(s) of %q\n", n, *topic)
		return nil
	}
}

func printDeadLetters(w io.Writer, topic string, letters []inspect.DeadLetter) error {
	if len(letters) == 0 {
		_, err := fmt.Fprintf(w, "no dead letters for %q\n", topic)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tORIGINAL ID\tREASON\tATTEMPTS\tAGE\tPAYLOAD\tERROR")
	for _, d := range letters {
		payload := "malformed"
		if d.Envelope != nil {
			payload = fmt.Sprintf("%s, %d B", d.Envelope.Kind, len(d.Envelope.Payload))
		}
		age := "-"
		if !d.Time.IsZero() {
			age = time.Since(d.Time).Round(time.Second).String()
		}
		msg := strings.Join(strings.Fields(d.Error), " ")
		if len(msg) > 80 {
			msg = msg[:77] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.ID, d.OriginalID, d.Reason, d.Attempts, age, payload, msg)
	}
	return tw.Flush()
}
