package bench

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
)

// Payload layout: run id (8 bytes) | sequence (8 bytes) | a fixed random
// tail shared by the run. Replies and handled events are checked byte for
// byte against it.
type payloads struct {
	run  uint64
	tail []byte
}

func newPayloads(size int, kind string) *payloads {
	p := &payloads{tail: make([]byte, size-16)}
	var b [8]byte
	_, _ = rand.Read(b[:])
	if kind == "text" {
		textTail(p.tail)
	} else {
		_, _ = rand.Read(p.tail)
	}
	p.run = binary.LittleEndian.Uint64(b[:])
	return p
}

func (p *payloads) fill(buf []byte, seq uint64) []byte {
	buf = binary.LittleEndian.AppendUint64(buf[:0], p.run)
	buf = binary.LittleEndian.AppendUint64(buf, seq)
	return append(buf, p.tail...)
}

// check returns the payload's sequence number if it belongs to this run
// and is intact.
func (p *payloads) check(b []byte) (uint64, bool) {
	if len(b) != 16+len(p.tail) || binary.LittleEndian.Uint64(b) != p.run || !bytes.Equal(b[16:], p.tail) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[8:]), true
}

var echo = consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) { return m.Payload, nil })

// seqOf returns the sequence number a bench payload carries.
func seqOf(b []byte) (uint64, bool) {
	if len(b) < 16 {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b[8:]), true
}

func newResult(e *env) *Result {
	r := &Result{System: e.system, Scenario: e.o.Scenario, Concurrency: e.o.Concurrency, Payload: e.o.Payload, Case: e.o.Case}
	if e.o.PayloadKind == "text" {
		r.PayloadKind = "text"
	}
	if e.o.Compress != "" && e.o.Compress != "none" && e.system == "mycelium" {
		r.Compress = e.o.Compress
	}
	return r
}

// promptWords are what textTail writes prompts with.
var promptWords = []string{"summarise", "the", "quarterly", "report", "for", "customer", "accounts", "with", "risk", "notes",
	"explain", "why", "latency", "grew", "after", "the", "release", "and", "list", "three", "fixes", "in", "order", "of", "cost"}

// textTail fills b with JSON-like chat prompts (a text payload compresses
// as real prompts do: words from a small vocabulary, JSON punctuation).
func textTail(b []byte) {
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	x := binary.LittleEndian.Uint64(seed[:]) | 1
	next := func() uint64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
	out := make([]byte, 0, len(b)+64)
	out = append(out, `{"model":"m","messages":[`...)
	for len(out) < len(b) {
		out = append(out, `{"role":"user","content":"`...)
		for range 8 + next()%16 {
			out = append(out, promptWords[next()%uint64(len(promptWords))]...)
			out = append(out, ' ')
		}
		out = strconv.AppendUint(out, next()%10000, 10)
		out = append(out, `"},`...)
	}
	copy(b, out)
}

// warmup sends a few requests so connections, the reply stream and the
// group exist before measuring.
func warmup(ctx context.Context, e *env) error {
	n := min(2*e.o.Concurrency, 256)
	if e.o.Work != nil {
		n = min(e.o.Concurrency, 8) // one round of simulated work is enough
	}
	var wg sync.WaitGroup
	var firstErr firstError
	for range min(e.o.Concurrency, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range max(1, n/e.o.Concurrency) {
				_, err := e.call.request(ctx, make([]byte, e.o.Payload))
				if err != nil {
					firstErr.set(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := firstErr.get(); err != nil {
		return fmt.Errorf("warm-up request failed (is a worker serving topic %q?): %w", e.o.Topic, err)
	}
	e.handled.Clear()
	e.markMeasured()
	return nil
}

// counter hands out work until the count or the deadline is reached.
type counter struct {
	next     atomic.Int64
	limit    int64 // 0: no count limit
	deadline time.Time
}

func (c *counter) take() (uint64, bool) {
	i := c.next.Add(1) - 1
	if c.limit > 0 && i >= c.limit {
		return 0, false
	}
	if !c.deadline.IsZero() && time.Now().After(c.deadline) {
		return 0, false
	}
	return uint64(i), true
}

func newCounter(o *Options, start time.Time) *counter {
	c := &counter{limit: int64(o.Requests)}
	if o.Duration > 0 {
		c.deadline = start.Add(o.Duration)
	}
	return c
}

// ---- rpc: closed loop of Request calls -----------------------------------

type rpcScenario struct{}

func (*rpcScenario) handler(*env) consumer.Handler { return echo }

func (*rpcScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	if err := warmup(ctx, e); err != nil {
		return nil, err
	}
	pl := newPayloads(e.o.Payload, e.o.PayloadKind)
	r := newResult(e)
	lats := make([][]Point, e.o.Concurrency)
	tl := &e.tl
	start := time.Now()
	cnt := newCounter(e.o, start)
	var wg sync.WaitGroup
	for g := range e.o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, e.o.Payload)
			for ctx.Err() == nil {
				seq, ok := cnt.take()
				if !ok {
					return
				}
				buf = pl.fill(buf, seq)
				t0 := time.Now()
				if err := e.checkedRequest(ctx, buf, seq); err != nil {
					tl.failed(err)
					continue
				}
				tl.ok.Add(1)
				lats[g] = append(lats[g], Point{At: t0.Sub(start).Seconds(), Lat: int64(time.Since(t0)), Seq: seq})
			}
		}()
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	return finish(e, r, tl.ok.Load(), tl.errs.Load(), tl.firstErr(), lats)
}

// tally counts the outcomes of calls made from many goroutines.
type tally struct {
	ok, errs atomic.Int64
	first    firstError
}

func (t *tally) failed(err error) {
	t.errs.Add(1)
	t.first.set(err)
}

func (t *tally) firstErr() error { return t.first.get() }

// firstError keeps the first error set, from any goroutine. Not an
// atomic.Value: that panics when a later error has another concrete type
// ("compare and swap of inconsistently typed value"), which is exactly
// what happens when Redis restarts mid-run (a connection error, then a
// LOADING reply).
type firstError struct{ p atomic.Pointer[error] }

// set keeps err if no error was set before; nil is ignored.
func (f *firstError) set(err error) {
	if err != nil {
		f.p.CompareAndSwap(nil, &err)
	}
}

// get returns the first error, or nil.
func (f *firstError) get() error {
	if p := f.p.Load(); p != nil {
		return *p
	}
	return nil
}

// checkedRequest sends buf as request seq and checks the reply byte for byte.
func (e *env) checkedRequest(ctx context.Context, buf []byte, seq uint64) error {
	reply, err := e.call.request(ctx, buf) // the caller applies --timeout
	if err == nil && !bytes.Equal(reply, buf) {
		err = fmt.Errorf("reply %d does not match its request byte for byte", seq)
	}
	return err
}

// finish fills r from the per-goroutine samples and builds the outcome.
// Samples are indexed by the goroutine that took them; their order in
// time is restored by sorting the timeline.
func finish(e *env, r *Result, ok, errs int64, firstErr error, samples [][]Point) (*Outcome, error) {
	e.setCPU(r, ok)
	r.OK, r.Errors, r.Requests = int(ok), int(errs), int(ok+errs)
	if r.Seconds > 0 {
		r.ThroughputRPS = float64(ok) / r.Seconds
	}
	out := &Outcome{Result: r}
	for _, s := range samples {
		out.Timeline = append(out.Timeline, s...)
	}
	slices.SortFunc(out.Timeline, func(a, b Point) int { return cmp.Compare(a.At, b.At) })
	out.Lat = make([]int64, len(out.Timeline))
	for i, p := range out.Timeline {
		out.Lat[i] = p.Lat
	}
	e.overhead(r, out.Timeline)
	summarize(r, out.Lat)
	if firstErr != nil {
		fmt.Fprintf(e.log, "bus-bench: %d errors; first: %v\n", errs, firstErr)
	}
	return out, nil
}

// overhead reports, when the handler recorded its time (see env.wrap),
// the bus overhead per request: end to end minus that request's handler
// time.
func (e *env) overhead(r *Result, tl []Point) {
	if e.o.Work == nil {
		return
	}
	var ov []int64
	for i := range tl {
		if h, ok := e.handled.Load(tl[i].Seq); ok {
			tl[i].Handler = h.(int64)
			ov = append(ov, max(tl[i].Lat-tl[i].Handler, 0))
		}
	}
	if len(ov) == 0 {
		return
	}
	slices.Sort(ov)
	r.OverheadP50US, r.OverheadP99US = pct(ov, 0.5)/1000, pct(ov, 0.99)/1000
}

// ---- continuous: open loop at a fixed rate --------------------------------

type continuousScenario struct{}

func (*continuousScenario) handler(*env) consumer.Handler { return echo }

func (*continuousScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	if err := warmup(ctx, e); err != nil {
		return nil, err
	}
	pl := newPayloads(e.o.Payload, e.o.PayloadKind)
	r := newResult(e)
	interval := time.Duration(float64(time.Second) / e.o.Rate)
	slots := make(chan struct{}, e.o.Concurrency)
	var mu sync.Mutex
	var lat []Point
	tl := &e.tl
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; ctx.Err() == nil; i++ {
		if e.o.Requests > 0 && i >= e.o.Requests {
			break
		}
		at := start.Add(time.Duration(i) * interval)
		if e.o.Duration > 0 && at.Sub(start) >= e.o.Duration {
			break
		}
		if wait := time.Until(at); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		select {
		case slots <- struct{}{}: // latency counts from the scheduled time, so waiting here is measured
		case <-ctx.Done():
			continue
		}
		wg.Add(1)
		go func(seq uint64, at time.Time) {
			defer wg.Done()
			defer func() { <-slots }()
			buf := pl.fill(make([]byte, 0, e.o.Payload), seq)
			err := e.checkedRequest(ctx, buf, seq)
			d := time.Since(at)
			if err != nil {
				tl.failed(err)
				return
			}
			tl.ok.Add(1)
			mu.Lock()
			lat = append(lat, Point{At: at.Sub(start).Seconds(), Lat: int64(d), Seq: seq})
			mu.Unlock()
		}(uint64(i), at)
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	return finish(e, r, tl.ok.Load(), tl.errs.Load(), tl.firstErr(), [][]Point{lat})
}

// ---- publish: events, latency from publish start to handler completion ----

type publishScenario struct {
	pl      *payloads
	started []atomic.Int64 // unix nanos at publish start, by sequence
	seen    []atomic.Bool
	mu      sync.Mutex
	lat     []Point
	handled atomic.Int64
	dups    atomic.Int64
	bad     atomic.Int64
	refused atomic.Int64 // publishes refused by backpressure
	last    atomic.Int64 // unix nanos of the last handled event
	t0      atomic.Int64 // unix nanos of the measured start
}

func (s *publishScenario) handler(e *env) consumer.Handler {
	s.pl = newPayloads(e.o.Payload, e.o.PayloadKind)
	n := e.o.Requests
	if n == 0 {
		n = 1 << 22 // duration mode: room for up to 4M events
	}
	s.started = make([]atomic.Int64, n)
	s.seen = make([]atomic.Bool, n)
	return consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		seq, ok := s.pl.check(m.Payload)
		if !ok || seq >= uint64(len(s.seen)) {
			s.bad.Add(1)
			return nil, nil
		}
		if s.seen[seq].Swap(true) {
			s.dups.Add(1)
			return nil, nil
		}
		now := time.Now().UnixNano()
		d := now - s.started[seq].Load()
		s.mu.Lock()
		s.lat = append(s.lat, Point{At: float64(s.started[seq].Load()-s.t0.Load()) / 1e9, Lat: d, Seq: seq})
		s.mu.Unlock()
		s.last.Store(now)
		s.handled.Add(1)
		return nil, nil
	})
}

func (s *publishScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	if s.pl == nil { // --no-workers: external workers consume
		s.pl = newPayloads(e.o.Payload, e.o.PayloadKind)
	}
	e.markMeasured()
	r := newResult(e)
	tl := &e.tl // ok counts publishes Redis accepted
	var pubLat = make([][]Point, e.o.Concurrency)
	start := time.Now()
	s.t0.Store(start.UnixNano())
	cnt := newCounter(e.o, start)
	if e.o.Requests == 0 {
		cnt.limit = int64(len(s.started))
	}
	var wg sync.WaitGroup
	for g := range e.o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, e.o.Payload)
			for ctx.Err() == nil {
				seq, ok := cnt.take()
				if !ok {
					return
				}
				buf = s.pl.fill(buf, seq)
				t0 := time.Now()
				if s.started != nil {
					s.started[seq].Store(t0.UnixNano())
				}
				pctx, cancel := context.WithTimeout(ctx, e.o.Timeout)
				err := e.publish(pctx, buf)
				cancel()
				if err != nil {
					if errors.Is(err, bus.ErrBacklogFull) {
						s.refused.Add(1)
					}
					tl.failed(err)
					continue
				}
				tl.ok.Add(1)
				pubLat[g] = append(pubLat[g], Point{At: t0.Sub(start).Seconds(), Lat: int64(time.Since(t0)), Seq: seq})
			}
		}()
	}
	wg.Wait()
	n := tl.ok.Load()
	if e.o.NoWorkers {
		// External workers: wait until the group has read and acknowledged
		// everything; latency is the publish acknowledgement.
		if err := waitDrained(ctx, e, time.Now().Add(e.o.Timeout)); err != nil {
			return nil, err
		}
		r.Seconds = time.Since(start).Seconds()
		return finish(e, r, n, tl.errs.Load(), tl.firstErr(), pubLat)
	}
	deadline := time.Now().Add(e.o.Timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for s.handled.Load() < n && time.Now().Before(deadline) && ctx.Err() == nil {
		<-tick.C
	}
	handled := s.handled.Load()
	if l := s.last.Load(); l > 0 {
		r.Seconds = time.Unix(0, l).Sub(start).Seconds()
	}
	lost := n - handled
	errs := tl.errs.Load() + lost + s.dups.Load() + s.bad.Load()
	if lost > 0 {
		tl.first.set(fmt.Errorf("%d published events were not handled within %v", lost, e.o.Timeout))
	}
	if s.dups.Load() > 0 || s.bad.Load() > 0 {
		tl.first.set(fmt.Errorf("%d duplicate and %d corrupt deliveries", s.dups.Load(), s.bad.Load()))
	}
	s.mu.Lock()
	lat := s.lat
	s.mu.Unlock()
	refused := s.refused.Load()
	r.Backpressure, r.Handled, r.Lost, r.Refused = e.o.Backpressure, &handled, &lost, &refused
	return finish(e, r, handled, errs, tl.firstErr(), [][]Point{lat})
}

// waitDrained polls the group until it has no lag and nothing pending.
func waitDrained(ctx context.Context, e *env, deadline time.Time) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if t, err := e.insp.Topic(ctx, e.o.Topic); err == nil {
			for _, g := range t.Groups {
				if g.Name == e.o.Group && g.Pending == 0 && g.Lag == 0 {
					return nil
				}
			}
		}
		<-tick.C
	}
	return errors.New("external workers did not drain the topic within --timeout (is a bus-worker serving it?)")
}
