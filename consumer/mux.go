package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/egos/mycelium/bus"
)

// Router serves several topics in one process, each with its handler: a
// Consumer per topic (its group, reads, reclaims, retries and dead
// letters, as on its own) and one set of handler slots they share. At most
// RouterConfig.Concurrency handlers run at once across the topics; each
// topic runs at most its Config.Concurrency of them (its cap); when several
// topics wait for a slot, freed slots go to them in turn, so a topic with a
// backlog cannot starve one with a trickle. An entry waiting for a slot
// keeps its claim (the heartbeat), and a request whose caller gave up
// meanwhile is acknowledged unhandled, as one arriving late. One Run,
// Serving and Ready serve them all.
//
// Add the topics with Handle, then Run. (asynq's ServeMux and Watermill's
// Router are the same idea; the topics here are named, not matched by a
// pattern: a topic is served by the consumer group created on its stream,
// so the Router must know it. RouterConfig.Default handles the topics
// added without a handler of their own.)
type Router struct {
	c       *bus.Client
	cfg     RouterConfig
	opts    []Option
	mu      sync.Mutex // guards topics before Run
	topics  []*Consumer
	ran     atomic.Bool
	serving chan struct{}
}

// RouterConfig configures a Router.
type RouterConfig struct {
	// Concurrency is how many handlers run at once across every topic.
	// Zero means DefaultConcurrency.
	Concurrency int
	// Default handles the topics added with a nil handler.
	Default Handler
}

// NewRouter returns a Router over c; opts apply to every topic's Consumer.
// It neither dials nor starts goroutines.
func NewRouter(c *bus.Client, cfg RouterConfig, opts ...Option) (*Router, error) {
	if c == nil {
		return nil, fmt.Errorf("consumer: router: %w: nil client", bus.ErrInvalidConfig)
	}
	if cfg.Concurrency < 0 {
		return nil, fmt.Errorf("consumer: router: %w: Concurrency must not be negative", bus.ErrInvalidConfig)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	return &Router{c: c, cfg: cfg, opts: opts, serving: make(chan struct{})}, nil
}

// Handle adds topic, served by h (nil: RouterConfig.Default) with cfg
// (cfg.Topic is set to topic; cfg.Concurrency is the topic's cap, zero
// meaning the Router's Concurrency, and may not exceed it). It returns the
// topic's Consumer (for its Stats and Timings). Call it before Run.
func (r *Router) Handle(topic string, h Handler, cfg Config) (*Consumer, error) {
	if h == nil {
		h = r.cfg.Default
	}
	switch {
	case h == nil:
		return nil, fmt.Errorf("consumer: router: %w: topic %q has no handler and the router no Default", bus.ErrInvalidConfig, topic)
	case cfg.Topic != "" && cfg.Topic != topic:
		return nil, fmt.Errorf("consumer: router: %w: topic %q added with Config.Topic %q", bus.ErrInvalidConfig, topic, cfg.Topic)
	case cfg.Concurrency > r.cfg.Concurrency:
		return nil, fmt.Errorf("consumer: router: %w: topic %q's Concurrency %d exceeds the router's %d (the slots every topic shares)", bus.ErrInvalidConfig, topic, cfg.Concurrency, r.cfg.Concurrency)
	}
	cfg.Topic = topic
	if cfg.Concurrency == 0 {
		cfg.Concurrency = r.cfg.Concurrency
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ran.Load() {
		return nil, fmt.Errorf("consumer: router: %w: Handle after Run", bus.ErrRunning)
	}
	for _, co := range r.topics {
		if co.e.cfg.Topic == topic {
			return nil, fmt.Errorf("consumer: router: %w: topic %q added twice", bus.ErrInvalidConfig, topic)
		}
	}
	co, err := New(r.c, cfg, h, r.opts...)
	if err != nil {
		return nil, err
	}
	co.shareIdx = len(r.topics)
	r.topics = append(r.topics, co)
	return co, nil
}

// Consumers returns the topics' Consumers, in the order they were added.
func (r *Router) Consumers() []*Consumer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Consumer(nil), r.topics...)
}

// Stats returns each topic's Stats by topic name.
func (r *Router) Stats() map[string]Stats {
	out := map[string]Stats{}
	for _, co := range r.Consumers() {
		out[co.e.cfg.Topic] = co.Stats()
	}
	return out
}

// Serving is closed once every topic serves (each Consumer's Serving), or
// Run returned.
func (r *Router) Serving() <-chan struct{} { return r.serving }

// Ready reports whether every topic is ready (see Consumer.Ready).
func (r *Router) Ready(ctx context.Context) error {
	for _, co := range r.Consumers() {
		if err := co.Ready(ctx); err != nil {
			return fmt.Errorf("topic %s: %w", co.e.cfg.Topic, err)
		}
	}
	return nil
}

// Run serves every topic until ctx ends (each Consumer's Run, started
// together) and returns nil once they all shut down. When one topic's Run
// fails (Redis refused a command for good: bus.ErrPermission), the others
// shut down too and Run returns the errors, each naming its topic. A Router
// runs once.
func (r *Router) Run(ctx context.Context) error {
	r.mu.Lock() // no Handle between taking the topics and marking the run
	topics := r.topics
	if len(topics) == 0 {
		r.mu.Unlock()
		return fmt.Errorf("consumer: router: %w: no topic (Handle adds them)", bus.ErrInvalidConfig)
	}
	if !r.ran.CompareAndSwap(false, true) {
		r.mu.Unlock()
		return fmt.Errorf("consumer: router: %w", bus.ErrRunning)
	}
	r.mu.Unlock()
	sh := newShare(r.cfg.Concurrency, len(topics))
	for _, co := range topics {
		co.share = sh
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(topics))
	var wg sync.WaitGroup
	for i, co := range topics {
		wg.Go(func() {
			if err := co.Run(ctx); err != nil {
				errs[i] = fmt.Errorf("topic %s: %w", co.e.cfg.Topic, err)
				cancel()
			}
		})
	}
	// Each Consumer's Serving closes once it joins, or when its Run
	// returns: this goroutine ends with them.
	wg.Go(func() {
		for _, co := range topics {
			<-co.Serving()
		}
		close(r.serving)
	})
	wg.Wait()
	return errors.Join(errs...)
}
