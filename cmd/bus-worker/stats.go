package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
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
	redisURL := fs.String("redis", bus.DefaultURL, "Redis URL (redis:// or rediss://)")
	prefix := fs.String("prefix", bus.DefaultPrefix, "key prefix")
	asJSON := fs.Bool("json", false, "one JSON object (per interval with --watch)")
	watch := fs.Duration("watch", 0, "print again every interval until interrupted (e.g. 2s)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *watch < 0 {
		return usagef("stats: --watch must be positive, got %v", *watch)
	}
	c, err := connect(ctx, bus.Config{URL: *redisURL, ClientName: "myc-cli"})
	if err != nil {
		return err
	}
	defer c.Close()
	keys := bus.Keys{Prefix: *prefix}
	for {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := collectStats(qctx, c, keys)
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

// collectStats finds the bus's streams with one SCAN and reads each topic
// in a few O(1) round trips.
func collectStats(ctx context.Context, c rueidis.Client, keys bus.Keys) (*busStats, error) {
	streams, err := bus.ScanStreams(ctx, c, keys.TopicPattern())
	if err != nil {
		return nil, err
	}
	now := time.Now()
	s := &busStats{Time: now.UTC(), Topics: []topicStats{}}
	topics := map[string]bool{}
	replyPrefix := keys.Reply("")
	for _, k := range streams {
		switch {
		case strings.HasSuffix(k, "}:dlq"):
			t, ok := keys.ParseTopic(strings.TrimSuffix(k, ":dlq"))
			if ok {
				topics[t] = true // a topic whose stream is gone may still have dead letters
			}
		case strings.HasPrefix(k, strings.TrimSuffix(replyPrefix, "}")):
			s.ReplyStreams++
		default:
			if t, ok := keys.ParseTopic(k); ok {
				topics[t] = true
			}
		}
	}
	names := make([]string, 0, len(topics))
	for t := range topics {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		ts, err := topicStatsOf(ctx, c, keys, t, now)
		if err != nil {
			return nil, err
		}
		s.Topics = append(s.Topics, ts)
	}
	return s, nil
}

func topicStatsOf(ctx context.Context, c rueidis.Client, keys bus.Keys, topic string, now time.Time) (topicStats, error) {
	key := keys.Topic(topic)
	si, err := bus.Info(ctx, c, key)
	if err != nil {
		return topicStats{}, err
	}
	ts := topicStats{Topic: topic, Length: si.Length, FirstEntryAgeS: age(si.FirstID, now), LastEntryAgeS: age(si.LastID, now),
		Groups: []groupStats{}}
	if ts.DeadLetters, err = c.Do(ctx, c.B().Xlen().Key(keys.DeadLetter(topic)).Build()).AsInt64(); err != nil {
		return ts, fmt.Errorf("XLEN %s: %w", keys.DeadLetter(topic), err)
	}
	for _, g := range si.Groups {
		p, err := bus.PendingSummary(ctx, c, key, g.Name)
		if err != nil {
			return ts, err
		}
		cs, err := bus.Consumers(ctx, c, key, g.Name)
		if err != nil {
			return ts, err
		}
		gs := groupStats{Group: g.Name, Pending: g.Pending, OldestPendingAgeS: age(p.OldestID, now), Lag: g.Lag,
			Consumers: make([]consumerStats, 0, len(cs))}
		for _, ci := range cs {
			gs.Consumers = append(gs.Consumers, consumerStats{Name: ci.Name, IdleS: ci.Idle.Seconds(), Pending: ci.Pending})
		}
		ts.Groups = append(ts.Groups, gs)
	}
	return ts, nil
}

// age is the age in seconds of a stream entry id, 0 for none.
func age(id string, now time.Time) float64 {
	t, ok := bus.IDTime(id)
	if !ok {
		return 0
	}
	return max(now.Sub(t), 0).Seconds()
}

func printStats(w io.Writer, s *busStats) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "TOPIC\tLENGTH\tOLDEST\tNEWEST\tDLQ\tGROUP\tCONSUMERS\tPENDING\tOLDEST PENDING\tLAG\n")
	for _, t := range s.Topics {
		row := fmt.Sprintf("%s\t%d\t%s\t%s\t%d", t.Topic, t.Length, dur(t.FirstEntryAgeS, t.Length), dur(t.LastEntryAgeS, t.Length), t.DeadLetters)
		if len(t.Groups) == 0 {
			fmt.Fprintf(tw, "%s\t-\t0\t0\t-\t-\n", row)
		}
		for _, g := range t.Groups {
			lag := "?"
			if g.Lag >= 0 {
				lag = fmt.Sprint(g.Lag)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", row, g.Group, len(g.Consumers), g.Pending, dur(g.OldestPendingAgeS, g.Pending), lag)
			row = "\t\t\t\t"
		}
	}
	_ = tw.Flush()
	for _, t := range s.Topics {
		for _, g := range t.Groups {
			if len(g.Consumers) == 0 {
				continue
			}
			fmt.Fprintf(w, "\n%s / %s consumers:\n", t.Topic, g.Group)
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "  NAME\tIDLE\tPENDING\n")
			for _, c := range g.Consumers {
				fmt.Fprintf(tw, "  %s\t%s\t%d\n", c.Name, dur(c.IdleS, 1), c.Pending)
			}
			_ = tw.Flush()
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
