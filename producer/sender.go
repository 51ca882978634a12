package producer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/metrics"
)

// sendItem is one XADD waiting to be written.
type sendItem struct {
	key string
	buf *codec.Buffer
	seq uint64    // request: its waiter in the registry receives a write error
	pub *waiter   // publish: receives the entry id or the write error
	at  time.Time // when it was handed to the sender (for the Write stage)
}

const (
	// maxFlushers bounds concurrent pipelined writes of one producer.
	maxFlushers = 2
	// maxSendBatch bounds one pipelined write.
	maxSendBatch = 512
)

var cmdsPool = sync.Pool{New: func() any {
	c := make(rueidis.Commands, 0, 64)
	return &c
}}

// submit queues it for the next pipelined write (see internal/combine):
// under load many callers share one write and one Redis read; at low load
// an entry is written at once. Flushes run on helper goroutines, never on
// the caller's, so a Request waits for its reply (or write error) bounded
// by its ctx even when Redis hangs. It reports false once the producer is
// closed; the item is then not queued.
func (p *Producer) submit(it sendItem) bool { return p.send.Add(it, false) }

// flush writes one batch in one round trip (one MULTI/EXEC when it holds
// two or more, see bus.DoBatch) and settles every item.
func (p *Producer) flush(batch []sendItem) {
	cp := cmdsPool.Get().(*rueidis.Commands)
	cmds := (*cp)[:0]
	trim := p.trimCap()
	for i := range batch {
		cmds = append(cmds, bus.AddCmd(p.c, batch[i].key, trim, false, batch[i].buf.B))
	}
	// No per-flush timer: the connection's write timeout (bus.Config
	// WriteTimeout) bounds a pipelined command without a ctx deadline.
	p.stats.writes.Add(1)
	res := bus.DoBatch(context.Background(), p.c, cmds)
	now := time.Now()
	for i := range batch {
		id, err := res[i].ToString()
		p.settle(&batch[i], id, err, now.Sub(batch[i].at))
	}
	clear(cmds)
	*cp = cmds[:0]
	cmdsPool.Put(cp)
}

// settle reports one write's outcome to its caller.
func (p *Producer) settle(it *sendItem, id string, err error, took time.Duration) {
	if err == nil || bus.IsRedisReply(err) {
		codec.PutBuffer(it.buf) // else rueidis may still hold it
	}
	err = bus.Unavailable(err)
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
	if err == nil {
		p.timings.Record(metrics.Write, took)
		p.stats.requests.Add(1)
		p.waiters.stamp(it.seq, took)
		return
	}
	if w := p.waiters.take(it.seq); w != nil {
		w.ch <- result{err: fmt.Errorf("producer: request to %s: %w", it.key, err), writeErr: true}
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
