// Package plain is bus-bench's second baseline (--transport streams-plain):
// request/reply over Redis Streams as an ordinary service would write it
// with a plain Redis client, so that Mycelium is measured against a design
// of the same kind, not only against the PubSub design it replaced. It is
// a different system on purpose, with its own client settings and wire
// format; like the PubSub baseline it builds its Redis commands itself.
//
// The design: a caller writes each request with one synchronous XADD (no
// batching of its own) carrying the request id, its process's reply stream
// and the payload as fields; one reader per process waits on that reply
// stream (XREAD BLOCK, up to 1,000 replies a read) and hands each reply to
// its caller. Workers read their consumer group with XREADGROUP COUNT 100
// (no more than their free handler slots), run each entry's handler on its
// own goroutine and write its reply and XACK in one pipelined round trip.
// The Redis client runs one command (or one pipeline) at a time per pooled
// connection, go-redis's default: no auto-pipelining.
package plain

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/cmd/bus-bench/internal/pubsub"
)

// Field names of the baseline's entries.
const (
	fID      = "id"
	fReplyTo = "reply"
	fPayload = "payload"
	fError   = "error"
)

// Group is the baseline workers' consumer group.
const Group = "plain-workers"

// blockMs is the BLOCK of the baseline's blocking reads. Its client reads
// synchronously and honours a cancelled ctx only once the read returns, so
// stopping a caller and its workers waited out a read each: with 1,000 ms,
// 2 s added to every streams-plain run (22 s of the quick seed suite). A
// busy reader never waits that long; an idle one reads 10 times a second.
const blockMs = 100

// Stream is the stream of topic's requests under prefix.
func Stream(prefix, topic string) string { return prefix + ":plain:{" + topic + "}" }

// Handler serves one request: the reply payload, or an error whose text
// travels back.
type Handler func(ctx context.Context, payload []byte) ([]byte, error)

// Dial builds the baseline's client: no auto-pipelining, one command at a
// time on each of poolSize pooled connections, with the bus's timeouts and
// buffers (the comparison is of the designs, not of client settings): the
// PubSub baseline's client (pubsub.DialAs).
func Dial(ctx context.Context, url string, poolSize int) (rueidis.Client, error) {
	return pubsub.DialAs(ctx, url, poolSize, "myc-bench-plain")
}

type result struct {
	payload []byte
	err     error
}

// Caller sends requests and reads their replies. Safe for concurrent use.
type Caller struct {
	c       rueidis.Client
	stream  string
	reply   string // this process's reply stream
	id      string
	seq     atomic.Uint64
	timeout time.Duration

	mu      sync.Mutex
	waiting map[string]chan result

	stop context.CancelFunc
	done chan struct{}
}

// NewCaller returns a caller of topic's stream under prefix, each request
// bounded by timeout, and starts its reply reader (stopped by Close).
func NewCaller(c rueidis.Client, prefix, topic string, timeout time.Duration) *Caller {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	ctx, stop := context.WithCancel(context.Background())
	b := &Caller{c: c, stream: Stream(prefix, topic), reply: prefix + ":plain:{r." + id + "}", id: id, timeout: timeout,
		waiting: map[string]chan result{}, stop: stop, done: make(chan struct{})}
	go b.read(ctx)
	return b
}

// Request sends payload and waits for its reply, bounded by the caller's
// timeout and ctx.
func (b *Caller) Request(ctx context.Context, payload []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	id := b.id + "." + strconv.FormatUint(b.seq.Add(1), 36)
	ch := make(chan result, 1)
	b.mu.Lock()
	b.waiting[id] = ch
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.waiting, id)
		b.mu.Unlock()
	}()
	cmd := b.c.B().Xadd().Key(b.stream).Maxlen().Almost().Threshold("100000").Id("*").
		FieldValue().FieldValue(fID, id).FieldValue(fReplyTo, b.reply).FieldValue(fPayload, rueidis.BinaryString(payload)).Build()
	if err := b.c.Do(ctx, cmd).Error(); err != nil {
		return nil, fmt.Errorf("streams-plain baseline: XADD: %w", err)
	}
	select {
	case r := <-ch:
		return r.payload, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Publish appends one event (no reply expected) with one synchronous XADD.
func (b *Caller) Publish(ctx context.Context, payload []byte) error {
	cmd := b.c.B().Xadd().Key(b.stream).Maxlen().Almost().Threshold("100000").Id("*").
		FieldValue().FieldValue(fPayload, rueidis.BinaryString(payload)).Build()
	if err := b.c.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("streams-plain baseline: XADD: %w", err)
	}
	return nil
}

// read is the process's one reply reader.
func (b *Caller) read(ctx context.Context) {
	defer close(b.done)
	last := "0" // the stream is this process's own: every entry in it is a reply to it ("$" would miss those written before the first read)
	for ctx.Err() == nil {
		res, err := b.c.Do(ctx, b.c.B().Xread().Count(1000).Block(blockMs).Streams().Key(b.reply).Id(last).Build()).AsXRead()
		if err != nil {
			if !rueidis.IsRedisNil(err) && ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond) // Redis did not answer: the requests time out
			}
			continue
		}
		for _, e := range res[b.reply] {
			last = e.ID
			r := result{payload: []byte(e.FieldValues[fPayload])}
			if msg, ok := e.FieldValues[fError]; ok {
				r = result{err: errors.New(msg)}
			}
			b.mu.Lock()
			ch := b.waiting[e.FieldValues[fID]]
			b.mu.Unlock()
			if ch != nil {
				select {
				case ch <- r:
				default:
				}
			}
		}
	}
}

// Close stops the reply reader and deletes the reply stream.
func (b *Caller) Close() {
	b.stop()
	<-b.done
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = b.c.Do(ctx, b.c.B().Del().Key(b.reply).Build()).Error()
}

// StartWorkers creates the group of topic's stream (from new entries) and
// serves it with n handler slots until the returned stop is called, which
// waits for running handlers and deletes the stream (bus-bench's own).
func StartWorkers(ctx context.Context, c rueidis.Client, prefix, topic string, n int, h Handler) (func(), error) {
	stream := Stream(prefix, topic)
	err := c.Do(ctx, c.B().XgroupCreate().Key(stream).Group(Group).Id("$").Mkstream().Build()).Error()
	if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
		return nil, fmt.Errorf("streams-plain baseline workers: XGROUP CREATE: %w", err)
	}
	n = max(n, 1)
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	slots := make(chan struct{}, n)
	var wg sync.WaitGroup
	readerDone := make(chan struct{})
	var name [6]byte
	_, _ = rand.Read(name[:])
	consumerName := "w-" + hex.EncodeToString(name[:])
	go func() {
		defer close(readerDone)
		for wctx.Err() == nil {
			select { // one slot, then the others free now
			case slots <- struct{}{}:
			case <-wctx.Done():
				return
			}
			free := 1
		fill:
			for free < min(n, 100) {
				select {
				case slots <- struct{}{}:
					free++
				default:
					break fill
				}
			}
			res, err := c.Do(wctx, c.B().Xreadgroup().Group(Group, consumerName).Count(int64(free)).Block(blockMs).Streams().Key(stream).Id(">").Build()).AsXRead()
			entries := res[stream]
			for range free - len(entries) {
				<-slots
			}
			if err != nil {
				if !rueidis.IsRedisNil(err) && wctx.Err() == nil {
					time.Sleep(10 * time.Millisecond)
				}
				continue
			}
			for _, e := range entries {
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-slots }()
					serve(wctx, c, stream, e, h)
				}()
			}
		}
	}()
	return func() {
		cancel()
		<-readerDone
		wg.Wait()
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.Do(dctx, c.B().Del().Key(stream).Build()).Error()
		dcancel()
	}, nil
}

// serve runs one entry's handler and writes its reply and XACK in one
// pipelined round trip.
func serve(ctx context.Context, c rueidis.Client, stream string, e rueidis.XRangeEntry, h Handler) {
	out, err := h(ctx, []byte(e.FieldValues[fPayload]))
	ack := c.B().Xack().Key(stream).Group(Group).Id(e.ID).Build()
	replyTo, id := e.FieldValues[fReplyTo], e.FieldValues[fID]
	if replyTo == "" { // an event: acknowledged alone
		_ = c.Do(ctx, ack).Error()
		return
	}
	add := c.B().Xadd().Key(replyTo).Maxlen().Almost().Threshold("10000").Id("*").FieldValue().FieldValue(fID, id)
	var reply rueidis.Completed
	if err != nil {
		reply = add.FieldValue(fError, err.Error()).Build()
	} else {
		reply = add.FieldValue(fPayload, rueidis.BinaryString(out)).Build()
	}
	_ = c.DoMulti(ctx, reply, ack)
}
