package producer

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
)

// sendItem is one XADD waiting for a sender.
type sendItem struct {
	key string
	buf *codec.Buffer
	seq uint64  // request: its waiter in the registry receives a write error
	pub *waiter // publish: receives the entry id or the write error
}

// maxSendBatch bounds one pipelined write.
const maxSendBatch = 512

// senders is the number of concurrent pipelined writes.
const senders = 2

// ensureSender starts the senders once.
func (p *Producer) ensureSender() {
	p.sendOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		p.stopSend = cancel
		done := make(chan struct{}, senders)
		for range senders {
			go func() {
				defer func() { done <- struct{}{} }()
				p.send(ctx)
			}()
		}
		go func() {
			for range senders {
				<-done
			}
			close(p.sendDone)
		}()
	})
}

// enqueue hands an encoded XADD to the senders. It fails only when ctx ends
// or the producer closes first.
func (p *Producer) enqueue(ctx context.Context, it sendItem) error {
	p.ensureSender()
	select {
	case p.sendq <- it:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-p.sendDone:
		return bus.ErrClosed
	}
}

// send is one sender: it takes whatever XADDs are queued (at least one,
// waiting for it) and writes them as one pipeline. While a pipeline is in
// flight, the next batch accumulates: batches grow with load on their own
// and every caller shares one write syscall and one Redis read, instead of
// one per message.
func (p *Producer) send(ctx context.Context) {
	batch := make([]sendItem, 0, maxSendBatch)
	cmds := make(rueidis.Commands, 0, maxSendBatch)
	for {
		select {
		case it := <-p.sendq:
			batch = append(batch[:0], it)
		case <-ctx.Done():
			p.failQueued()
			return
		}
	drain:
		for len(batch) < maxSendBatch {
			select {
			case it := <-p.sendq:
				batch = append(batch, it)
			default:
				break drain
			}
		}
		cmds = cmds[:0]
		for i := range batch {
			cmds = append(cmds, bus.AddCmd(p.c, batch[i].key, p.cap, false, batch[i].buf.B))
		}
		wctx, cancel := context.WithTimeout(ctx, p.writeTimeout)
		res := p.c.DoMulti(wctx, cmds...)
		cancel()
		for i := range batch {
			id, err := res[i].ToString()
			p.settle(&batch[i], id, err)
			batch[i] = sendItem{}
		}
	}
}

// settle reports one write's outcome to its caller.
func (p *Producer) settle(it *sendItem, id string, err error) {
	if err == nil || bus.IsRedisReply(err) {
		codec.PutBuffer(it.buf) // else rueidis may still hold it
	}
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

// failQueued fails what is still queued when the producer closes.
func (p *Producer) failQueued() {
	for {
		select {
		case it := <-p.sendq:
			p.settle(&it, "", fmt.Errorf("producer: %w before the write", bus.ErrClosed))
		default:
			return
		}
	}
}

// writeTimeoutFor bounds a sender's pipelined write.
func writeTimeoutFor(cfg Config) time.Duration { return max(cfg.RequestTimeout, 5*time.Second) }
