// Package pubsub is the PubSub baseline of bus-bench: the design Mycelium
// replaces, built in so anyone can reproduce the before/after on their own
// Redis. It is a different system on purpose, with its own Redis client: the
// one place in the repository outside the bus's Redis port that builds
// Redis commands.
package pubsub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// The old design: every request opens a
// fresh subscription on a unique reply channel, waits for the subscription
// to be confirmed, publishes the request as JSON (the payload
// base64-encoded by encoding/json) on the topic's channel, and waits for
// the reply message. By default the subscription gets its own new
// connection, as a new subscription does in go-redis (Subscribe) and
// redis-py (pubsub()); --pubsub-conn pooled reuses pooled connections
// instead, the kindest variant of the old design. Like the old design,
// every call also passes a circuit breaker that takes one lock, and the
// Redis client runs one command at a time per pooled connection (no
// auto-pipelining, as go-redis by default). Workers hold one subscription on the topic channel
// and publish each reply as JSON on the reply channel. PubSub keeps nothing:
// a request published while no worker listens is lost, and so is a reply
// whose caller has gone.

// psMessage is the baseline's wire format, requests and replies alike.
type psMessage struct {
	ID      string `json:"id"`
	ReplyTo string `json:"reply_to,omitempty"`
	Payload []byte `json:"payload"` // base64 in JSON
	Error   string `json:"error,omitempty"`
}

// Handler serves one baseline request: it returns the reply payload or an
// error, which travels back as the reply's error text.
type Handler func(ctx context.Context, payload []byte) ([]byte, error)

// Dial builds the old design's client: no auto-pipelining, one command at a
// time on each pooled connection (go-redis's default), with a pool of
// poolSize connections so that no caller or worker waits for one. The
// timeouts and buffers match the bus's defaults, so the comparison is of
// the designs, not of the client settings.
func Dial(ctx context.Context, url string, poolSize int) (rueidis.Client, error) {
	return DialAs(ctx, url, poolSize, "myc-bench-pubsub")
}

// DialAs is Dial naming the connections name (CLIENT SETNAME): the
// streams-plain baseline's client is built the same way.
func DialAs(ctx context.Context, url string, poolSize int, name string) (rueidis.Client, error) {
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	opt.ForceSingleClient, opt.DisableCache, opt.DisableAutoPipelining = true, true, true
	opt.ClientSetInfo = rueidis.DisableClientSetInfo
	opt.ClientName = name
	opt.Dialer.Timeout, opt.Dialer.KeepAlive = 2*time.Second, time.Second
	opt.ConnWriteTimeout = 5 * time.Second
	opt.ReadBufferEachConn, opt.WriteBufferEachConn = 128<<10, 128<<10
	opt.BlockingPoolSize = poolSize
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, err
	}
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Caller sends baseline requests. It is safe for concurrent use.
type Caller struct {
	br      lockedBreaker
	c       rueidis.Client
	channel string
	id      string // unique per process
	seq     atomic.Uint64
	fresh   *rueidis.ClientOption // dial a new connection per subscription; nil: pooled
	timeout time.Duration         // per request (--timeout)
}

// NewCaller returns a caller publishing on channel through c, giving each
// request timeout. With fresh set, each request's subscription dials its
// own connection (as go-redis's Subscribe and redis-py's pubsub() do) to
// the server of url; otherwise it reuses c's pooled connections.
func NewCaller(c rueidis.Client, url, channel string, timeout time.Duration, fresh bool) (*Caller, error) {
	b := &Caller{c: c, channel: channel, timeout: timeout}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	b.id = hex.EncodeToString(rnd[:])
	if fresh {
		opt, err := rueidis.ParseURL(url)
		if err != nil {
			return nil, err
		}
		b.fresh = &opt
	}
	return b, nil
}

// Channel is the channel of topic's requests under prefix.
func Channel(prefix, topic string) string { return prefix + ":pubsub:" + topic }

// Request sends payload and waits for its reply, bounded by the caller's
// timeout and ctx.
func (b *Caller) Request(ctx context.Context, payload []byte) ([]byte, error) {
	if !b.br.allow() {
		return nil, errors.New("pubsub baseline: circuit breaker open")
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	out, err := b.call(ctx, payload)
	b.br.done(err == nil)
	return out, err
}

// lockedBreaker is the old design's circuit breaker: one mutex around
// every decision and outcome, opening for 5 s after 5 failures in a row.
type lockedBreaker struct {
	mu        sync.Mutex
	failures  int
	openUntil time.Time
}

func (l *lockedBreaker) allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().After(l.openUntil)
}

func (l *lockedBreaker) done(ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ok {
		l.failures = 0
		return
	}
	if l.failures++; l.failures >= 5 {
		l.openUntil, l.failures = time.Now().Add(5*time.Second), 0
	}
}

func (b *Caller) call(ctx context.Context, payload []byte) ([]byte, error) {
	id := b.id + "." + strconv.FormatUint(b.seq.Add(1), 36)
	replyCh := b.channel + ":reply:" + id
	if b.fresh != nil {
		return b.requestFresh(ctx, id, replyCh, payload)
	}
	dc, release := b.c.Dedicate()
	defer release()
	subscribed := make(chan struct{}, 1)
	replies := make(chan string, 1)
	hookErr := dc.SetPubSubHooks(rueidis.PubSubHooks{
		OnMessage: func(m rueidis.PubSubMessage) {
			select {
			case replies <- m.Message:
			default:
			}
		},
		OnSubscription: func(s rueidis.PubSubSubscription) {
			if s.Kind == "subscribe" {
				select {
				case subscribed <- struct{}{}:
				default:
				}
			}
		},
	})
	if err := dc.Do(ctx, dc.B().Subscribe().Channel(replyCh).Build()).Error(); err != nil {
		return nil, fmt.Errorf("pubsub baseline: subscribe: %w", err)
	}
	select {
	case <-subscribed:
	case err := <-hookErr:
		return nil, subscriptionEnded(err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := b.publish(ctx, id, replyCh, payload); err != nil {
		return nil, err
	}
	var raw string
	select {
	case raw = <-replies:
	case err := <-hookErr:
		return nil, subscriptionEnded(err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return parseReply(raw) // release unsubscribes before the connection is reused
}

// requestFresh is request on a newly dialled connection.
func (b *Caller) requestFresh(ctx context.Context, id, replyCh string, payload []byte) ([]byte, error) {
	sub, err := dialSub(ctx, b.fresh, replyCh)
	if err != nil {
		return nil, fmt.Errorf("pubsub baseline: subscribe: %w", err)
	}
	defer sub.close()
	if err := b.publish(ctx, id, replyCh, payload); err != nil {
		return nil, err
	}
	raw, err := sub.next(ctx)
	if err != nil {
		return nil, fmt.Errorf("pubsub baseline: waiting for the reply: %w", err)
	}
	return parseReply(raw)
}

func (b *Caller) publish(ctx context.Context, id, replyCh string, payload []byte) error {
	req, err := json.Marshal(psMessage{ID: id, ReplyTo: replyCh, Payload: payload})
	if err != nil {
		return err
	}
	n, err := b.c.Do(ctx, b.c.B().Publish().Channel(b.channel).Message(rueidis.BinaryString(req)).Build()).AsInt64()
	if err != nil {
		return fmt.Errorf("pubsub baseline: publish: %w", err)
	}
	if n == 0 {
		return errors.New("pubsub baseline: no worker subscribed: the request is lost")
	}
	return nil
}

// subscriptionEnded describes a hook channel's end (nil when closed
// without a reason).
func subscriptionEnded(err error) error {
	if err == nil {
		err = errors.New("connection closed")
	}
	return fmt.Errorf("pubsub baseline: subscription ended: %w", err)
}

func parseReply(raw string) ([]byte, error) {
	var rep psMessage
	if err := json.Unmarshal([]byte(raw), &rep); err != nil {
		return nil, fmt.Errorf("pubsub baseline: reply: %w", err)
	}
	if rep.Error != "" {
		return nil, errors.New(rep.Error)
	}
	return rep.Payload, nil
}

// StartWorkers subscribes once to the topic channel and runs h for each
// request on up to n goroutines at a time, publishing the replies. The
// returned stop cancels the subscription and waits for running handlers.
func StartWorkers(ctx context.Context, c rueidis.Client, channel string, n int, h Handler) (func(), error) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	slots := make(chan struct{}, n)
	var wg sync.WaitGroup
	ready := make(chan struct{})
	var once sync.Once
	dc, release := c.Dedicate()
	hookErr := dc.SetPubSubHooks(rueidis.PubSubHooks{
		OnSubscription: func(s rueidis.PubSubSubscription) {
			if s.Kind == "subscribe" {
				once.Do(func() { close(ready) })
			}
		},
		OnMessage: func(m rueidis.PubSubMessage) {
			var req psMessage
			if err := json.Unmarshal([]byte(m.Message), &req); err != nil || req.ReplyTo == "" {
				return // garbage on the channel: the old design drops it
			}
			select {
			case slots <- struct{}{}:
			case <-wctx.Done():
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				out, err := h(wctx, req.Payload)
				rep := psMessage{ID: req.ID, Payload: out}
				if err != nil {
					rep.Payload, rep.Error = nil, err.Error()
				}
				b, _ := json.Marshal(rep)
				_ = c.Do(wctx, c.B().Publish().Channel(req.ReplyTo).Message(rueidis.BinaryString(b)).Build()).Error()
			}()
		},
	})
	if err := dc.Do(ctx, dc.B().Subscribe().Channel(channel).Build()).Error(); err != nil {
		cancel()
		release()
		return nil, fmt.Errorf("pubsub baseline workers: subscribe: %w", err)
	}
	select {
	case <-ready:
	case err := <-hookErr:
		cancel()
		release()
		return nil, fmt.Errorf("workers: %w", subscriptionEnded(err))
	case <-ctx.Done():
		cancel()
		release()
		return nil, ctx.Err()
	}
	return func() {
		uctx, ucancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = dc.Do(uctx, dc.B().Unsubscribe().Channel(channel).Build()).Error()
		ucancel()
		cancel()
		wg.Wait()
		release()
	}, nil
}
