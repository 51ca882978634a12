package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
)

// limitCmd sets, shows and clears a topic's fleet-wide limits, and pauses
// or resumes the topic (docs/flow-control.md).
func limitCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("limit: want set, get, clear, pause or resume (see bus-worker help)")
	}
	sub := args[0]
	fs := flag.NewFlagSet("limit "+sub, flag.ContinueOnError)
	oc := addOpsConn(fs)
	topic := fs.String("topic", "", "topic (required)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	var rate, tokens *string
	var burst, tokensBurst, concurrency *int64
	var pause *time.Duration
	switch sub {
	case "set":
		rate = fs.String("rate", "", "handler calls per interval across the fleet: N/s, N/m or N/h (\"none\": remove)")
		burst = fs.Int64("burst", 0, "calls the rate allows at once (default 1)")
		tokens = fs.String("tokens", "", "token budget per interval across the fleet: N/s, N/m or N/h; each message costs its producer.Cost estimate, corrected by the handler (\"none\": remove)")
		tokensBurst = fs.Int64("tokens-burst", 0, "tokens the budget allows at once (default: one second's worth)")
		concurrency = fs.Int64("concurrency", -1, "handler calls in flight across the fleet (0: remove)")
	case "pause":
		pause = fs.Duration("for", 0, "how long no worker starts a handler (required)")
	case "get", "clear", "resume":
	default:
		return usagef("limit: unknown command %q (want set, get, clear, pause or resume)", sub)
	}
	given, err := parseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	if err := bus.ValidateName("topic", *topic); err != nil {
		return usagef("limit %s: --topic: %v", sub, err)
	}
	var upd func(*inspect.Limits) error
	if sub == "set" {
		if upd, err = limitUpdate(given, *rate, *burst, *tokens, *tokensBurst, *concurrency); err != nil {
			return usagef("limit set: %v", err)
		}
	}
	if sub == "pause" && *pause <= 0 {
		return usagef("limit pause: --for: want a positive duration, got %v", *pause)
	}
	c, err := oc.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	insp := inspect.New(c)
	switch sub {
	case "set":
		l, err := insp.Limits(ctx, *topic)
		if err != nil {
			return err
		}
		if err := upd(&l); err != nil {
			return usagef("limit set: %v", err)
		}
		if err := insp.SetLimits(ctx, *topic, l); err != nil {
			return err
		}
	case "clear":
		if err := insp.ClearLimits(ctx, *topic); err != nil {
			return err
		}
	case "pause":
		if _, err := insp.PauseTopic(ctx, *topic, *pause); err != nil {
			return err
		}
	case "resume":
		if err := insp.ResumeTopic(ctx, *topic); err != nil {
			return err
		}
	}
	l, err := insp.Limits(ctx, *topic)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(limitsJSON(*topic, l))
	}
	v := limitsJSON(*topic, l)
	fmt.Fprintf(stdout, "topic %s: %s\n", *topic, describeLimits(&v))
	return nil
}

// limitUpdate returns what limit set changes of the limits in place: only
// the limits whose flags were given.
func limitUpdate(given map[string]bool, rate string, burst int64, tokens string, tokensBurst, concurrency int64) (func(*inspect.Limits) error, error) {
	if !given["rate"] && !given["burst"] && !given["tokens"] && !given["tokens-burst"] && !given["concurrency"] {
		return nil, fmt.Errorf("give at least one of --rate, --burst, --tokens, --tokens-burst, --concurrency")
	}
	parse := func(flag, s string) (int64, time.Duration, error) {
		if s == "none" {
			return 0, 0, nil
		}
		n, d, err := inspect.ParseRate(s)
		if err != nil {
			return 0, 0, fmt.Errorf("--%s: %w", flag, err)
		}
		return n, d, nil
	}
	var rn, tn int64
	var rd, td time.Duration
	var err error
	if given["rate"] {
		if rn, rd, err = parse("rate", rate); err != nil {
			return nil, err
		}
	}
	if given["tokens"] {
		if tn, td, err = parse("tokens", tokens); err != nil {
			return nil, err
		}
	}
	for name, v := range map[string]int64{"burst": burst, "tokens-burst": tokensBurst, "concurrency": concurrency} {
		if given[name] && (v < 0 || v > inspect.MaxLimit) {
			return nil, fmt.Errorf("--%s: want 0 to %d, got %d", name, int64(inspect.MaxLimit), v)
		}
	}
	return func(l *inspect.Limits) error {
		if given["rate"] {
			l.Rate, l.RateInterval = rn, rd
			if rn == 0 {
				l.Burst = 0
			}
		}
		if given["burst"] {
			l.Burst = burst
		}
		if given["tokens"] {
			l.Tokens, l.TokensInterval = tn, td
			if tn == 0 {
				l.TokensBurst = 0
			}
		}
		if given["tokens-burst"] {
			l.TokensBurst = tokensBurst
		}
		if given["concurrency"] {
			l.Concurrency = concurrency
		}
		return l.Validate()
	}, nil
}

// limitsView is the JSON form of a topic's limits.
type limitsView struct {
	Topic       string `json:"topic"`
	Rate        string `json:"rate,omitempty"`
	Burst       int64  `json:"burst,omitempty"`
	Tokens      string `json:"tokens,omitempty"`
	TokensBurst int64  `json:"tokens_burst,omitempty"`
	Concurrency int64  `json:"concurrency,omitempty"`
	PausedUntil string `json:"paused_until,omitempty"`
}

// describeLimits is one line saying what limits (and pause) hold.
func describeLimits(v *limitsView) string {
	var parts []string
	if v.Rate != "" {
		parts = append(parts, "rate "+v.Rate)
		if v.Burst > 0 {
			parts[len(parts)-1] += fmt.Sprintf(" (burst %d)", v.Burst)
		}
	}
	if v.Tokens != "" {
		parts = append(parts, "tokens "+v.Tokens)
		if v.TokensBurst > 0 {
			parts[len(parts)-1] += fmt.Sprintf(" (burst %d)", v.TokensBurst)
		}
	}
	if v.Concurrency > 0 {
		parts = append(parts, fmt.Sprintf("concurrency %d", v.Concurrency))
	}
	if len(parts) == 0 {
		parts = append(parts, "no limits")
	}
	if v.PausedUntil != "" {
		parts = append(parts, "paused until "+v.PausedUntil)
	}
	return strings.Join(parts, ", ")
}

func limitsJSON(topic string, l inspect.Limits) limitsView {
	v := limitsView{Topic: topic, Rate: inspect.FormatRate(l.Rate, l.RateInterval), Burst: l.Burst,
		Tokens: inspect.FormatRate(l.Tokens, l.TokensInterval), TokensBurst: l.TokensBurst, Concurrency: l.Concurrency}
	if !l.PausedUntil.IsZero() && time.Until(l.PausedUntil) > 0 {
		v.PausedUntil = l.PausedUntil.UTC().Format(time.RFC3339Nano)
	}
	return v
}
