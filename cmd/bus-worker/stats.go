package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/egos/mycelium/cmd/internal/cli"
	"github.com/egos/mycelium/inspect"
)

// topicStats is one topic in `bus-worker stats`; the JSON names are a
// contract for scripts.
type topicStats struct {
	Topic          string       `json:"topic"`
	Length         int64        `json:"length"`
	FirstEntryAgeS float64      `json:"first_entry_age_seconds"`
	LastEntryAgeS  float64      `json:"last_entry_age_seconds"`
	DeadLetters    int64        `json:"dead_letters"`
	Groups         []groupStats `json:"groups"`
	// Partitions written to, and removed ones still drained (every
	// figure above adds up the partitions).
	Partitions int `json:"partitions"`
	Draining   int `json:"draining_partitions"`
	// Delayed events not yet due and entries waiting for a delayed retry.
	Delayed int64 `json:"delayed"`
	// Limits: the topic's fleet-wide limits and pause (bus-worker limit),
	// absent when none.
	Limits *limitsView `json:"limits,omitempty"`
	// Priorities: each priority level's figures (a topic with priority
	// levels; the figures above add them up).
	Priorities []inspect.LevelFigures `json:"priorities,omitempty"`
	// PriorityStrict: the levels are served strictly in order (their
	// weights then do nothing).
	PriorityStrict bool `json:"priority_strict,omitempty"`
	// Error: why the topic could not be read (its figures are then zero).
	Error string `json:"error,omitempty"`
}

type groupStats struct {
	Group             string          `json:"group"`
	Pending           int64           `json:"pending"`
	OldestPendingAgeS float64         `json:"oldest_pending_age_seconds"`
	Lag               int64           `json:"lag"` // -1: Redis cannot tell
	Consumers         []consumerStats `json:"consumers"`
}

type consumerStats struct {
	Name    string  `json:"name"`
	IdleS   float64 `json:"idle_seconds"`
	Pending int64   `json:"pending"`
	// LastBeatS: seconds since it last announced itself (a live worker
	// does every few seconds, idle or not); -1: not in the presence set.
	LastBeatS float64 `json:"last_beat_seconds"`
}

type busStats struct {
	Time         time.Time    `json:"time"`
	Topics       []topicStats `json:"topics"`
	ReplyStreams int          `json:"reply_streams"`
}

// stats prints, per topic, what an operator checks first: backlog, pending
// work, stuck consumers and dead letters.
func stats(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	oc := addOpsConn(fs)
	asJSON := fs.Bool("json", false, "one JSON object (per interval with --watch)")
	watch := fs.Duration("watch", 0, "print again every interval until interrupted (e.g. 2s)")
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *watch < 0 {
		return usagef("stats: --watch must be positive, got %v", *watch)
	}
	c, err := oc.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	insp := inspect.New(c)
	for {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := collectStats(qctx, insp)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted while watching
			}
			return fmt.Errorf("stats: %w", err)
		}
		if *asJSON {
			if err := json.NewEncoder(stdout).Encode(s); err != nil {
				return err
			}
		} else {
			printStats(stdout, s)
		}
		if *watch == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*watch):
		}
		if !*asJSON {
			fmt.Fprintln(stdout)
		}
	}
}

// collectStats reads the whole bus (inspect.Overview) into the printed
// shape.
func collectStats(ctx context.Context, insp *inspect.Inspector) (*busStats, error) {
	o, err := insp.Overview(ctx)
	if err != nil {
		return nil, err
	}
	s := &busStats{Time: o.Time.UTC(), Topics: make([]topicStats, 0, len(o.Topics)), ReplyStreams: len(o.ReplyStreams)}
	for _, t := range o.Topics {
		ts := topicStats{Topic: t.Name, Length: t.Length, FirstEntryAgeS: t.FirstEntryAge.Seconds(), LastEntryAgeS: t.LastEntryAge.Seconds(),
			DeadLetters: t.DeadLetters, Groups: make([]groupStats, 0, len(t.Groups)), Partitions: max(t.Partitions, 1), Draining: t.Draining,
			Delayed: t.Delayed, Error: t.Err, Priorities: t.ByLevel, PriorityStrict: t.Strict}
		if l := t.Limits; l.Set() || time.Until(l.PausedUntil) > 0 {
			v := limitsJSON(t.Name, l)
			ts.Limits = &v
		}
		for _, g := range t.Groups {
			gs := groupStats{Group: g.Name, Pending: g.Pending, OldestPendingAgeS: g.OldestPendingAge.Seconds(), Lag: g.Lag,
				Consumers: make([]consumerStats, 0, len(g.Consumers))}
			for _, ci := range g.Consumers {
				beat := -1.0
				if ci.LastBeat >= 0 {
					beat = ci.LastBeat.Seconds()
				}
				gs.Consumers = append(gs.Consumers, consumerStats{Name: ci.Name, IdleS: ci.Idle.Seconds(), Pending: ci.Pending, LastBeatS: beat})
			}
			ts.Groups = append(ts.Groups, gs)
		}
		s.Topics = append(s.Topics, ts)
	}
	return s, nil
}

func printStats(w io.Writer, s *busStats) {
	w = cli.PrintableWriter(w) // group and consumer names come from Redis
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "TOPIC\tLENGTH\tOLDEST\tNEWEST\tDLQ\tDELAYED\tGROUP\tCONSUMERS\tPENDING\tOLDEST PENDING\tLAG (UNREAD)\n")
	for _, t := range s.Topics {
		if t.Error != "" {
			fmt.Fprintf(tw, "%s\tunreadable: %s\n", t.Topic, t.Error)
			continue
		}
		row := fmt.Sprintf("%s\t%d\t%s\t%s\t%d\t%d", t.Topic, t.Length, dur(t.FirstEntryAgeS, t.Length), dur(t.LastEntryAgeS, t.Length), t.DeadLetters, t.Delayed)
		if len(t.Groups) == 0 {
			fmt.Fprintf(tw, "%s\t-\t0\t0\t-\t-\n", row)
		}
		for _, g := range t.Groups {
			lag := "?"
			if g.Lag >= 0 {
				lag = fmt.Sprint(g.Lag)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", row, g.Group, len(g.Consumers), g.Pending, dur(g.OldestPendingAgeS, g.Pending), lag)
			row = "\t\t\t\t\t"
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "(DELAYED: events not yet due and entries waiting for a retry; LAG (UNREAD): entries not yet delivered to the group, ? when Redis cannot tell)")
	for _, t := range s.Topics {
		for _, g := range t.Groups {
			if len(g.Consumers) == 0 {
				continue
			}
			fmt.Fprintf(w, "\n%s / %s consumers:\n", t.Topic, g.Group)
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "  NAME\tLAST BEAT\tIDLE\tPENDING\n")
			for _, c := range g.Consumers {
				beat := "none (gone?)"
				if c.LastBeatS >= 0 {
					beat = dur(c.LastBeatS, 1) + " ago"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\n", c.Name, beat, dur(c.IdleS, 1), c.Pending)
			}
			_ = tw.Flush()
		}
	}
	for _, t := range s.Topics {
		if t.Limits != nil {
			fmt.Fprintf(w, "\n%s: limits: %s\n", t.Topic, describeLimits(t.Limits))
		}
	}
	for _, t := range s.Topics {
		if len(t.Priorities) == 0 {
			continue
		}
		mode, weight := "weighted", func(l inspect.LevelFigures) string { return strconv.Itoa(l.Weight) }
		if t.PriorityStrict {
			mode, weight = "strict: each level waits for the more urgent ones", func(inspect.LevelFigures) string { return "-" }
		}
		fmt.Fprintf(w, "\n%s: %d priority levels, %s (figures above are their sums)\n", t.Topic, len(t.Priorities), mode)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  LEVEL\tWEIGHT\tLENGTH\tPENDING\tLAG")
		for _, l := range t.Priorities {
			lag := strconv.FormatInt(l.Lag, 10)
			if l.Lag < 0 {
				lag = "?"
			}
			fmt.Fprintf(tw, "  %d\t%s\t%d\t%d\t%s\n", l.Level, weight(l), l.Length, l.Pending, lag)
		}
		_ = tw.Flush()
	}
	for _, t := range s.Topics {
		if t.Partitions > 1 || t.Draining > 0 {
			fmt.Fprintf(w, "\n%s: %d partitions (figures above are their sums)", t.Topic, t.Partitions)
			if t.Draining > 0 {
				fmt.Fprintf(w, ", %d removed ones still drained", t.Draining)
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, "\nreply streams: %d\n", s.ReplyStreams)
}

// dur prints seconds as a rounded duration, "-" when there is nothing to age.
func dur(sec float64, n int64) string {
	if n == 0 {
		return "-"
	}
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}
