package producer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
)

// topic is what a producer keeps per topic: its stream key, breaker,
// responders check, cache settings, control stream and partitions. A
// partition after the first is a topic too (parent set, idx its number),
// with its own stream key and breaker. (The redesign of issue 25 splits
// these into admission, partitioner and cache components.)
type topic struct {
	name     string
	key      string
	presence string           // its workers' presence set
	br       *breaker.Breaker // nil when breakers are off
	// rejected counts calls the open breaker refused (the producer's
	// Stats.BreakerRejected).
	rejected *atomic.Uint64
	resp     *responders
	cache    *topicCache // nil when the topic is not cached
	// parts is the topic's partition count and its partitions after the
	// first (see partition.go); parent is set on those partitions.
	parts  parts
	parent *topic
	ctl    string // the topic's control stream (cancel notices, wake-ups)
	idx    int    // its partition number (0 for a topic itself)
}

// topicFor returns the cached topic, creating (and validating) it once.
func (p *Producer) topicFor(name string) (*topic, error) {
	if t, ok := p.topics.Load(name); ok {
		return t.(*topic), nil
	}
	if err := bus.ValidateName("topic", name); err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	t := &topic{name: name, key: p.keys.Topic(name), presence: p.keys.Workers(name), rejected: &p.stats.breakerRejected, resp: newResponders(),
		ctl: p.keys.Control(name)}
	if cc, ok := p.cfg.Cache[name]; ok {
		t.cache = &topicCache{cfg: cc, meta: p.keys.Meta(name)}
	}
	br, err := p.newBreaker(name)
	if err != nil {
		return nil, err
	}
	t.br = br
	if prev, loaded := p.topics.LoadOrStore(name, t); loaded {
		if t.br != nil {
			t.br.Close()
		}
		return prev.(*topic), nil
	}
	return t, nil
}

// newBreaker returns the breaker of a topic or partition (nil when breakers
// are off).
func (p *Producer) newBreaker(name string) (*breaker.Breaker, error) {
	if p.cfg.NoBreaker {
		return nil, nil
	}
	br, err := breaker.New(p.cfg.Breaker, breaker.WithStateChange(func(from, to breaker.State) {
		lvl := zerolog.WarnLevel
		if to == breaker.Closed {
			lvl = zerolog.InfoLevel
		}
		p.log.WithLevel(lvl).Str("topic", name).Str("from", from.String()).Str("to", to.String()).Msg("circuit breaker")
	}))
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	return br, nil
}

// admit asks the topic's breaker for a call.
func (t *topic) admit() (breaker.Token, error) {
	if t.br == nil {
		return breaker.Token{}, nil
	}
	tok, err := t.br.Allow()
	if err != nil {
		t.rejected.Add(1)
		return tok, fmt.Errorf("producer: %s: %w: %w", t.name, bus.ErrBreakerOpen, err)
	}
	return tok, nil
}

// report reports a call's error to the topic's breaker.
func (p *Producer) report(t *topic, tok breaker.Token, err error, start time.Time) {
	if t.br == nil {
		return
	}
	var d time.Duration
	if p.cfg.Breaker.SlowCall > 0 {
		d = time.Since(start)
	}
	t.br.Done(tok, p.outcome(err), d)
}

// outcome classifies a call's error for the breaker: the bus failed on
// timeouts and Redis errors; callers cancelling, closing the producer or
// waiting for a local slot say nothing about Redis or the workers.
func (p *Producer) outcome(err error) breaker.Outcome {
	if err == nil { // first, so the common case allocates nothing for errors.As
		return breaker.Success
	}
	var re *bus.RemoteError
	switch {
	case errors.As(err, &re):
		if p.cfg.RemoteErrorsTrip {
			return breaker.Failure
		}
		return breaker.Success
	case errors.Is(err, context.Canceled), errors.Is(err, bus.ErrClosed), errors.Is(err, errSlotWait), errors.Is(err, bus.ErrNoResponders):
		return breaker.Ignored
	}
	return breaker.Failure
}

// errSlotWait marks a timeout spent waiting for a local in-flight slot.
var errSlotWait = errors.New("waiting for an in-flight slot")

// BreakerState returns the state of topic's circuit breaker (of its
// partition 0, for a partitioned topic: each partition has its own), and
// false if the producer has none for it (breakers off, or no call to it
// yet).
func (p *Producer) BreakerState(topicName string) (breaker.State, bool) {
	t, ok := p.topics.Load(topicName)
	if !ok || t.(*topic).br == nil {
		return breaker.Closed, false
	}
	return t.(*topic).br.State(), true
}

// closeBreakers releases every topic's and partition's breaker.
func (p *Producer) closeBreakers() {
	p.topics.Range(func(_, v any) bool {
		t := v.(*topic)
		if t.br != nil {
			t.br.Close()
		}
		if s := t.parts.subs.Load(); s != nil {
			for _, st := range *s {
				if st != nil && st.br != nil {
					st.br.Close()
				}
			}
		}
		return true
	})
}
