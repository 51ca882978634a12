package producer

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
)

// sendItem is one XADD waiting to be written.
type sendItem struct {
	key string
	buf *codec.Buffer
	seq uint64  // request: its waiter in the registry receives a write error
	pub *waiter // publish: receives the entry id or the write error
}

const (
	// maxFlushers bounds concurrent pipelined writes of one producer.
	maxFlushers = 2
	// maxSendBatch bounds one pipelined write.
	maxSendBatch = 512
)

// sender batches XADDs by combining: callers queue their entry; while no
// more than maxFlushers flushes run, a caller that queues starts a flusher
// goroutine that writes everything queued as one pipeline and keeps going
// while entries keep arriving. Under load batches grow with the round trip,
// so many callers share one write syscall and one Redis read; at low load
// an entry is written at once. Callers never wait on a flush themselves: a
// Request waits for its reply (or its write error) bounded by its ctx, even
// when Redis hangs.
type sender struct {
	mu      sync.Mutex
	queue   []sendItem
	active  int  // flushers running
	closed  bool // no more submissions
	helpers sync.WaitGroup
}

var batchPool = sync.Pool{New: func() any {
	b := make([]sendItem, 0, 64)
	return &b
}}

var cmdsPool = sync.Pool{New: func() any {
	c := make(rueidis.Commands, 0, 64)
	return &c
}}

// submit queues it, starting a flusher if fewer than maxFlushers run. It
// reports false when the producer is closed; it is then not queued.
func (p *Producer) submit(it sendItem) bool {
	s := &p.send
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.queue = append(s.queue, it)
	if s.active >= maxFlushers {
		s.mu.Unlock()
		return true
	}
	s.active++
	s.helpers.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.helpers.Done()
		p.flushLoop()
	}()
	return true
}

// flushLoop writes queued batches while there are any; it holds one flusher
// slot, released when the queue is seen empty under the lock (so no item is
// ever left without a flusher).
func (p *Producer) flushLoop() {
	s := &p.send
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.active--
			s.mu.Unlock()
			return
		}
		bp := batchPool.Get().(*[]sendItem)
		n := min(len(s.queue), maxSendBatch)
		batch := (*bp)[:0]
		batch = append(batch, s.queue[:n]...)
		rest := copy(s.queue, s.queue[n:])
		clear(s.queue[rest:])
		s.queue = s.queue[:rest]
		s.mu.Unlock()

		p.flush(batch)
		clear(batch)
		*bp = batch[:0]
		batchPool.Put(bp)
	}
}

// flush writes one batch as a pipeline and settles every item.
func (p *Producer) flush(batch []sendItem) {
	cp := cmdsPool.Get().(*rueidis.Commands)
	cmds := (*cp)[:0]
	trim := p.trimCap()
	for i := range batch {
		cmds = append(cmds, bus.AddCmd(p.c, batch[i].key, trim, false, batch[i].buf.B))
	}
	// No per-flush timer: the connection's write timeout (bus.Config
	// WriteTimeout) bounds a pipelined command without a ctx deadline.
	res := p.c.DoMulti(context.Background(), cmds...)
	for i := range batch {
		id, err := res[i].ToString()
		p.settle(&batch[i], id, err)
	}
	clear(cmds)
	*cp = cmds[:0]
	cmdsPool.Put(cp)
}

// settle reports one write's outcome to its caller.
func (p *Producer) settle(it *sendItem, id string, err error) {
	if err == nil || bus.IsRedisReply(err) {
		codec.PutBuffer(it.buf) // else rueidis may still hold it
	}
	err = bus.Unavailable(err)
	if it.pub != nil {
		it.pub.ch <- result{id: id, err: err}
		return
	}
	if err == nil {
		p.stats.requests.Add(1)
		return
	}
	if w := p.waiters.take(it.seq); w != nil {
		w.ch <- result{err: fmt.Errorf("producer: request to %s: %w", it.key, err), writeErr: true}
	}
}

// closeSender refuses new submissions and waits, bounded by ctx, for the
// flushers to write what is queued.
func (p *Producer) closeSender(ctx context.Context) error {
	s := &p.send
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.helpers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
