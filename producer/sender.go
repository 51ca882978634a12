package producer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/combine"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// sendItem is one XADD waiting to be written.
type sendItem struct {
	key string
	buf *codec.Buffer
	seq uint64       // request: its waiter in the registry receives a write error
	pub *waiter      // publish: receives the entry id or the write error
	st  *streamState // streamed request: receives the entry id or the write error
	at  time.Time    // when it was handed to the sender (for the Write stage)
}

const (
	// maxFlushers bounds concurrent pipelined writes of one producer.
	maxFlushers = 2
	// maxSendBatch bounds one pipelined write.
	maxSendBatch = 512
)

// flushBufs are one flush's commands and results, pooled.
type flushBufs struct {
	adds []redisx.Add
	res  []redisx.Result
}

var flushPool = sync.Pool{New: func() any {
	return &flushBufs{adds: make([]redisx.Add, 0, 64), res: make([]redisx.Result, 0, 64)}
}}

// sender writes the producer's XADDs: it gathers concurrent callers'
// entries into pipelined writes by flat combining (internal/combine) and
// settles each entry: a publish's waiter gets its entry id, a request's
// write is stamped on its waiter (replyReader.stamp), a failed write is
// delivered as the request's result. Its flushers are goroutines of the
// combiner; close stops taking entries and waits for them.
type sender struct {
	comb    *combine.Combiner[sendItem]
	port    port
	cfg     *Config // WaitReplicas, WaitTimeout, StreamMaxAge
	cap     redisx.Cap
	reader  *replyReader
	stats   *counters
	timings *metrics.Recorder
}

// Its flushers wait for other callers (combine.Busy) while more than one
// request is in flight (the reply reader's count of them).
func newSender(port port, cfg *Config, reader *replyReader, stats *counters, timings *metrics.Recorder) *sender {
	s := &sender{port: port, cfg: cfg, cap: redisx.MaxLen(cfg.StreamMaxLen), reader: reader, stats: stats, timings: timings}
	s.comb = combine.New(s.flush, maxFlushers, maxSendBatch, 0).KeepHelpers().Busy(func() bool { return reader.inFlight() > 1 })
	return s
}

// trimCap is the XADD trimming for writes made now: by age when
// StreamMaxAge is set (computed per batch, not per message), else by length.
func (s *sender) trimCap() redisx.Cap {
	if s.cfg.StreamMaxAge > 0 {
		return redisx.MinAge(time.Now(), s.cfg.StreamMaxAge)
	}
	return s.cap
}

// submit queues it for the next pipelined write: under load many callers
// share one write and one Redis read; at low load an entry is written at
// once. Flushes run on helper goroutines, never on the caller's, so a
// Request waits for its reply (or write error) bounded by its ctx even when
// Redis hangs. It reports false once the producer is closed; the item is
// then not queued.
func (s *sender) submit(it sendItem) bool { return s.comb.Add(it, false) }

// flush writes one batch of the combiner. No per-flush timer: the
// connection's write timeout (bus.Config WriteTimeout) bounds a pipelined
// command without a ctx deadline.
func (s *sender) flush(batch []sendItem) { s.write(context.Background(), batch) }

// write writes batch in one round trip (one MULTI/EXEC per stream when it
// holds two or more, see redisx.DoBatch) and settles every item. The
// combiner's flushers call it, and RequestBatch on its own goroutine, for
// its requests to go together.
func (s *sender) write(ctx context.Context, batch []sendItem) {
	fb := flushPool.Get().(*flushBufs)
	trim := s.trimCap()
	for i := range batch {
		fb.adds = append(fb.adds, redisx.Add{Key: batch[i].key, Cap: trim, Data: batch[i].buf.B})
	}
	s.stats.writes.Add(1)
	fb.res = s.addBatch(ctx, fb.adds, fb.res)
	now := time.Now()
	for i := range batch {
		s.settle(&batch[i], fb.res[i].ID, fb.res[i].Err, now.Sub(batch[i].at))
	}
	clear(fb.adds)
	clear(fb.res)
	fb.adds, fb.res = fb.adds[:0], fb.res[:0]
	flushPool.Put(fb)
}

// addBatch writes adds (redisx.AddBatch), waiting for replicas when
// Config.WaitReplicas asks for it.
func (s *sender) addBatch(ctx context.Context, adds []redisx.Add, out []redisx.Result) []redisx.Result {
	if s.cfg.WaitReplicas > 0 {
		return s.port.AddBatchDurable(ctx, adds, redisx.Durability{Replicas: s.cfg.WaitReplicas, Timeout: s.cfg.WaitTimeout}, out)
	}
	return s.port.AddBatch(ctx, adds, nil, out)
}

// settle reports one write's outcome to its caller.
func (s *sender) settle(it *sendItem, id string, err error, took time.Duration) {
	if !redisx.IsConnErr(err) {
		codec.PutBuffer(it.buf) // else the client may still hold it
	}
	err = redisx.Classify(err, "XADD")
	if err != nil {
		s.stats.writeErrors.Add(1)
	}
	if it.pub != nil {
		if err == nil {
			s.timings.Record(metrics.Write, took)
		}
		it.pub.ch <- result{id: id, err: err}
		return
	}
	if it.st != nil {
		if err == nil {
			s.timings.Record(metrics.Write, took)
			s.stats.requests.Add(1)
		}
		it.st.setWritten(id, err, took)
		return
	}
	if err == nil {
		s.timings.Record(metrics.Write, took)
		s.stats.requests.Add(1)
		s.reader.stamp(it.seq, took, id)
		return
	}
	if w := s.reader.waiters.take(it.seq); w != nil {
		s.reader.deliver(w, result{err: fmt.Errorf("producer: request to %s: %w", it.key, err), writeErr: true})
	}
}

// close refuses new submissions and waits, bounded by ctx, for the
// flushers to write what is queued.
func (s *sender) close(ctx context.Context) error {
	s.comb.Close()
	done := make(chan struct{})
	go func() {
		s.comb.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
