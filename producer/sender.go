package producer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/egos/mycelium/codec"
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

// submit queues it for the next pipelined write (see internal/combine):
// under load many callers share one write and one Redis read; at low load
// an entry is written at once. Flushes run on helper goroutines, never on
// the caller's, so a Request waits for its reply (or write error) bounded
// by its ctx even when Redis hangs. It reports false once the producer is
// closed; the item is then not queued.
func (p *Producer) submit(it sendItem) bool { return p.send.Add(it, false) }

// flush writes one batch in one round trip (one MULTI/EXEC when it holds
// two or more, see redisx.DoBatch) and settles every item.
func (p *Producer) flush(batch []sendItem) {
	fb := flushPool.Get().(*flushBufs)
	trim := p.trimCap()
	for i := range batch {
		fb.adds = append(fb.adds, redisx.Add{Key: batch[i].key, Cap: trim, Data: batch[i].buf.B})
	}
	// No per-flush timer: the connection's write timeout (bus.Config
	// WriteTimeout) bounds a pipelined command without a ctx deadline.
	p.stats.writes.Add(1)
	fb.res = p.addBatch(context.Background(), fb.adds, fb.res)
	now := time.Now()
	for i := range batch {
		p.settle(&batch[i], fb.res[i].ID, fb.res[i].Err, now.Sub(batch[i].at))
	}
	clear(fb.adds)
	clear(fb.res)
	fb.adds, fb.res = fb.adds[:0], fb.res[:0]
	flushPool.Put(fb)
}

// settle reports one write's outcome to its caller.
func (p *Producer) settle(it *sendItem, id string, err error, took time.Duration) {
	if !redisx.IsConnErr(err) {
		codec.PutBuffer(it.buf) // else the client may still hold it
	}
	err = redisx.Unavailable(err)
	if err != nil {
		p.stats.writeErrors.Add(1)
	}
	if it.pub != nil {
		if err == nil {
			p.timings.Record(metrics.Write, took)
		}
		it.pub.ch <- result{id: id, err: err}
		return
	}
	if it.st != nil {
		if err == nil {
			p.timings.Record(metrics.Write, took)
			p.stats.requests.Add(1)
		}
		it.st.setWritten(id, err)
		return
	}
	if err == nil {
		p.timings.Record(metrics.Write, took)
		p.stats.requests.Add(1)
		p.reader.stamp(it.seq, took, id)
		return
	}
	if w := p.reader.waiters.take(it.seq); w != nil {
		p.reader.deliver(w, result{err: fmt.Errorf("producer: request to %s: %w", it.key, err), writeErr: true})
	}
}

// closeSender refuses new submissions and waits, bounded by ctx, for the
// flushers to write what is queued.
func (p *Producer) closeSender(ctx context.Context) error {
	p.send.Close()
	done := make(chan struct{})
	go func() {
		p.send.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
