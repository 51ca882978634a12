package producer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Delayed events wait in their partition's delayed set (bus.Keys.Delayed)
// until due; workers move them to the stream then (consumer package,
// "Delays"), woken by a notice on the topic's control stream.

// delaySpec is what After or At chose.
type delaySpec struct {
	at    time.Time     // due at this time (our clock), if set
	after time.Duration // else due this long after Redis accepted it (Redis's clock)
}

// After delays a published event: it is delivered to workers d after Redis
// accepted it (by Redis's clock), not before; d <= 0 publishes at once.
// Only Publish and PublishBatch take it (a DelayOption: a Request or Stream
// with it does not compile). The id Publish returns is then the delayed
// entry's ("d" + a producer-unique id), not a stream entry id.
func After(d time.Duration) DelayOption {
	return func(co *callOptions) {
		if d > 0 {
			co.delay = &delaySpec{after: d}
		} else {
			co.delay = nil
		}
	}
}

// At delays a published event until t (by this process's clock; Redis's
// decides when it is due); a time not in the future publishes at once.
// See After.
func At(t time.Time) DelayOption {
	return func(co *callOptions) {
		if time.Until(t) > 0 {
			co.delay = &delaySpec{at: t}
		} else {
			co.delay = nil
		}
	}
}

// MaxDelay bounds After and At: a longer delay is refused
// (bus.ErrInvalidConfig).
const MaxDelay = 366 * 24 * time.Hour

func (d *delaySpec) check() error {
	if d.after > MaxDelay || (!d.at.IsZero() && time.Until(d.at) > MaxDelay) {
		return fmt.Errorf("producer: %w: delay over %v", bus.ErrInvalidConfig, MaxDelay)
	}
	return nil
}

// delayer publishes delayed events: each in its partition's delayed set
// (one round trip, a script), then a wake-up on the topic's control stream
// for its due time.
type delayer struct {
	port    port
	keys    bus.Keys
	ids     *ids
	cfg     *Config // StreamMaxLen bounds a delayed set too
	parts   *partitioner
	stats   *counters
	timings *metrics.Recorder
	log     zerolog.Logger
}

// one adds one event to pt's delayed set and wakes the topic's workers
// for its due time. It returns the delayed entry's id.
func (dl *delayer) one(ctx context.Context, pt *topic, payload []byte, headers map[string]string, d *delaySpec, now time.Time) (string, error) {
	if err := d.check(); err != nil {
		return "", err
	}
	env := codec.Envelope{Kind: codec.KindEvent, Payload: payload, Sent: now.UnixNano(), Headers: headers}
	id := "d" + dl.ids.id(dl.ids.next())
	codec.Compress(&env, dl.cfg.Compression, dl.cfg.CompressMin) // env is this call's own
	member := make([]byte, 0, len(id)+1+codec.EncodedSize(&env))
	member = codec.AppendEnvelope(append(append(member, id...), ':'), &env)
	dl.timings.Record(metrics.Encode, time.Since(now))
	start := time.Now()
	due, err := dl.port.AddDelayed(ctx, pt.delayed, string(member), d.at, d.after, dl.cfg.StreamMaxLen)
	if err != nil {
		dl.stats.writeErrors.Add(1)
		if errors.Is(err, bus.ErrDelayedFull) {
			return "", fmt.Errorf("producer: publish to %s: %w: it holds StreamMaxLen (%d) entries", pt.root().name, bus.ErrDelayedFull, dl.cfg.StreamMaxLen)
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("producer: publish to %s: %w", pt.root().name, ctx.Err())
		}
		return "", fmt.Errorf("producer: publish to %s: %w", pt.root().name, redisx.Classify(err, "the delayed publish"))
	}
	dl.timings.Record(metrics.Write, time.Since(start))
	dl.stats.published.Add(1)
	dl.stats.delayed.Add(1)
	// Best effort: workers also look at every delayed set every few
	// seconds.
	if err := dl.port.AddControl(ctx, pt.root().ctl, []redisx.Control{{Op: redisx.OpWake, Until: due}}); err != nil {
		dl.log.Debug().Err(err).Msg("wake notice not written; workers find the event on their next pass")
	}
	return id, nil
}

// batch publishes each payload delayed (one round trip each), in its
// partition; like publishBatch, it returns an id per payload ("" for a
// failed one) and an error joining a *PublishError per failure.
func (dl *delayer) batch(ctx context.Context, t *topic, payloads [][]byte, co *callOptions) ([]string, error) {
	ids := make([]string, len(payloads))
	var errs []error
	for i, pl := range payloads {
		now := time.Now()
		pt, err := dl.parts.pick(ctx, t, co, nil, now.UnixNano())
		if err == nil {
			ids[i], err = dl.one(ctx, pt, pl, co.headers, co.delay, now)
		}
		if err != nil {
			errs = append(errs, &PublishError{Index: i, Err: err})
		}
	}
	if errs != nil {
		return ids, fmt.Errorf("producer: publish batch to %s: %d of %d failed: %w", t.name, len(errs), len(payloads), errors.Join(errs...))
	}
	return ids, nil
}
