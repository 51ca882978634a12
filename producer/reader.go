package producer

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redisx"
)

// ensureReader creates the reply stream and starts the reply reader on the
// first call. The stream exists before any request names it, so consumers
// can write replies with NOMKSTREAM: once it expires (its producer is gone)
// late replies are not written at all.
//
// ctx bounds the creation; deadline applies when ctx has none.
func (p *Producer) ensureReader(ctx context.Context, deadline time.Time) error {
	if p.readerUp.Load() { // every Request after the first: no lock
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return nil
	}
	if p.closed.Load() {
		return fmt.Errorf("producer: request: %w", bus.ErrClosed)
	}
	if err := p.createReplyStream(ctx); err != nil {
		return fmt.Errorf("producer: create reply stream %s: %w", p.replyKey, err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	p.done = make(chan struct{})
	p.started = true
	p.readerUp.Store(true)
	go p.readReplies(rctx)
	return nil
}

// createReplyStream writes a control entry (creating the stream) and sets
// the stream's TTL, in one round trip.
func (p *Producer) createReplyStream(ctx context.Context) error {
	b := codec.Encode(&codec.Envelope{Kind: codec.KindControl, Sent: time.Now().UnixNano()})
	err := redisx.CreateReplyStream(ctx, p.c.Redis(), p.replyKey, b.B, p.cfg.ReplyTTL)
	if !redisx.IsConnErr(err) {
		codec.PutBuffer(b) // else the client may still hold it
	}
	return err
}

// refresh extends the reply stream's TTL, recreating the stream if Redis
// lost it (restart without persistence, FLUSHALL).
func (p *Producer) refresh(ctx context.Context) error {
	ok, err := redisx.RefreshTTL(ctx, p.c.Redis(), p.replyKey, p.cfg.ReplyTTL)
	if err != nil {
		return err
	}
	if !ok {
		p.log.Warn().Str("stream", p.replyKey).Msg("reply stream was lost; recreating it")
		return p.createReplyStream(ctx)
	}
	return nil
}

// readReplies is the reply reader: one blocking XREAD at a time on the
// reply stream, dispatching each reply to its waiter. It exits when ctx is
// cancelled (by Close) and closes p.done.
func (p *Producer) readReplies(ctx context.Context) {
	defer close(p.done)
	last := "0-0"
	// Refresh often enough that a stream lost to a restart or FLUSHALL is
	// back within seconds, not only before it would expire.
	every := min(p.cfg.ReplyTTL/3, 5*time.Second)
	nextRefresh := time.Now().Add(every)
	out := redisx.Outage{Log: p.log, What: "reply reader " + p.replyKey}
	var rd redisx.ReadDeadline
	defer rd.Stop()
	for ctx.Err() == nil {
		if now := time.Now(); !now.Before(nextRefresh) || out.Active() {
			if err := p.refresh(ctx); err != nil {
				if ctx.Err() == nil {
					out.Failed(err)
					out.Backoff(ctx)
				}
				continue
			}
			nextRefresh = now.Add(every)
		}
		entries, err := redisx.Read(rd.For(ctx, p.cfg.ReplyBlock), p.c.Redis(), p.replyKey, last, int64(p.cfg.ReplyBatch), p.cfg.ReplyBlock)
		if err != nil {
			if ctx.Err() == nil {
				out.Failed(err)
				out.Backoff(ctx)
			}
			continue
		}
		out.OK()
		if len(entries) > 0 {
			p.stats.replyReads.Add(1)
		}
		at := time.Now()
		for i := range entries {
			last = entries[i].ID
			at = p.dispatch(&entries[i], at)
		}
	}
	p.waiters.drain(func(w *waiter) {
		p.deliver(w, result{err: fmt.Errorf("producer: request: %w", bus.ErrClosed), writeErr: true})
	})
}

// dispatch hands one reply to its waiter. at is when the reader got the
// entry (its batch's read time, or when the previous entry's decode ended);
// it returns when this entry's decode ended, chaining one clock read per
// entry.
func (p *Producer) dispatch(e *redisx.Entry, at time.Time) time.Time {
	if !e.HasData {
		p.stats.malformed.Add(1)
		return at
	}
	var env codec.Envelope
	err := codec.DecodeEnvelopeOwned(e.Data, &env) // e.Data is ours alone: the payload may alias it
	decoded := time.Now()
	if err != nil {
		p.stats.malformed.Add(1)
		p.log.Warn().Err(err).Str("entry", e.ID).Msg("skipping undecodable reply")
		return decoded
	}
	if env.Kind != codec.KindReply && env.Kind != codec.KindChunk {
		return decoded // control entries
	}
	seq, ok := p.parseID(env.ID)
	if !ok {
		p.stats.late.Add(1) // a reply for an earlier incarnation of this producer id
		return decoded
	}
	r := result{
		payload: env.Payload, replied: true,
		queue: time.Duration(env.QueueWait), handler: time.Duration(env.Handler), retried: env.Attempt > 1,
		transit: time.Duration(at.UnixNano() - env.Sent), decode: decoded.Sub(at),
		cacheTTL: time.Duration(env.CacheTTL), entry: env.RequestEntry, cacheKey: env.CacheKey,
	}
	if env.ErrCode != "" {
		r.payload, r.err = nil, &bus.RemoteError{Code: bus.Code(env.ErrCode), Message: env.ErrMsg}
	}
	w, how := p.waiters.match(seq, &r, env.Kind == codec.KindChunk)
	switch how {
	case matchStream:
		w.st.push(&env, &r, at)
	case matchNone:
		p.stats.late.Add(1)
	case matchForged:
		p.forged(e.ID, env.RequestEntry)
	case matchTaken:
		p.deliver(w, r)
	}
	return decoded
}

// forged counts and logs a reply that answers a request entry this
// producer did not write with that correlation id: someone else wrote a
// request with it (docs/security.md). The caller keeps waiting for its own.
func (p *Producer) forged(replyID, requestEntry string) {
	p.stats.forged.Add(1)
	p.log.Warn().Str("reply", replyID).Str("request_entry", requestEntry).Msg("dropped a reply to a request this producer did not write (forged or misdirected)")
}

// deliver hands r to the caller waiting on w (taken from the registry):
// its channel, or the flight of a cached request.
func (p *Producer) deliver(w *waiter, r result) {
	if f := w.fl; f != nil {
		p.complete(f, r, SourceNone, nil)
		putWaiter(w)
		return
	}
	w.ch <- r
}

func (p *Producer) parseID(id string) (uint64, bool) {
	if len(id) <= len(p.inc) || id[:len(p.inc)] != p.inc {
		return 0, false
	}
	seq, err := strconv.ParseUint(id[len(p.inc):], 36, 64)
	return seq, err == nil
}
