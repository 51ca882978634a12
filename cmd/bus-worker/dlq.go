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
	"unicode/utf8"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/internal/cli"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/inspect"
)

// dlq inspects and repairs a topic's dead-letter stream.
func dlq(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("dlq: want list, replay or purge (see bus-worker help)")
	}
	sub := args[0]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	oc := addOpsConn(fs)
	topic := fs.String("topic", "", "topic (list: every topic's when empty; replay and purge need it)")
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
	switch {
	case *topic == "" && sub != "list":
		return usagef("dlq %s: give --topic (it changes that topic's dead letters)", sub)
	case *topic != "":
		if err := bus.ValidateName("topic", *topic); err != nil {
			return usagef("dlq %s: --topic: %v", sub, err)
		}
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
	c, err := oc.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	insp := inspect.New(c)
	switch sub {
	case "list":
		letters, err := listDeadLetters(ctx, insp, *topic, *limit)
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			for i := range letters {
				if err := enc.Encode(dlqLine(&letters[i])); err != nil {
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

// dlqJSON is one line of dlq list --json: the dead letter, its envelope in
// the wire format's snake_case names (docs/wire.md), the payload as text
// when it is UTF-8, else base64 in payload_b64.
type dlqJSON struct {
	inspect.DeadLetter
	Envelope *envelopeJSON `json:"envelope,omitempty"`
}

type envelopeJSON struct {
	Kind         string            `json:"kind"`
	ID           string            `json:"id,omitempty"`
	ReplyTo      string            `json:"reply_to,omitempty"`
	Deadline     *time.Time        `json:"deadline,omitempty"`
	Sent         time.Time         `json:"sent"`
	Attempt      uint32            `json:"attempt,omitempty"`
	Headers      map[string]string `json:"headers,omitempty"`
	Payload      *string           `json:"payload,omitempty"`
	PayloadB64   []byte            `json:"payload_b64,omitempty"`
	CacheKey     string            `json:"cache_key,omitempty"`
	RequestEntry string            `json:"request_entry,omitempty"`
	Stream       bool              `json:"stream,omitempty"`
}

func dlqLine(d *inspect.DeadLetter) dlqJSON {
	out := dlqJSON{DeadLetter: *d}
	if e := d.Envelope; e != nil {
		j := &envelopeJSON{Kind: e.Kind.String(), ID: e.ID, ReplyTo: e.ReplyTo, Sent: time.Unix(0, e.Sent).UTC(), Attempt: e.Attempt,
			Headers: e.Headers, CacheKey: e.CacheKey, RequestEntry: e.RequestEntry, Stream: e.Flags&codec.FlagStream != 0}
		if e.Deadline != 0 {
			dl := time.Unix(0, e.Deadline).UTC()
			j.Deadline = &dl
		}
		if utf8.Valid(e.Payload) {
			text := string(e.Payload)
			j.Payload = &text
		} else {
			j.PayloadB64 = e.Payload
		}
		out.Envelope = j
	}
	return out
}

// printDeadLetters prints letters as a table, with a TOPIC column when they
// are every topic's (topic "").
func printDeadLetters(w io.Writer, topic string, letters []inspect.DeadLetter) error {
	if len(letters) == 0 {
		var err error
		if topic == "" {
			_, err = fmt.Fprintln(w, "no dead letters")
		} else {
			_, err = fmt.Fprintf(w, "no dead letters for %q\n", topic)
		}
		return err
	}
	tw := tabwriter.NewWriter(cli.PrintableWriter(w), 0, 4, 2, ' ', 0) // dead letters hold anything
	if topic == "" {
		fmt.Fprint(tw, "TOPIC\t")
	}
	fmt.Fprintln(tw, "ID\tORIGINAL ID\tREASON\tATTEMPTS\tAGE\tPAYLOAD\tERROR")
	for _, d := range letters {
		if topic == "" {
			fmt.Fprintf(tw, "%s\t", d.Topic)
		}
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

// listDeadLetters reads topic's dead letters, or with topic "" every
// topic's (each topic's first limit).
func listDeadLetters(ctx context.Context, insp *inspect.Inspector, topic string, limit int) ([]inspect.DeadLetter, error) {
	if topic != "" {
		return insp.DeadLetters(ctx, topic, limit)
	}
	topics, err := insp.Topics(ctx)
	if err != nil {
		return nil, err
	}
	var all []inspect.DeadLetter
	for _, t := range topics {
		letters, err := insp.DeadLetters(ctx, t, limit)
		if err != nil {
			return nil, err
		}
		for i := range letters {
			if letters[i].Topic == "" { // a dead letter that does not say: the stream it is in does
				letters[i].Topic = t
			}
		}
		all = append(all, letters...)
	}
	return all, nil
}
