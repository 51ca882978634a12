package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/metrics"
)

// processor runs the user's handler for a job, in a short sequence of
// steps: the handler's ctx (deadline, cancellation by the caller, trace
// context and span), the call (a panic becomes an error), the end of a
// streamed reply, and the decision of what becomes of the entry:
// acknowledged (with a reply for requests, and a cache settle for cached
// ones), dead-lettered, or left pending for a retry.
type processor struct {
	*env
	h       Handler
	cancels *cancelSet
	delay   *delayer
}

// work handles one job on a worker's goroutine; slot is the worker's
// (what the heartbeat and the controller see of it).
func (w *processor) work(hctx, hvals context.Context, j *job, p *pipe, slot *workerSlot) {
	ctx, span, early, hs := w.begin(hctx, hvals, j, slot)
	defer hs.stop()
	started := time.Now()
	var out []byte
	var err error
	outcome := "" // a span event naming what became of the entry, when not a plain ack
	if !early {
		out, err = w.call(ctx, &j.msg)
	}
	ended := time.Now()
	cancelled := slot.clear() || early
	w.cancels.finished(&j.env.Token) // an event's token is zero: nothing to do
	chunks := uint64(0)
	if j.msg.stream != nil {
		chunks = j.msg.stream.end()
	}
	if span != nil {
		queued := j.queued // j goes back to its pool before the span ends
		defer func() { endProcess(span, queued, err, outcome) }()
	}
	w.timings.Record(metrics.Handler, ended.Sub(started))
	w.stats.handled.Add(1)
	if cancelled {
		outcome = "cancelled" // the caller gave up: no reply, nobody reads it
		done := completion{p: j.p, id: j.msg.ID}
		putJob(j)
		p.a.add(done)
		return
	}
	outcome = w.finish(hctx, j, out, err, ended.Sub(started), ended, chunks, p)
}

// begin makes the handler's ctx: the message's trace context (and its
// process span) in its values, nothing when it carries none and no tracer
// is set; for a request, what cancels it when its caller gives up (its
// deadline ctx, or a cancel func without a deadline), registered in slot.
// early reports a request cancelled before its handler started; hs
// releases the ctx.
func (w *processor) begin(hctx, hvals context.Context, j *job, slot *workerSlot) (ctx context.Context, span trace.Span, early bool, hs handlerStop) {
	ctx = hctx
	vals := hvals
	if w.tr.traced(j.env.Headers) {
		vals, span = w.tr.start(hvals, &w.cfg, &j.msg, &j.env)
		ctx = valuesCtx{hctx, vals}
	}
	// No method value or closure for what releases the ctx: either would
	// allocate per message (a closure did: one allocation a request).
	if !j.msg.Deadline.IsZero() {
		hs.dc = newDeadlineCtx(hctx, vals, j.msg.Deadline)
		ctx = hs.dc
	} else if j.msg.Request {
		ctx, hs.cancel = context.WithCancelCause(ctx)
	}
	if !j.msg.Request {
		slot.set(j.p, j.msg.ID, j.readAt)
		return ctx, span, false, hs
	}
	slot.setRequest(j.p, j.msg.ID, j.readAt, &j.env.Token, hs.dc, hs.cancel)
	// A cancel notice handled between the pick-up and now found no handler
	// to cancel.
	if w.cancels.started(&j.env.Token, slot) {
		w.stats.cancelled.Add(1)
		early = true
	}
	return ctx, span, early, hs
}

// handlerStop releases a handler's ctx (see begin): its deadline ctx, or
// the cancel of a request without a deadline; nothing for an event.
type handlerStop struct {
	dc     *deadlineCtx
	cancel context.CancelCauseFunc
}

func (s handlerStop) stop() {
	switch {
	case s.dc != nil:
		s.dc.cancel(context.Canceled)
	case s.cancel != nil:
		s.cancel(nil)
	}
}

// finish decides what becomes of a handled entry and hands it to the
// acker, or leaves it pending; it returns the span event that says which
// ("" for a plain acknowledgement or reply).
func (w *processor) finish(hctx context.Context, j *job, out []byte, err error, took time.Duration, ended time.Time, chunks uint64, p *pipe) string {
	if err != nil {
		w.stats.failed.Add(1)
		if hctx.Err() != nil {
			// Shutdown cancelled the handler: leave the entry pending for
			// another consumer rather than reporting a failure we caused.
			w.release(j, p)
			return ""
		}
	}
	if d := j.msg.cost - j.msg.estimate; d != 0 { // the handler reported its cost
		w.lim.observe(j.msg.cost)
		w.lim.charge(d)
	}
	done := completion{p: j.p, id: j.msg.ID, at: ended, queued: j.queued, retried: j.msg.Attempt > 1, handled: took, failed: err != nil}
	outcome := ""
	switch {
	case err != nil && w.retryAfter(hctx, j, err, p):
		return "retry_after"
	case j.msg.Request:
		if err != nil && errors.Is(err, bus.ErrRetryLater) && j.msg.Attempt < w.cfg.Retry.MaxDeliveries &&
			time.Until(j.msg.Deadline) > w.cfg.Reclaim.ClaimIdle {
			w.stats.retried.Add(1) // the caller can still wait for a retry
			w.warnFailed(&j.msg, err, "retry", "handler failed: the request is delivered again after ClaimIdle")
			w.delay.deferred.add(j.p, j.msg.ID, w.cfg.Reclaim.ClaimIdle)
			w.release(j, p)
			return "retry"
		}
		if err != nil {
			w.warnFailed(&j.msg, err, "handler_error", "handler failed: the caller gets a remote error")
		}
		w.reply(j, &done, out, err, took, ended, chunks)
	case err == nil:
	case errors.Is(err, bus.ErrSkipRetry):
		outcome = "dead_lettered"
		w.warnFailed(&j.msg, err, "handler_error", "handler failed (do not retry): dead-lettered")
		codec.Compress(&j.env, j.comp, 0) // dead-lettered as it came (j.env is not used after this)
		done.dead = w.deadEnvelope(j.msg.ID, &j.env, j.msg.Attempt, "handler_error", err.Error())
	case j.msg.Attempt >= w.cfg.Retry.MaxDeliveries:
		outcome = "dead_lettered"
		w.warnFailed(&j.msg, err, "max_deliveries", "handler failed on the last delivery: dead-lettered")
		codec.Compress(&j.env, j.comp, 0)
		done.dead = w.deadEnvelope(j.msg.ID, &j.env, j.msg.Attempt, "max_deliveries",
			fmt.Sprintf("failed %d times (MaxDeliveries %d); last error: %v", j.msg.Attempt, w.cfg.Retry.MaxDeliveries, err))
	default:
		// A failed event is delivered again after ClaimIdle.
		w.stats.retried.Add(1)
		w.warnFailed(&j.msg, err, "retry", "handler failed: the event is delivered again after ClaimIdle")
		w.delay.deferred.add(j.p, j.msg.ID, w.cfg.Reclaim.ClaimIdle)
		w.release(j, p)
		return "retry"
	}
	putJob(j) // done holds only strings that alias the entry, not j
	p.a.add(done)
	return outcome
}

// reply encodes a request's reply (the handler's answer or its error, the
// stages, the delivery and the chunks sent) into done, and its cache
// settle for a cached request.
func (w *processor) reply(j *job, done *completion, out []byte, err error, took time.Duration, ended time.Time, chunks uint64) {
	reply := codec.Envelope{
		Kind: codec.KindReply, ID: j.env.ID, Sent: ended.UnixNano(), Payload: out,
		QueueWait: int64(j.queued), Handler: int64(took),
		RequestEntry: j.msg.ID, // the caller checks it is the entry it wrote
		Attempt:      uint32(min(j.msg.Attempt, 1<<31)), Seq: chunks,
	}
	if err != nil {
		reply.Payload = nil
		reply.ErrCode, reply.ErrMsg = string(bus.CodeHandler), err.Error()
		var re *bus.RemoteError
		if errors.As(err, &re) && re.Code != "" {
			reply.ErrCode, reply.ErrMsg = string(re.Code), re.Message
		}
	}
	done.replyTo = j.env.ReplyTo
	codec.Compress(&reply, j.comp, 0) // as the request came (none: not at all)
	if j.cache != "" {
		done.cache = w.settleOf(j, &reply, err, ended)
	}
	done.reply = codec.Encode(&reply)
}

// retryAfter leaves the entry of a handler that returned a RetryAfter
// error pending for a delayed retry, when MaxDeliveries and (for a request)
// the caller's deadline leave room; it reports whether it did (then j is
// released).
func (w *processor) retryAfter(ctx context.Context, j *job, err error, p *pipe) bool {
	var ra *RetryAfterError
	if !errors.As(err, &ra) {
		return false
	}
	if (ra.Pause || w.cfg.Retry.PauseOnRetryAfter) && ra.Delay > 0 {
		w.lim.pause(ctx, ra.Delay)
	}
	if j.msg.Attempt >= w.cfg.Retry.MaxDeliveries {
		return false
	}
	delay := w.delay.retryDelay(ra.Delay, j.msg.Attempt)
	if j.msg.Request && !j.msg.Deadline.IsZero() && time.Until(j.msg.Deadline) <= delay {
		return false // the caller would be gone: it gets the error now
	}
	w.stats.retried.Add(1)
	if w.delay.schedule(ctx, j, delay) {
		w.warnFailed(&j.msg, err, "retry", "handler asked for a retry: delivered again after "+delay.Round(time.Millisecond).String())
	}
	w.release(j, p)
	return true
}

// release gives up an entry without acknowledging it: it stays pending.
func (w *processor) release(j *job, p *pipe) {
	putJob(j)
	w.inFlight.Add(-1)
	w.lim.settle()
	p.slots.give(1)
}

// call runs the handler, turning a panic into an error.
func (w *processor) call(ctx context.Context, m *Message) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			w.stats.panics.Add(1)
			w.log.Error().Str("entry", m.ID).Interface("panic", r).Msg("handler panicked")
			out, err = nil, &bus.RemoteError{Code: bus.CodePanic, Message: fmt.Sprint(r)}
		}
	}()
	return w.h.Handle(ctx, m)
}

// warnFailed logs a handler failure and what becomes of its entry.
func (w *processor) warnFailed(m *Message, err error, reason, what string) {
	w.warnEntry(entryWarning{id: m.ID, attempt: m.Attempt, reason: reason, handled: true, request: m.Request, err: err.Error(), msg: what})
}

// cancelledError is a handler ctx's error when its caller cancelled the
// request: it is context.Canceled and bus.ErrCancelled to errors.Is.
type cancelledError struct{}

func (cancelledError) Error() string { return "context canceled: " + bus.ErrCancelled.Error() }

func (cancelledError) Is(target error) bool {
	return target == context.Canceled || target == bus.ErrCancelled
}

var errCancelled error = cancelledError{}

// workerSlot tells the heartbeat what one worker is running. Each worker
// owns its slot; the heartbeat reads it every ClaimIdle/3.
type workerSlot struct {
	mu     sync.Mutex
	p      *part  // the entry's partition
	id     string // entry id; "" when idle
	readAt int64  // unix nanoseconds when the entry was read

	// A request's cancel token, and what cancels its handler's ctx (see
	// cancelRunning); zero for events.
	token     codec.Token
	dc        *deadlineCtx
	cancel    context.CancelCauseFunc // when dc is nil
	cancelled bool                    // cancelRunning cancelled it
}

// cancelHandler cancels the handler's ctx with cause (under s.mu).
func (s *workerSlot) cancelHandler(cause error) {
	switch {
	case s.dc != nil:
		s.dc.cancel(cause)
	case s.cancel != nil:
		s.cancel(cause)
	}
}

func (s *workerSlot) set(p *part, id string, readAt int64) {
	s.mu.Lock()
	s.p, s.id, s.readAt = p, id, readAt
	s.token, s.dc, s.cancel, s.cancelled = codec.Token{}, nil, nil, false
	s.mu.Unlock()
}

// clear marks the slot idle and reports whether its request was cancelled
// while it ran.
func (s *workerSlot) clear() bool {
	s.mu.Lock()
	cancelled := s.cancelled
	s.p, s.id, s.readAt = nil, "", 0
	s.token, s.dc, s.cancel, s.cancelled = codec.Token{}, nil, nil, false
	s.mu.Unlock()
	return cancelled
}

// setRequest is set for a request whose handler ctx dc (or cancel, when
// dc is nil) cancels.
func (s *workerSlot) setRequest(p *part, id string, readAt int64, token *codec.Token, dc *deadlineCtx, cancel context.CancelCauseFunc) {
	s.mu.Lock()
	s.p, s.id, s.readAt = p, id, readAt
	s.token, s.dc, s.cancel, s.cancelled = *token, dc, cancel, false
	s.mu.Unlock()
}

func (s *workerSlot) get() (*part, string, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p, s.id, s.readAt
}
