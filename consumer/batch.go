package consumer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/bus"
)

// Defaults of BatchConfig.
const (
	DefaultBatchSize   = 8
	DefaultBatchWindow = 5 * time.Millisecond
)

// Result is one message's outcome from a BatchHandler: what its Handle call
// would have returned.
type Result struct {
	Payload []byte
	Err     error
}

// BatchHandler handles several messages at once, for backends that batch
// inference. It returns one Result per message, in order; each message's
// reply, acknowledgement, retry and dead letter stay its own, exactly as if
// Handle had returned its Result.
type BatchHandler interface {
	HandleBatch(ctx context.Context, msgs []*Message) []Result
}

// BatchHandlerFunc adapts a function to BatchHandler.
type BatchHandlerFunc func(ctx context.Context, msgs []*Message) []Result

// HandleBatch calls f(ctx, msgs).
func (f BatchHandlerFunc) HandleBatch(ctx context.Context, msgs []*Message) []Result {
	return f(ctx, msgs)
}

// BatchConfig tunes Batch.
type BatchConfig struct {
	// Size is the most messages in one batch. Zero means DefaultBatchSize.
	// A batch can only be as large as the consumer's Concurrency.
	Size int
	// Window is how long the first message of a batch waits for others.
	// Zero means DefaultBatchWindow.
	Window time.Duration
}

// Batch returns a Handler that gathers the messages handed to it at about
// the same time (up to Size, or what arrived within Window of the first)
// and passes them to h in one call. Messages are gathered from the
// consumer's concurrent handler calls, so set Concurrency to at least Size
// (a multiple of it to keep batches full while one runs).
//
// The ctx h gets carries the latest of the messages' deadlines and is
// cancelled once every message's own ctx is (shutdown). A Result list of the
// wrong length fails every message of the batch, as a panic does.
func Batch(h BatchHandler, cfg BatchConfig) Handler {
	if cfg.Size <= 0 {
		cfg.Size = DefaultBatchSize
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultBatchWindow
	}
	return &batcher{h: h, cfg: cfg}
}

type batcher struct {
	h   BatchHandler
	cfg BatchConfig
	mu  sync.Mutex
	cur *gathering // the batch being gathered, nil when none
}

// gathering is one batch: its first message's caller (the leader) waits
// for the others, runs the batch and hands each its result.
type gathering struct {
	msgs    []*Message
	ctxs    []context.Context
	full    chan struct{} // closed when Size messages joined
	done    chan struct{} // closed when results is set
	results []Result
}

func (b *batcher) Handle(ctx context.Context, m *Message) ([]byte, error) {
	b.mu.Lock()
	g := b.cur
	leader := g == nil
	if leader {
		g = &gathering{full: make(chan struct{}), done: make(chan struct{})}
		b.cur = g
	}
	i := len(g.msgs)
	g.msgs = append(g.msgs, m)
	g.ctxs = append(g.ctxs, ctx)
	if len(g.msgs) == b.cfg.Size {
		b.cur = nil
		close(g.full)
	}
	b.mu.Unlock()
	if leader {
		b.lead(ctx, g)
	} else {
		<-g.done // bounded: the leader's batch ctx ends with the messages'
	}
	r := g.results[i]
	return r.Payload, r.Err
}

func (b *batcher) lead(ctx context.Context, g *gathering) {
	t := time.NewTimer(b.cfg.Window)
	select {
	case <-g.full:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	b.mu.Lock()
	if b.cur == g {
		b.cur = nil
	}
	msgs, ctxs := g.msgs, g.ctxs // nobody joins g any more
	b.mu.Unlock()

	bctx, cancel := batchContext(ctxs)
	defer cancel()
	g.results = b.run(bctx, msgs)
	close(g.done)
}

// run calls the batch handler, turning a panic or a wrong number of
// results into an error for every message.
func (b *batcher) run(ctx context.Context, msgs []*Message) (res []Result) {
	fail := func(err error) []Result {
		out := make([]Result, len(msgs))
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	defer func() {
		if r := recover(); r != nil {
			res = fail(&bus.RemoteError{Code: bus.CodePanic, Message: fmt.Sprint(r)})
		}
	}()
	res = b.h.HandleBatch(ctx, msgs)
	if len(res) != len(msgs) {
		return fail(fmt.Errorf("consumer: batch handler returned %d results for %d messages", len(res), len(msgs)))
	}
	return res
}

// batchContext returns a context with the latest of ctxs' deadlines (none
// if one has none), cancelled once every one of ctxs is done.
func batchContext(ctxs []context.Context) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, c := range ctxs {
		d, ok := c.Deadline()
		if !ok {
			latest = time.Time{}
			break
		}
		if d.After(latest) {
			latest = d
		}
	}
	base := context.WithoutCancel(ctxs[0])
	var ctx context.Context
	var cancel context.CancelFunc
	if latest.IsZero() {
		ctx, cancel = context.WithCancel(base)
	} else {
		ctx, cancel = context.WithDeadline(base, latest)
	}
	var left atomic.Int64
	left.Store(int64(len(ctxs)))
	stops := make([]func() bool, len(ctxs))
	for i, c := range ctxs {
		stops[i] = context.AfterFunc(c, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel()
	}
}
