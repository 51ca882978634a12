// Package watermill makes Mycelium a Watermill Pub/Sub backend: a
// message.Publisher over producer.Producer and a message.Subscriber over
// consumer.Consumer, proved by Watermill's universal Pub/Sub suite
// (tests.TestPubSub, run by `make test-watermill`).
//
// It is a module of its own (contrib/watermill/go.mod) so that the core
// module never depends on Watermill: a service that does not use Watermill
// does not download it.
//
// Mapping (README.md in this folder says more):
//   - a Watermill message's metadata travels as the entry's headers, its
//     UUID as the header UUIDHeader; the metadata key PartitionKeyMetadata
//     (when set on a message) is its producer.PartitionKey;
//   - each Watermill consumer group is a consumer group on the topic; a
//     Subscriber without one gets a group of its own (every such
//     subscriber receives every message, from the oldest still in the
//     stream);
//   - Ack acknowledges the entry; Nack redelivers it after the retry
//     backoff, with the consumer's rules (MaxDeliveries, then the topic's
//     dead letters);
//   - one message at a time per Subscribe: the next is delivered after
//     the previous one's Ack or Nack.
package watermill

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
)

// UUIDHeader is the header carrying a Watermill message's UUID.
const UUIDHeader = "wm-uuid"

// PartitionKeyMetadata is the metadata key whose value, when a message has
// it, is the message's partition key (producer.PartitionKey): messages
// with one key land in one partition, in order.
const PartitionKeyMetadata = "partition_key"

// ErrNacked is the error a Nack hands to the consumer's retry rules.
var ErrNacked = errors.New("watermill: message nacked")

// ErrStopped is the error a message gets when its subscription stopped
// before its Ack or Nack: it is delivered again (as after a Nack).
var ErrStopped = errors.New("watermill: subscription stopped before the message was acknowledged")

// ErrClosed is returned by a Publisher or Subscriber used after Close.
var ErrClosed = errors.New("watermill: closed")

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Producer is the producer's configuration (its defaults apply).
	Producer producer.Config
	// PublishTimeout bounds one Publish call (0: 30 s).
	PublishTimeout time.Duration
	// Deduplicate makes each message's write idempotent by its UUID
	// (producer.IdempotencyKey, within Producer.IdempotencyWindow, 2 min)
	// and tries a write that failed with bus.ErrUnavailable (Redis
	// restarting, a connection lost mid-write) or bus.ErrBreakerOpen again,
	// every 20 ms, until PublishTimeout:
	// a write whose answer was lost is then neither lost nor written
	// twice, and Publish returns once Redis is back. Off by default: a
	// message published again on purpose with its UUID to the same topic
	// within the window (middleware.Requeuer) would be taken for a
	// duplicate and dropped. Each write is then one script call (the
	// idempotent publish's) instead of a share of a pipelined write.
	Deduplicate bool
}

// Publisher is a message.Publisher writing Watermill messages as Mycelium
// events.
type Publisher struct {
	p       *producer.Producer
	timeout time.Duration
	dedup   bool
	log     watermill.LoggerAdapter

	mu     sync.RWMutex
	closed bool
}

// NewPublisher returns a Publisher on c (which the caller keeps and
// closes after the Publisher); logger may be nil.
func NewPublisher(c *bus.Client, cfg PublisherConfig, logger watermill.LoggerAdapter) (*Publisher, error) {
	p, err := producer.New(c, cfg.Producer)
	if err != nil {
		return nil, fmt.Errorf("watermill: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	timeout := cfg.PublishTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &Publisher{p: p, timeout: timeout, dedup: cfg.Deduplicate, log: logger}, nil
}

// Publish writes msgs to topic in order, each once Redis accepted the one
// before; it stops at the first failure. A message's context bounds its
// write (and carries its trace context, with the producer's tracing on).
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	for _, msg := range msgs {
		headers := make(map[string]string, len(msg.Metadata)+1)
		maps.Copy(headers, msg.Metadata)
		headers[UUIDHeader] = msg.UUID
		opts := []producer.PublishOption{producer.WithHeaders(headers)}
		if k := msg.Metadata.Get(PartitionKeyMetadata); k != "" {
			opts = append(opts, producer.PartitionKey(k))
		}
		if p.dedup && msg.UUID != "" {
			opts = append(opts, producer.IdempotencyKey(msg.UUID))
		}
		ctx, cancel := context.WithTimeout(msg.Context(), p.timeout)
		err := p.publish(ctx, topic, msg.Payload, opts)
		cancel()
		if err != nil {
			return fmt.Errorf("watermill: publish %s to %s: %w", msg.UUID, topic, err)
		}
	}
	return nil
}

// dedupRetry is how soon a deduplicated write Redis did not answer is
// tried again.
const dedupRetry = 20 * time.Millisecond

// publish writes one message; with Deduplicate, a write Redis did not
// answer is tried again (its UUID keeps it from being written twice)
// until ctx ends.
func (p *Publisher) publish(ctx context.Context, topic string, payload []byte, opts []producer.PublishOption) error {
	for {
		_, err := p.p.Publish(ctx, topic, payload, opts...)
		if err == nil || !p.dedup || !(errors.Is(err, bus.ErrUnavailable) || errors.Is(err, bus.ErrBreakerOpen)) || ctx.Err() != nil {
			return err
		}
		// Soon again: once Redis is back the write goes through at once
		// (the answer it owes is its first write's, if that one landed).
		t := time.NewTimer(dedupRetry)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// Close stops the Publisher: it waits for Publish calls under way and
// closes its producer.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.p.Close(ctx)
}

// SubscriberConfig configures a Subscriber.
type SubscriberConfig struct {
	// ConsumerGroup is the consumer group every Subscribe of this
	// Subscriber joins; "" gives the Subscriber a group of its own
	// ("wm-" and a random id), so it receives every message.
	ConsumerGroup string
	// Consumer names this Subscriber in its group ("" : a random name).
	Consumer string
	// Consumer's settings (Reclaim, Retry, Retention, ...); Topic, Group,
	// Name and Concurrency are set by Subscribe. Retry.Backoff defaults to
	// NackBackoff here: a Nacked message comes back after it. Prefetch
	// defaults to DefaultPrefetch (negative: none).
	Config consumer.Config
	// CloseTimeout bounds Close's wait for the subscriptions to stop (0:
	// 30 s).
	CloseTimeout time.Duration
}

// DefaultClaimIdle is a Subscriber's default consumer.Config.Reclaim.ClaimIdle.
const DefaultClaimIdle = 5 * time.Second

// DefaultPrefetch is how many messages a subscription reads ahead of the
// one handed out (consumer.Config.Prefetch): they wait, in stream order,
// pending in the group and heartbeated, so the next message is handed out
// as soon as the previous one is acknowledged, without a read between
// them (without it, each message waited for its read and its
// predecessor's XACK: two round trips).
const DefaultPrefetch = 16

// NackBackoff is the default delay before a Nacked message is delivered
// again (doubled for each later Nack of it, up to 5 s).
const NackBackoff = 50 * time.Millisecond

// Subscriber is a message.Subscriber reading a topic through a Mycelium
// consumer group.
type Subscriber struct {
	c   *bus.Client
	cfg SubscriberConfig
	log watermill.LoggerAdapter

	mu     sync.Mutex
	closed bool
	subs   sync.WaitGroup
	stop   context.CancelFunc // cancels every subscription
	ctx    context.Context
}

// NewSubscriber returns a Subscriber on c (which the caller keeps and
// closes after the Subscriber); logger may be nil.
func NewSubscriber(c *bus.Client, cfg SubscriberConfig, logger watermill.LoggerAdapter) (*Subscriber, error) {
	if c == nil {
		return nil, fmt.Errorf("watermill: %w: nil client", bus.ErrInvalidConfig)
	}
	if cfg.ConsumerGroup == "" {
		cfg.ConsumerGroup = "wm-" + watermill.NewShortUUID()
	}
	if cfg.Consumer == "" {
		cfg.Consumer = "wm-" + watermill.NewShortUUID()
	}
	for _, n := range []struct{ what, v string }{{"consumer group", cfg.ConsumerGroup}, {"consumer", cfg.Consumer}} {
		if err := bus.ValidateName(n.what, n.v); err != nil {
			return nil, fmt.Errorf("watermill: %w", err)
		}
	}
	if cfg.Config.Retry.Backoff == 0 {
		cfg.Config.Retry.Backoff, cfg.Config.Retry.BackoffMax = NackBackoff, 5*time.Second
	}
	if cfg.Config.Reclaim.ClaimIdle == 0 {
		// An entry Redis delivered as a subscription stopped (its read in
		// flight) is pending with no handler: another reader of the group
		// takes it after ClaimIdle. Subscriptions come and go more often
		// than workers: 5 s, not the consumer's 30 s (handlers holding a
		// message longer keep it: the heartbeat resets its idle time).
		cfg.Config.Reclaim.ClaimIdle = DefaultClaimIdle
	}
	switch {
	case cfg.Config.Prefetch == 0:
		cfg.Config.Prefetch = DefaultPrefetch
	case cfg.Config.Prefetch < 0:
		cfg.Config.Prefetch = 0
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = 30 * time.Second
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Subscriber{c: c, cfg: cfg, log: logger, ctx: ctx, stop: stop}, nil
}

// Subscribe starts reading topic and returns the channel of its messages,
// one at a time: the next comes after the previous one's Ack or Nack. The
// channel closes once ctx ends or the Subscriber closes (a message handed
// out and not yet acknowledged then is delivered again after the retry
// backoff, as after a Nack: at least once). A message's context carries
// ctx's values and ends at its Ack or Nack, or when the subscription
// stops; with tracing on it carries the sender's trace context.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	locked := true
	defer func() {
		if locked {
			s.mu.Unlock()
		}
	}()
	if s.closed {
		return nil, ErrClosed
	}
	cfg := s.cfg.Config
	cfg.Topic, cfg.Group, cfg.Name, cfg.Concurrency = topic, s.cfg.ConsumerGroup, s.cfg.Consumer, 1
	out := make(chan *message.Message)
	// The subscription ends with ctx or with the Subscriber.
	sctx, cancel := context.WithCancel(ctx)
	stopWith := context.AfterFunc(s.ctx, cancel)
	h := consumer.HandlerFunc(func(hctx context.Context, m *consumer.Message) ([]byte, error) {
		msg := message.NewMessage(m.Headers[UUIDHeader], m.Payload)
		for k, v := range m.Headers {
			if k != UUIDHeader {
				msg.Metadata.Set(k, v)
			}
		}
		// Its values: the handler's (the consumer's span and the sender's
		// trace context, with tracing on), then the Subscribe context's.
		mctx, done := context.WithCancel(values{Context: context.WithoutCancel(sctx), first: hctx})
		defer done()
		stopMsg := context.AfterFunc(sctx, done) // ends with the subscription
		defer stopMsg()
		msg.SetContext(mctx)
		// A message the subscription stops before it was acknowledged is
		// delivered again after the retry backoff, to whichever reader of
		// the group runs then (not after ClaimIdle). Once it has stopped,
		// nothing more is handed out (a select would pick the send half
		// the time while the reader of out is still there).
		if sctx.Err() != nil {
			return nil, consumer.RetryAfter(ErrStopped, 0)
		}
		select {
		case out <- msg:
		case <-sctx.Done():
			return nil, consumer.RetryAfter(ErrStopped, 0)
		}
		select {
		case <-msg.Acked():
			return nil, nil
		case <-msg.Nacked():
			return nil, consumer.RetryAfter(ErrNacked, 0)
		case <-sctx.Done():
			return nil, consumer.RetryAfter(ErrStopped, 0)
		case <-hctx.Done(): // a cancel notice (events have no deadline)
			return nil, consumer.RetryAfter(context.Cause(hctx), 0)
		}
	})
	co, err := consumer.New(s.c, cfg, h, consumer.WithLogger(zerologFrom(s.log)))
	if err != nil {
		cancel()
		stopWith()
		return nil, fmt.Errorf("watermill: subscribe to %s: %w", topic, err)
	}
	s.subs.Add(1)
	// Not held while it waits for the group below: a Close meanwhile (its
	// cancel ends that wait) must not wait for this Subscribe, nor other
	// Subscribes while Redis does not answer.
	s.mu.Unlock()
	locked = false
	go func() {
		defer s.subs.Done()
		defer close(out)
		defer stopWith()
		defer cancel()
		if err := co.Run(sctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("mycelium consumer stopped", err, watermill.LogFields{"topic": topic, "group": cfg.Group})
		}
	}()
	// Serving once its group exists, so that a publish right after
	// Subscribe is read (a group created later would start after it).
	for {
		rerr := co.Ready(sctx)
		if rerr == nil {
			return out, nil
		}
		if sctx.Err() != nil || errors.Is(rerr, bus.ErrPermission) {
			return out, nil // the channel closes: nothing to read
		}
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-t.C:
		case <-sctx.Done():
			t.Stop()
		}
	}
}

// SubscribeInitialize creates topic's consumer group for this Subscriber
// (from the oldest entry), so that messages published before the first
// Subscribe are delivered to it.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.ValidateName("topic", topic); err != nil {
		return fmt.Errorf("watermill: %w", err)
	}
	return createGroup(ctx, s.c, topic, s.cfg.ConsumerGroup)
}

// Close stops every subscription (their channels close) and waits for
// them, up to CloseTimeout.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stop()
	done := make(chan struct{})
	go func() { s.subs.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(s.cfg.CloseTimeout):
		return fmt.Errorf("watermill: subscriptions did not stop within %v", s.cfg.CloseTimeout)
	}
}

// values is a context whose values are first's, then its own.
type values struct {
	context.Context
	first context.Context
}

func (v values) Value(key any) any {
	if x := v.first.Value(key); x != nil {
		return x
	}
	return v.Context.Value(key)
}

var (
	_ message.Publisher            = (*Publisher)(nil)
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)
