package consumer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/combine"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// Streamed replies (docs/wire.md, "Streamed replies"): a handler's chunks
// go to the caller's reply stream as KindChunk envelopes numbered from 0,
// each written before Send returns, so they are in the stream in order;
// the final reply carries the number of chunks sent (Seq), so the caller
// knows it missed none. Every chunk and the reply carry the delivery
// (Attempt) that made them: a caller never mixes two deliveries' streams.

// chunkStream is one request's stream of chunks.
type chunkStream struct {
	a       *acker
	replyTo string
	id      string // correlation id
	entry   string // the request's stream entry
	attempt uint32

	mu  sync.Mutex // serialises sends; held while a chunk is written
	seq uint64     // chunks written
	err error      // set once a send failed or the handler returned
}

// errStreamEnded: Send after the handler returned.
var errStreamEnded = fmt.Errorf("consumer: the handler returned: %w", bus.ErrCallerGone)

// chunkWrite is one chunk on its way to Redis.
type chunkWrite struct {
	key  string
	buf  *codec.Buffer
	done chan error // buffered (1)
}

var donePool = sync.Pool{New: func() any { return make(chan error, 1) }}

func (s *chunkStream) send(ctx context.Context, chunk []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if max := s.a.cfg.MaxEntrySize; len(chunk) > max {
		return fmt.Errorf("consumer: send: %w: chunk of %d bytes, max %d", bus.ErrPayloadTooLarge, len(chunk), max)
	}
	env := codec.Envelope{Kind: codec.KindChunk, ID: s.id, RequestEntry: s.entry, Attempt: s.attempt, Seq: s.seq,
		Sent: time.Now().UnixNano(), Payload: chunk}
	w := chunkWrite{key: s.replyTo, buf: codec.Encode(&env), done: donePool.Get().(chan error)}
	if !s.a.chunks.Add(w, true) {
		codec.PutBuffer(w.buf)
		donePool.Put(w.done)
		s.err = fmt.Errorf("consumer: send: %w", bus.ErrClosed)
		return s.err
	}
	start := time.Now()
	select {
	case err := <-w.done:
		donePool.Put(w.done)
		s.a.timings.Record(metrics.ChunkWrite, time.Since(start))
		if err != nil {
			s.err = err
			return err
		}
		s.seq++
		s.a.stats.chunks.Add(1)
		return nil
	case <-ctx.Done():
		// The write may still land; nothing after it may (a gap the caller
		// would see), so the stream ends here.
		s.err = ctx.Err()
		return s.err
	}
}

// end closes the stream to further sends (waiting for one in progress)
// and returns how many chunks were written.
func (s *chunkStream) end() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = errStreamEnded
	}
	return s.seq
}

// maxChunkBatch bounds one flush of chunks.
const maxChunkBatch = 256

func newChunkWriter(a *acker) *combine.Combiner[chunkWrite] {
	return combine.New(a.flushChunks, maxAckFlushers, maxChunkBatch, maxAckRounds)
}

// flushChunks writes a batch of chunks in one pipeline (those to one reply
// stream in one MULTI/EXEC, in order) and tells each sender how it went.
// Connection errors are retried like replies.
func (a *acker) flushChunks(batch []chunkWrite) {
	adds := make([]redisx.Add, len(batch))
	for i := range batch {
		adds[i] = redisx.Add{Key: batch[i].key, Cap: a.replyCap, NoMkStream: true, Data: batch[i].buf.B}
	}
	res, ok, reusable := a.doOwned(make([]redisx.Result, 0, len(adds)), func(out []redisx.Result) []redisx.Result {
		return a.port.AddBatch(a.ctx, adds, nil, out)
	})
	for i := range batch {
		var err error
		switch {
		case !ok:
			err = fmt.Errorf("consumer: send: %w", bus.ErrUnavailable)
		case res[i].Err == nil:
			if reusable {
				codec.PutBuffer(batch[i].buf)
			}
		case redisx.IsNil(res[i].Err):
			err = bus.ErrCallerGone
			if reusable {
				codec.PutBuffer(batch[i].buf)
			}
		default:
			err = fmt.Errorf("consumer: send: %w", redisx.Unavailable(res[i].Err))
		}
		batch[i].done <- err
	}
}
