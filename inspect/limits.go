package inspect

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// Limits are a topic's fleet-wide limits (docs/flow-control.md): every
// worker of the topic, on every node, asks for permits before it reads,
// so entries wait in the stream while a limit holds. Zero fields are
// unset. Rate: Rate calls per RateInterval, Burst at once (0: 1). Tokens:
// a budget of Tokens cost units per TokensInterval (each message's cost:
// the caller's estimate, producer.Cost, corrected by the handler,
// consumer.Message.ReportCost), TokensBurst spendable at once (0: one
// second's worth). Concurrency: handler calls in flight across the fleet.
// PausedUntil: the topic's pause (PauseTopic; read only here).
type Limits = redisx.Limits

// MaxLimit bounds every count of a limit.
const MaxLimit = redisx.MaxLimit

// Limits returns topic's limits.
func (i *Inspector) Limits(ctx context.Context, topic string) (Limits, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return Limits{}, fmt.Errorf("inspect: %w", err)
	}
	l, err := i.port.GetLimits(ctx, i.keys.Meta(topic))
	if err != nil {
		return Limits{}, fmt.Errorf("inspect: limits of %s: %w", topic, redisx.Unavailable(err))
	}
	return l, nil
}

// SetLimits replaces topic's limits by l (fields left zero are removed;
// the pause is kept). Workers apply them at their next read, within a
// second when they were reading without limits.
func (i *Inspector) SetLimits(ctx context.Context, topic string, l Limits) error {
	if err := bus.ValidateName("topic", topic); err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	if err := l.Validate(); err != nil {
		return fmt.Errorf("inspect: %w: %w", bus.ErrInvalidConfig, err)
	}
	if err := i.port.SetLimits(ctx, i.keys.Meta(topic), l); err != nil {
		return fmt.Errorf("inspect: set limits of %s: %w", topic, redisx.Unavailable(err))
	}
	return nil
}

// ClearLimits removes topic's limits and pause; its limiter's state
// (arrival times, leases) goes too.
func (i *Inspector) ClearLimits(ctx context.Context, topic string) error {
	if err := bus.ValidateName("topic", topic); err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	if err := i.port.Resume(ctx, i.keys.Meta(topic), i.keys.Control(topic)); err != nil {
		return fmt.Errorf("inspect: clear limits of %s: %w", topic, redisx.Unavailable(err))
	}
	if err := i.port.ClearLimits(ctx, i.keys.Meta(topic)); err != nil {
		return fmt.Errorf("inspect: clear limits of %s: %w", topic, redisx.Unavailable(err))
	}
	if _, err := i.port.Delete(ctx, i.keys.LimitRate(topic), i.keys.LimitTokens(topic), i.keys.LimitLeases(topic), i.keys.LimitExpiry(topic)); err != nil {
		return fmt.Errorf("inspect: clear limits of %s: %w", topic, redisx.Unavailable(err))
	}
	return nil
}

// PauseTopic stops every worker of topic from starting handlers for d
// (from Redis's clock; a longer pause in place is kept) and returns when
// the pause ends. Running handlers finish; entries wait in the stream.
func (i *Inspector) PauseTopic(ctx context.Context, topic string, d time.Duration) (time.Time, error) {
	if err := bus.ValidateName("topic", topic); err != nil {
		return time.Time{}, fmt.Errorf("inspect: %w", err)
	}
	if d <= 0 {
		return time.Time{}, fmt.Errorf("inspect: %w: a pause must be positive", bus.ErrInvalidConfig)
	}
	until, err := i.port.Pause(ctx, i.keys.Meta(topic), i.keys.Control(topic), d)
	if err != nil {
		return time.Time{}, fmt.Errorf("inspect: pause %s: %w", topic, redisx.Unavailable(err))
	}
	return until, nil
}

// ResumeTopic ends topic's pause now.
func (i *Inspector) ResumeTopic(ctx context.Context, topic string) error {
	if err := bus.ValidateName("topic", topic); err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	if err := i.port.Resume(ctx, i.keys.Meta(topic), i.keys.Control(topic)); err != nil {
		return fmt.Errorf("inspect: resume %s: %w", topic, redisx.Unavailable(err))
	}
	return nil
}

// ParseRate parses a rate as the CLI takes it: "N/s", "N/m" or "N/h" (N a
// positive integer), returning N and its interval.
func ParseRate(s string) (int64, time.Duration, error) {
	num, unit, ok := strings.Cut(s, "/")
	var d time.Duration
	switch unit {
	case "s":
		d = time.Second
	case "m":
		d = time.Minute
	case "h":
		d = time.Hour
	default:
		ok = false
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil || n < 1 || n > MaxLimit {
		return 0, 0, fmt.Errorf("%w: rate %q: want N/s, N/m or N/h with N from 1 to %d", bus.ErrInvalidConfig, s, int64(MaxLimit))
	}
	return n, d, nil
}

// FormatRate is ParseRate's inverse ("" for no rate).
func FormatRate(n int64, d time.Duration) string {
	switch {
	case n <= 0:
		return ""
	case d == time.Second:
		return fmt.Sprintf("%d/s", n)
	case d == time.Minute:
		return fmt.Sprintf("%d/m", n)
	case d == time.Hour:
		return fmt.Sprintf("%d/h", n)
	}
	return fmt.Sprintf("%d/%v", n, d)
}
