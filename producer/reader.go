package producer

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// replyReader is the reply side of a producer: its reply stream (created
// by the first request, its TTL kept fresh while the producer lives), the
// one goroutine that reads it, and the registry of waiters each reply is
// dispatched to by correlation id. Its goroutine starts with the first
// request (ensure) and ends with shutdown; wait waits for it.
type replyReader struct {
	key     string // the reply stream
	ids     *ids
	waiters *registry
	cfg     *Config // ReplyTTL, ReplyBlock, ReplyBatch
	port    port
	log     zerolog.Logger
	stats   *counters
	// flights completes a cached request's flight with its answer (a
	// flight's waiter gets no channel send); nil when no topic is cached.
	flights *cache
	// inFlight counts the requests that hold a slot (admission.inFlight).
	inFlight func() int

	up atomic.Bool // started: read without mu on every request
	// suspect: the reader lost Redis and has not yet confirmed the reply
	// stream since (Redis may have restarted without it). A request then
	// confirms it itself before it is written: a worker's reply to a
	// stream that is gone is dropped (NOMKSTREAM), and the reader may be
	// in its backoff when Redis is back.
	suspect atomic.Bool
	mu      sync.Mutex // guards started, closed, stop and done
	started bool
	closed  bool // shutdown began: never start
	stop    context.CancelFunc
	done    chan struct{} // closed when the goroutine exits
}

// ensure creates the reply stream and starts the reader on the first call.
// The stream exists before any request names it, so consumers can write
// replies with NOMKSTREAM: once it expires (its producer is gone) late
// replies are not written at all.
//
// ctx bounds the creation; deadline applies when ctx has none.
func (r *replyReader) ensure(ctx context.Context, deadline time.Time) error {
	if r.up.Load() { // every request after the first: no lock
		if r.suspect.Load() {
			return r.confirm(ctx, deadline)
		}
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return nil
	}
	if r.closed {
		return fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}
	if err := redisx.Classify(r.create(ctx), "creating the reply stream"); err != nil {
		if !errors.Is(err, bus.ErrUnavailable) && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			return r.stats.ctxErr(err, "creating the reply stream "+r.key)
		}
		return fmt.Errorf("producer: create reply stream %s: %w", r.key, err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	r.done = make(chan struct{})
	r.started = true
	r.up.Store(true)
	go r.run(rctx)
	return nil
}

// confirm refreshes the reply stream (recreating it if Redis lost it)
// before a request is written while the reader is in an outage.
func (r *replyReader) confirm(ctx context.Context, deadline time.Time) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	if err := redisx.Classify(r.refresh(ctx), "confirming the reply stream"); err != nil {
		if !errors.Is(err, bus.ErrUnavailable) && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			return r.stats.ctxErr(err, "confirming the reply stream "+r.key)
		}
		return fmt.Errorf("producer: reply stream %s: %w", r.key, err)
	}
	r.suspect.Store(false)
	return nil
}

// shutdown stops the reader (it drains the registry as it exits: every
// waiter left gets bus.ErrClosed) and keeps it from starting; it reports
// whether it had started.
func (r *replyReader) shutdown() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.started {
		r.stop() // signalled on every path, so the reader always exits
	}
	return r.started
}

// wait waits, bounded by ctx, for the reader stopped by shutdown to exit.
func (r *replyReader) wait(ctx context.Context) error {
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// remove deletes the reply stream (Close, once the reader exited).
func (r *replyReader) remove(ctx context.Context) error {
	_, err := r.port.Delete(ctx, r.key)
	return err
}

// create writes a control entry (creating the stream) and sets the
// stream's TTL, in one round trip.
func (r *replyReader) create(ctx context.Context) error {
	b := codec.Encode(&codec.Envelope{Kind: codec.KindControl, Sent: time.Now().UnixNano()})
	err := r.port.CreateReplyStream(ctx, r.key, b.B, r.cfg.ReplyTTL)
	if !redisx.IsConnErr(err) {
		codec.PutBuffer(b) // else the client may still hold it
	}
	return err
}

// refresh extends the reply stream's TTL, recreating the stream if Redis
// lost it (restart without persistence, FLUSHALL).
func (r *replyReader) refresh(ctx context.Context) error {
	ok, err := r.port.RefreshTTL(ctx, r.key, r.cfg.ReplyTTL)
	if err != nil {
		return err
	}
	if !ok {
		r.log.Warn().Str("stream", r.key).Msg("reply stream was lost; recreating it")
		return r.create(ctx)
	}
	return nil
}

// run is the reader's goroutine: one blocking XREAD at a time on the reply
// stream, dispatching each reply to its waiter. It exits when ctx is
// cancelled (by shutdown) and closes r.done.
func (r *replyReader) run(ctx context.Context) {
	defer close(r.done)
	last := "0-0"
	// Refresh often enough that a stream lost to a restart or FLUSHALL is
	// back within seconds, not only before it would expire.
	every := min(r.cfg.ReplyTTL/3, 5*time.Second)
	nextRefresh := time.Now().Add(every)
	out := redisx.Outage{Log: r.log, What: "reply reader " + r.key}
	var rd redisx.ReadDeadline
	defer rd.Stop()
	for ctx.Err() == nil {
		if now := time.Now(); !now.Before(nextRefresh) || out.Active() {
			if err := r.refresh(ctx); err != nil {
				if ctx.Err() == nil {
					r.suspect.Store(true)
					out.Failed(err)
					out.Backoff(ctx)
				}
				continue
			}
			r.suspect.Store(false)
			nextRefresh = now.Add(every)
		}
		entries, err := r.port.Read(rd.For(ctx, r.cfg.ReplyBlock), r.key, last, int64(r.cfg.ReplyBatch), r.cfg.ReplyBlock)
		if err != nil {
			if ctx.Err() == nil {
				r.suspect.Store(true)
				out.Failed(err)
				out.Backoff(ctx)
			}
			continue
		}
		out.OK()
		if len(entries) > 0 {
			r.stats.replyReads.Add(1)
		}
		at := time.Now()
		for i := range entries {
			last = entries[i].ID
			at = r.dispatch(&entries[i], at)
		}
		r.handOver(len(entries))
	}
	r.waiters.drain(func(w *waiter) {
		r.deliver(w, result{err: fmt.Errorf("producer: request: %w", bus.ErrClosed), writeErr: true})
	})
}

// handOver lets the caller that the one reply just read woke run before
// the reader's next read, when no other request waits (one caller). The
// woken goroutine waits in its P's run queue otherwise while the reader
// sends its next XREAD (a write, ~25 µs on the 2-vCPU VMs), and then
// behind the client's goroutines that write it: 36 µs per request at one
// caller (go tool trace -pprof=sched of bus-bench; docs/performance.md,
// "One caller"). With other requests in flight, the next reply is likely
// on its way and the reader goes straight back to reading.
func (r *replyReader) handOver(n int) {
	if n == 1 && r.inFlight() <= 1 {
		runtime.Gosched()
	}
}

// dispatch hands one reply to its waiter. at is when the reader got the
// entry (its batch's read time, or when the previous entry's decode ended);
// it returns when this entry's decode ended, chaining one clock read per
// entry.
func (r *replyReader) dispatch(e *redisx.Entry, at time.Time) time.Time {
	if !e.HasData {
		r.stats.malformed.Add(1)
		return at
	}
	var env codec.Envelope
	err := codec.DecodeEnvelopeOwned(e.Data, &env) // e.Data is ours alone: the payload may alias it
	decoded := time.Now()
	if err != nil {
		r.stats.malformed.Add(1)
		r.log.Warn().Err(err).Str("entry", e.ID).Msg("skipping undecodable reply")
		return decoded
	}
	if env.Kind != codec.KindReply && env.Kind != codec.KindChunk {
		return decoded // control entries
	}
	var corrupt error
	if codec.Compressed(&env) {
		if corrupt = codec.Decompress(&env, maxReplyPayload); corrupt != nil {
			r.stats.malformed.Add(1)
			r.log.Warn().Err(corrupt).Str("entry", e.ID).Msg("a reply whose payload does not decompress: its caller gets the error")
			if env.Kind == codec.KindChunk {
				return decoded // a chunk: skipped, the stream's end says how many came
			}
		}
		decoded = time.Now()
	}
	seq, ok := r.ids.parse(env.ID)
	if !ok {
		r.stats.late.Add(1) // a reply for an earlier incarnation of this producer id
		return decoded
	}
	res := result{
		payload: env.Payload, replied: true,
		queue: time.Duration(env.QueueWait), handler: time.Duration(env.Handler), retried: env.Attempt > 1,
		transit: time.Duration(at.UnixNano() - env.Sent), decode: decoded.Sub(at),
		cacheTTL: time.Duration(env.CacheTTL), entry: env.RequestEntry, cacheKey: env.CacheKey,
	}
	switch {
	case corrupt != nil:
		res.payload, res.err, res.cacheTTL = nil, fmt.Errorf("producer: reply: %w", corrupt), 0
	case env.ErrCode != "":
		res.payload, res.err = nil, &bus.RemoteError{Code: bus.Code(env.ErrCode), Message: env.ErrMsg}
	}
	w, how := r.waiters.match(seq, &res, env.Kind == codec.KindChunk)
	switch how {
	case matchStream:
		w.st.push(&env, &res, at)
	case matchNone:
		r.stats.late.Add(1)
	case matchForged:
		r.forged(e.ID, env.RequestEntry)
	case matchTaken:
		r.deliver(w, res)
	}
	return decoded
}

// stamp records a request's write (its time and entry id), hands over a
// reply that came before it, and drops those that answered other entries.
func (r *replyReader) stamp(seq uint64, took time.Duration, entry string) {
	w, early, forged := r.waiters.stamp(seq, took, entry)
	for range forged {
		r.forged("", entry)
	}
	if w != nil {
		r.deliver(w, early)
	}
}

// forged counts and logs a reply that answers a request entry this
// producer did not write with that correlation id: someone else wrote a
// request with it (docs/security.md). The caller keeps waiting for its own.
func (r *replyReader) forged(replyID, requestEntry string) {
	r.stats.forged.Add(1)
	r.log.Warn().Str("reply", replyID).Str("request_entry", requestEntry).Msg("dropped a reply to a request this producer did not write (forged or misdirected)")
}

// deliver hands res to the caller waiting on w (taken from the registry):
// its channel, or the flight of a cached request.
func (r *replyReader) deliver(w *waiter, res result) {
	if f := w.fl; f != nil {
		r.flights.complete(f, res, SourceNone, nil)
		putWaiter(w)
		return
	}
	w.ch <- res
}
