package producer

import (
	"context"
	"crypto/rand"
	"time"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/combine"
	"github.com/egos/mycelium/internal/redisx"
)

// Cancellation: when a caller's ctx is cancelled after its request was
// written (or Close abandons it, or a Stream is closed before its end), the
// producer writes a cancel notice on the topic's control stream; every
// worker of the topic reads it and cancels the handler's ctx, or skips the
// request if nobody picked it up yet (docs/wire.md, "Control stream").
// Nothing is written for requests that end normally or by their deadline
// (the worker's ctx carries the same deadline).

// cancelNotice is what a cancel notice needs: the topic's control stream,
// the request's cancel token (random, carried by the request: a worker
// honours a notice only with it, so nobody but this caller can cancel the
// request), its sequence number (its correlation id is the producer's
// incarnation and the number in base 36: formatted only for a notice, so
// that requests that are not cancelled allocate nothing for it) and
// deadline (unix ms).
type cancelNotice struct {
	ctl      string
	token    codec.Token
	seq      uint64
	deadline int64
}

// maxCancelBatch bounds one write of cancel notices.
const maxCancelBatch = 256

func (p *Producer) newCanceller() *combine.Combiner[cancelNotice] {
	return combine.New(p.flushCancels, 1, maxCancelBatch, 0)
}

// cancelRequest queues a cancel notice; it is written by a background
// flusher (the caller returns at once). Best effort: a notice that cannot be
// written leaves the handler to run to its deadline, as without
// cancellation.
func (p *Producer) cancelRequest(n cancelNotice) {
	if n.ctl == "" {
		return
	}
	p.cancels.Add(n, false)
}

// flushCancels writes queued notices, one round trip per control stream.
func (p *Producer) flushCancels(batch []cancelNotice) {
	byKey := map[string][]redisx.Control{}
	for _, n := range batch {
		id := p.ids.id(n.seq)
		byKey[n.ctl] = append(byKey[n.ctl], redisx.Control{Op: redisx.OpCancel, Token: n.token, Req: id, To: p.reader.key, Until: n.deadline})
	}
	for key, notices := range byKey {
		// No deadline reaches rueidis (see redisx.Detach): the connection's
		// write timeout bounds the write, Close cancels it.
		if err := redisx.AddControl(p.ctlCtx, p.c.Redis(), key, notices); err == nil {
			p.stats.cancelled.Add(uint64(len(notices))) // written: a worker reading now sees them
		} else {
			p.stats.cancelErrors.Add(uint64(len(notices)))
			p.log.Warn().Err(err).Str("stream", key).Int("notices", len(notices)).Msg("cancel notices not written: those handlers run until their deadline")
		}
	}
}

// cancelAbandoned queues a notice for every request still waiting (Close
// abandons them).
func (p *Producer) cancelAbandoned() {
	p.reader.waiters.each(func(w *waiter) { p.cancelRequest(w.cancel) })
}

// closeCancels writes the queued notices, bounded by ctx.
func (p *Producer) closeCancels(ctx context.Context) {
	p.cancels.Close()
	done := make(chan struct{})
	go func() {
		p.cancels.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		p.ctlStop()
		<-done
	}
}

// noticeFor returns the cancel notice of request seq on t with deadline,
// with a fresh random token for the request to carry (crypto/rand: 16
// bytes cost ~60 ns here, through the kernel's vDSO getrandom).
func noticeFor(t *topic, seq uint64, deadline time.Time) cancelNotice {
	n := cancelNotice{ctl: t.root().ctl, seq: seq, deadline: deadline.UnixMilli()}
	_, _ = rand.Read(n.token[:]) // never fails (it crashes the program first)
	return n
}
