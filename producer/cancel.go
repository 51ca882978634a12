package producer

import (
	"context"
	"crypto/rand"
	"time"

	"github.com/rs/zerolog"

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

// canceller writes cancel notices, gathered by a combiner whose one
// flusher writes them in the background (the caller returns at once),
// under ctx, which close cancels if they overrun its own.
type canceller struct {
	comb     *combine.Combiner[cancelNotice]
	ctx      context.Context // the flushes': the one kept, so close can cut them short
	stop     context.CancelFunc
	port     port
	ids      *ids
	replyKey string
	stats    *counters
	log      zerolog.Logger
}

func newCanceller(port port, ids *ids, replyKey string, stats *counters, log zerolog.Logger) *canceller {
	c := &canceller{port: port, ids: ids, replyKey: replyKey, stats: stats, log: log}
	c.ctx, c.stop = context.WithCancel(context.Background())
	c.comb = combine.New(c.flush, 1, maxCancelBatch, 0)
	return c
}

// cancel queues a cancel notice. Best effort: a notice that cannot be
// written leaves the handler to run to its deadline, as without
// cancellation. A notice without a control stream (a flight's) is dropped.
func (c *canceller) cancel(n cancelNotice) {
	if n.ctl == "" {
		return
	}
	c.comb.Add(n, false)
}

// flush writes queued notices, one round trip per control stream.
func (c *canceller) flush(batch []cancelNotice) {
	byKey := map[string][]redisx.Control{}
	for _, n := range batch {
		byKey[n.ctl] = append(byKey[n.ctl], redisx.Control{Op: redisx.OpCancel, Token: n.token, Req: c.ids.id(n.seq), To: c.replyKey, Until: n.deadline})
	}
	for key, notices := range byKey {
		// No deadline reaches rueidis (see redisx.Detach): the connection's
		// write timeout bounds the write, close cancels it.
		if err := c.port.AddControl(c.ctx, key, notices); err == nil {
			c.stats.cancelled.Add(uint64(len(notices))) // written: a worker reading now sees them
		} else {
			c.stats.cancelErrors.Add(uint64(len(notices)))
			c.log.Warn().Err(err).Str("stream", key).Int("notices", len(notices)).Msg("cancel notices not written: those handlers run until their deadline")
		}
	}
}

// abandon queues a notice for every request still waiting in waiters
// (Close abandons them).
func (c *canceller) abandon(waiters *registry) {
	waiters.each(func(w *waiter) { c.cancel(w.cancel) })
}

// close writes the queued notices, bounded by ctx.
func (c *canceller) close(ctx context.Context) {
	c.comb.Close()
	done := make(chan struct{})
	go func() {
		c.comb.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		c.stop()
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
