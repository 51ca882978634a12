package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/egos/mycelium/consumer"
)

// ---- stream: a fake model streaming tokens --------------------------------

// StreamResult is what a stream-scenario run measured (µs): time to the
// first chunk and to the end of each stream, the gap between chunks as the
// caller saw them, and the bus's overhead per chunk (the handler's Send to
// the caller's Recv, in one process: one clock).
type StreamResult struct {
	Chunks          int     `json:"chunks"`      // per stream
	IntervalMS      float64 `json:"interval_ms"` // the handler's pace
	Streams         int     `json:"streams"`
	FirstChunkP50US float64 `json:"first_chunk_p50_us"`
	FirstChunkP99US float64 `json:"first_chunk_p99_us"`
	FullReplyP50US  float64 `json:"full_reply_p50_us"`
	FullReplyP99US  float64 `json:"full_reply_p99_us"`
	InterChunkP50US float64 `json:"inter_chunk_p50_us"`
	InterChunkP99US float64 `json:"inter_chunk_p99_us"`
	OverheadP50US   float64 `json:"chunk_overhead_p50_us"`
	OverheadP99US   float64 `json:"chunk_overhead_p99_us"`
}

type streamScenario struct{}

// handler sends Chunks chunks, one every ChunkInterval (the first after
// one interval), each carrying the time it was sent (8 bytes) and padding
// to --payload bytes.
func (*streamScenario) handler(e *env) consumer.Handler {
	n, every, size := e.o.Chunks, e.o.ChunkInterval, max(e.o.Payload, 8)
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		var t *time.Timer
		if every > 0 {
			t = time.NewTimer(every)
			defer t.Stop()
		}
		buf := make([]byte, size)
		for range n {
			if t != nil {
				select {
				case <-t.C:
					t.Reset(every)
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			binary.LittleEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
			if err := m.Send(ctx, buf); err != nil {
				return nil, err
			}
		}
		return nil, nil
	})
}

func (*streamScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	if e.p == nil {
		return nil, fmt.Errorf("%w: --scenario stream runs on mycelium only", ErrUsage)
	}
	e.markMeasured() // no warm-up: a stream takes seconds
	r := newResult(e)
	var mu sync.Mutex
	var first, full, gaps, over []int64
	lats := make([][]Point, e.o.Concurrency)
	var tl tally
	start := time.Now()
	cnt := newCounter(e.o, start)
	var wg sync.WaitGroup
	for g := range e.o.Concurrency {
		wg.Go(func() {
			var f, fu, gp, ov []int64
			defer func() {
				mu.Lock()
				first, full, gaps, over = append(first, f...), append(full, fu...), append(gaps, gp...), append(over, ov...)
				mu.Unlock()
			}()
			for ctx.Err() == nil {
				seq, ok := cnt.take()
				if !ok {
					return
				}
				t0 := time.Now()
				err := func() error {
					rctx, cancel := context.WithTimeout(ctx, e.o.Timeout)
					defer cancel()
					s, err := e.p.Stream(rctx, e.o.Topic, make([]byte, 16))
					if err != nil {
						return err
					}
					defer s.Close()
					got := 0
					last := t0
					for chunk, err := range s.All() {
						if err != nil {
							return err
						}
						now := time.Now()
						if len(chunk) < 8 {
							return fmt.Errorf("chunk of %d bytes", len(chunk))
						}
						ov = append(ov, now.UnixNano()-int64(binary.LittleEndian.Uint64(chunk)))
						if got == 0 {
							f = append(f, int64(now.Sub(t0)))
						} else {
							gp = append(gp, int64(now.Sub(last)))
						}
						last = now
						got++
					}
					if got != e.o.Chunks {
						return fmt.Errorf("stream of %d chunks, want %d", got, e.o.Chunks)
					}
					return nil
				}()
				if err != nil {
					tl.failed(err)
					continue
				}
				tl.ok.Add(1)
				d := time.Since(t0)
				fu = append(fu, int64(d))
				lats[g] = append(lats[g], Point{At: t0.Sub(start).Seconds(), Lat: int64(d), Seq: seq})
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	out, err := finish(e, r, tl.ok.Load(), tl.errs.Load(), tl.firstErr(), lats)
	if err != nil {
		return nil, err
	}
	sr := &StreamResult{Chunks: e.o.Chunks, IntervalMS: float64(e.o.ChunkInterval) / 1e6, Streams: len(full)}
	sr.FirstChunkP50US, sr.FirstChunkP99US = pcts(first)
	sr.FullReplyP50US, sr.FullReplyP99US = pcts(full)
	sr.InterChunkP50US, sr.InterChunkP99US = pcts(gaps)
	sr.OverheadP50US, sr.OverheadP99US = pcts(over)
	out.Result.Stream = sr
	return out, nil
}

// pcts sorts v (nanoseconds) and returns its p50 and p99 in µs.
func pcts(v []int64) (p50, p99 float64) {
	if len(v) == 0 {
		return 0, 0
	}
	slices.Sort(v)
	return float64(pct(v, 0.5)) / 1e3, float64(pct(v, 0.99)) / 1e3
}

// ---- cancel: from the caller's cancel to the handler's ctx.Done -----------

// CancelResult is what a cancel-scenario run measured: the time from a
// caller cancelling its request's ctx to its handler's ctx ending, on the
// worker running it (one process: one clock).
type CancelResult struct {
	Cancels  int     `json:"cancels"`
	Missed   int     `json:"missed"` // handlers not cancelled within --timeout
	P50US    float64 `json:"cancel_p50_us"`
	P99US    float64 `json:"cancel_p99_us"`
	MaxUS    float64 `json:"cancel_max_us"`
	PickupUS float64 `json:"pickup_p50_us"` // request written to handler started, for scale
}

type cancelScenario struct {
	mu      sync.Mutex
	started map[uint64]chan time.Time // by request seq: the handler started
	ended   map[uint64]chan time.Time // by request seq: its ctx ended
}

// handler waits for its ctx to end and says when it started and ended.
func (s *cancelScenario) handler(*env) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		seq, ok := seqOf(m.Payload)
		if !ok {
			return nil, errors.New("not a bench payload")
		}
		st, en := s.chans(seq)
		st <- time.Now()
		<-ctx.Done()
		en <- time.Now()
		return nil, ctx.Err()
	})
}

func (s *cancelScenario) chans(seq uint64) (chan time.Time, chan time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started == nil {
		s.started, s.ended = map[uint64]chan time.Time{}, map[uint64]chan time.Time{}
	}
	if s.started[seq] == nil {
		s.started[seq], s.ended[seq] = make(chan time.Time, 1), make(chan time.Time, 1)
	}
	return s.started[seq], s.ended[seq]
}

func (s *cancelScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	if e.p == nil {
		return nil, fmt.Errorf("%w: --scenario cancel runs on mycelium only", ErrUsage)
	}
	e.markMeasured() // no warm-up: every request waits for its cancel
	pl := newPayloads(max(e.o.Payload, 16), e.o.PayloadKind)
	r := newResult(e)
	lats := make([][]Point, e.o.Concurrency)
	var tl tally
	var mu sync.Mutex
	var pickups []int64
	missed := 0
	start := time.Now()
	cnt := newCounter(e.o, start)
	var wg sync.WaitGroup
	for g := range e.o.Concurrency {
		wg.Go(func() {
			buf := make([]byte, 0, e.o.Payload)
			for ctx.Err() == nil {
				seq, ok := cnt.take()
				if !ok {
					return
				}
				buf = pl.fill(buf, seq)
				st, en := s.chans(seq)
				rctx, cancel := context.WithTimeout(ctx, e.o.Timeout)
				done := make(chan error, 1)
				t0 := time.Now()
				go func() {
					_, err := e.p.Request(rctx, e.o.Topic, buf)
					done <- err
				}()
				var began time.Time
				select {
				case began = <-st:
				case err := <-done:
					cancel()
					tl.failed(fmt.Errorf("request %d ended before its handler started: %w", seq, err))
					continue
				}
				at := time.Now()
				cancel()
				if err := <-done; err == nil {
					tl.failed(fmt.Errorf("request %d answered although its handler was cancelled", seq))
					continue
				}
				select {
				case ended := <-en:
					tl.ok.Add(1)
					lats[g] = append(lats[g], Point{At: at.Sub(start).Seconds(), Lat: int64(ended.Sub(at)), Seq: seq})
					mu.Lock()
					pickups = append(pickups, int64(began.Sub(t0)))
					mu.Unlock()
				case <-time.After(e.o.Timeout):
					mu.Lock()
					missed++
					mu.Unlock()
					tl.failed(fmt.Errorf("handler of request %d not cancelled within %v", seq, e.o.Timeout))
				}
				s.mu.Lock()
				delete(s.started, seq)
				delete(s.ended, seq)
				s.mu.Unlock()
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	out, err := finish(e, r, tl.ok.Load(), tl.errs.Load(), tl.firstErr(), lats)
	if err != nil {
		return nil, err
	}
	cr := &CancelResult{Cancels: len(out.Lat), Missed: missed}
	if len(out.Lat) > 0 {
		cr.P50US, cr.P99US = float64(pct(out.Lat, 0.5))/1e3, float64(pct(out.Lat, 0.99))/1e3
		cr.MaxUS = float64(out.Lat[len(out.Lat)-1]) / 1e3
	}
	cr.PickupUS, _ = pcts(pickups)
	out.Result.Cancel = cr
	return out, nil
}
