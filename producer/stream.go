package producer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/metrics"
)

// Streamed replies (docs/wire.md, "Streamed replies"). The reply reader
// hands a streamed request's chunks and final reply to its streamState
// as they come, in stream order, without judging them; the Stream sorts
// them out as its caller reads: only those answering the entry it wrote,
// one delivery's only, in order, none missing.

// streamItem is a chunk or the final reply as the reader got it.
type streamItem struct {
	payload []byte
	entry   string
	attempt uint32
	seq     uint64 // a chunk's index; the reply's count of chunks
	end     bool   // the final reply
	err     error  // the final reply's remote error
	transit time.Duration
	queue   time.Duration // the reply's stages, as the worker reported them
	handler time.Duration
	decode  time.Duration
	retried bool // queue is a retry wait
}

// streamState is what the reader and the sender hand a Stream.
type streamState struct {
	mu      sync.Mutex
	items   []streamItem
	bytes   int
	max     int  // bytes buffered at most
	over    bool // the caller read too slowly: more than max buffered
	written bool // the request's write returned: entry (or werr) and took are set
	entry   string
	werr    error
	took    time.Duration // the write's time (the Write stage)
	notify  chan struct{} // 1 slot: something changed
}

// chunkOverhead is what a buffered chunk costs beside its payload (its
// item, entry id and bookkeeping), counted toward the buffer's bound: a
// flood of empty chunks must break the stream too (2,300,000 of them once
// took a slow caller's heap past 1 GiB).
const chunkOverhead = 256

func newStreamState(max int) *streamState {
	return &streamState{max: max, notify: make(chan struct{}, 1)}
}

func (s *streamState) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// push queues a chunk or the final reply (called by the reply reader).
func (s *streamState) push(env *codec.Envelope, r *result, at time.Time) {
	it := streamItem{payload: env.Payload, entry: env.RequestEntry, attempt: env.Attempt, seq: env.Seq,
		end: env.Kind == codec.KindReply, err: r.err, transit: time.Duration(at.UnixNano() - env.Sent),
		queue: r.queue, handler: r.handler, decode: r.decode, retried: r.retried}
	s.mu.Lock()
	if !s.over {
		s.items = append(s.items, it)
		s.bytes += len(it.payload) + chunkOverhead
		s.over = s.bytes > s.max
	}
	s.mu.Unlock()
	s.wake()
}

// setWritten records the request's write (called by the sender).
func (s *streamState) setWritten(entry string, err error, took time.Duration) {
	s.mu.Lock()
	s.written, s.entry, s.werr, s.took = true, entry, err, took
	s.mu.Unlock()
	s.wake()
}

// Stream is the caller's side of a streamed reply: read it with Recv or
// range over All. It is not safe for concurrent use. Close it when you stop
// reading before the end (All does): the handler is then cancelled.
type Stream struct {
	p  *Producer
	rq request // its request, from the write path to finish (at its end)
	// ctx bounds the whole stream (its deadline travels with the request):
	// kept, like an iterator's, for Recv to wait on.
	ctx context.Context
	st  *streamState

	entry   string
	pending []streamItem
	attempt uint32
	next    uint64        // index of the next chunk
	err     error         // set when the stream ended: io.EOF or why not
	first   time.Duration // when the first chunk came, from the start
}

// streamBuffer is the most a Stream buffers for a caller that does not
// read: at least 16 MiB, four times maxPayload (Config.MaxPayload) when
// that is more.
func streamBuffer(maxPayload int) int { return max(16<<20, 4*maxPayload) }

// Stream sends payload to topic as a request whose handler may answer in
// chunks (consumer.Message.Send) before its final reply, and returns once
// the request is written; read the chunks with Recv or All as they arrive.
// A handler that sends no chunks yields its reply as the one chunk (so any
// worker answers a Stream; a worker of a version before streams does too).
// ctx bounds the whole stream (its deadline travels with the request, as
// for Request; Config.RequestTimeout when it has none); cancelling it, or
// closing the Stream before its end, cancels the handler.
//
// Chunks come in the order the handler sent them, each once. If the
// request is delivered again (its worker died, or the handler asked for a
// retry) before any chunk reached the caller, the caller reads the new
// delivery's stream; after chunks were read, the stream ends with an error
// wrapping bus.ErrStreamBroken (the chunks of two deliveries are never
// mixed) and the redelivered handler is cancelled.
//
// Streams bypass the response cache. Errors of the write are returned
// here, like Request's; errors after it come from Recv. A Stream is a
// request like the others: the same admission (its partition's breaker,
// responders), spans, timings and stats.
func (p *Producer) Stream(ctx context.Context, topic string, payload []byte, opts ...StreamOption) (*Stream, error) {
	if p.closed.Load() {
		return nil, fmt.Errorf("producer: stream: %w", bus.ErrClosed)
	}
	t, err := p.topics.get(topic)
	if err != nil {
		return nil, err
	}
	if err := checkPayload(len(payload), p.cfg.MaxPayload); err != nil {
		return nil, err
	}
	start := time.Now()
	co := applyStream(opts)
	if err := co.check(); err != nil {
		return nil, err
	}
	s := &Stream{p: p, st: newStreamState(streamBuffer(p.cfg.MaxPayload))}
	s.rq = request{t: t, payload: payload, co: co, start: start, via: viaStream, st: s.st}
	s.ctx = p.begin(ctx, &s.rq)
	if err := p.write(s.ctx, &s.rq); err != nil {
		p.finish(&s.rq, err)
		return nil, err
	}
	p.stats.streams.Add(1)
	if err := s.written(); err != nil {
		return nil, err
	}
	return s, nil
}

// written waits for the request's write to return; its send span ends
// then.
func (s *Stream) written() error {
	for {
		s.st.mu.Lock()
		written, entry, werr, took := s.st.written, s.st.entry, s.st.werr, s.st.took
		s.st.mu.Unlock()
		if written {
			if werr != nil {
				err := fmt.Errorf("producer: stream to %s: %w", s.rq.t.name, werr)
				s.end(err, false)
				return err
			}
			s.entry, s.rq.tm.entry, s.rq.tm.write = entry, entry, took
			s.p.tr.endSend(&s.rq, &s.p.ids, nil)
			return nil
		}
		if err := s.wait(); err != nil {
			// Gave up before the write returned: it may land, so the
			// handler is told (a cancel) when the caller cancelled.
			s.end(err, errors.Is(err, context.Canceled))
			return err
		}
	}
}

// wait blocks until the stream's state changes, or returns why it cannot
// go on (ctx, deadline, Close).
func (s *Stream) wait() error {
	select {
	case <-s.st.notify:
		return nil
	case <-s.ctx.Done():
		return s.p.stats.ctxErr(s.ctx.Err(), "waiting for the stream")
	case <-s.rq.expired:
		return s.p.stats.ctxErr(context.DeadlineExceeded, "waiting for the stream")
	case <-s.p.closing:
		return fmt.Errorf("producer: stream: %w", bus.ErrClosed)
	}
}

// end ends the stream with err (io.EOF: complete), telling the handler
// when cancel is set: its waiter leaves the registry, its slot is given
// back, and its request finishes (breaker, timings, spans).
func (s *Stream) end(err error, cancel bool) {
	if s.err != nil {
		return
	}
	s.err = err
	s.p.release(&s.rq)
	if cancel {
		s.p.cancels.cancel(s.rq.notice)
	}
	res := err
	if errors.Is(err, io.EOF) {
		res = nil
	}
	if errors.Is(err, bus.ErrStreamBroken) {
		s.p.stats.streamsBroken.Add(1)
	}
	if res == nil {
		s.p.stats.replies.Add(1)
	} else if !errors.Is(err, bus.ErrStreamBroken) {
		var re *bus.RemoteError
		if errors.As(err, &re) {
			s.p.stats.remoteErrors.Add(1)
		}
	}
	s.rq.tm.chunks = s.next
	s.p.finish(&s.rq, res)
}

// broken ends the stream with an error wrapping bus.ErrStreamBroken and
// cancels the handler (nobody reads what it sends).
func (s *Stream) broken(format string, args ...any) error {
	err := fmt.Errorf("producer: stream from %s: %w: "+format, append([]any{s.rq.t.name, bus.ErrStreamBroken}, args...)...)
	s.end(err, true)
	return err
}

// Recv returns the next chunk, waiting for it; io.EOF after the last one.
// Errors: ctx's (a cancel also cancels the handler), bus.ErrTimeout when
// the deadline passes, *bus.RemoteError when the handler failed (after the
// chunks it sent), bus.ErrStreamBroken (see Stream), bus.ErrClosed. Once it
// returned an error it returns the same error again.
func (s *Stream) Recv() ([]byte, error) {
	for {
		if s.err != nil {
			return nil, s.err
		}
		if len(s.pending) == 0 {
			s.st.mu.Lock()
			s.pending, s.st.items = s.st.items, s.pending[:0]
			s.st.bytes = 0
			over := s.st.over
			s.st.mu.Unlock()
			if over {
				return nil, s.broken("more than %d bytes of chunks waited for the caller to read them", s.st.max)
			}
			if len(s.pending) == 0 {
				if err := s.wait(); err != nil {
					s.end(err, errors.Is(err, context.Canceled))
					return nil, err
				}
				continue
			}
		}
		it := s.pending[0]
		s.pending[0] = streamItem{}
		s.pending = s.pending[1:]
		if chunk, done, err := s.take(&it); done {
			return chunk, err
		}
	}
}

// take judges one item: it reports done with what Recv returns, or not
// done when the item is skipped.
func (s *Stream) take(it *streamItem) (chunk []byte, done bool, err error) {
	if it.entry != "" && it.entry != s.entry {
		s.p.reader.forged("", it.entry) // answers another entry: someone else wrote it
		return nil, false, nil
	}
	switch {
	case s.attempt == 0 || it.attempt == s.attempt:
		s.attempt = it.attempt
	case it.attempt < s.attempt:
		return nil, false, nil // an earlier delivery, still sending
	case s.next == 0:
		s.attempt = it.attempt // delivered again before any chunk was read: follow it
	default:
		return nil, true, s.broken("the request was delivered again (attempt %d) after %d chunks of attempt %d", it.attempt, s.next, s.attempt)
	}
	if !it.end {
		switch {
		case it.seq < s.next:
			return nil, false, nil // a duplicate
		case it.seq > s.next:
			return nil, true, s.broken("chunk %d missing (got %d; the reply stream was trimmed?)", s.next, it.seq)
		}
		if s.next == 0 {
			s.first = time.Since(s.rq.start)
			s.p.timings.Record(metrics.FirstChunk, s.first)
		}
		s.next++
		s.p.stats.chunks.Add(1)
		s.p.timings.Record(metrics.ChunkTransit, it.transit)
		return it.payload, true, nil
	}
	tm := &s.rq.tm // the final reply's stages: finish records them
	tm.replied, tm.retried = true, it.retried
	tm.queue, tm.handler, tm.transit, tm.decode = it.queue, it.handler, it.transit, it.decode
	if it.err != nil {
		s.end(it.err, false)
		return nil, true, it.err
	}
	if it.seq != s.next {
		return nil, true, s.broken("the handler sent %d chunks, %d arrived", it.seq, s.next)
	}
	if len(it.payload) > 0 {
		if s.next == 0 {
			s.first = time.Since(s.rq.start)
			s.p.timings.Record(metrics.FirstChunk, s.first)
		}
		s.next++
		s.p.stats.chunks.Add(1)
		s.end(io.EOF, false)
		return it.payload, true, nil
	}
	s.end(io.EOF, false)
	return nil, true, io.EOF
}

// All returns an iterator over the chunks: each chunk with a nil error,
// then, if the stream failed, one nil chunk with the error. Breaking out
// of the loop closes the stream (cancelling the handler).
func (s *Stream) All() iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		for {
			chunk, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, err)
				return
			}
			if !yield(chunk, nil) {
				s.Close()
				return
			}
		}
	}
}

// Close stops reading: before the end, the handler is cancelled and Recv
// returns an error wrapping context.Canceled. Closing again, or after the
// end, does nothing. It always returns nil.
func (s *Stream) Close() error {
	s.end(fmt.Errorf("producer: stream closed by the caller: %w", context.Canceled), true)
	return nil
}

// FirstChunk returns how long the first chunk took from the Stream call
// (zero until it came).
func (s *Stream) FirstChunk() time.Duration { return s.first }

// Chunks returns how many chunks Recv returned.
func (s *Stream) Chunks() uint64 { return s.next }
