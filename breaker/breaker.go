package breaker

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// ErrOpen is returned by Allow (and Do) while the breaker is open, or
// half-open with every probe slot taken. Check it with errors.Is.
var ErrOpen = errors.New("breaker: open")

// ErrInvalidConfig is wrapped by Config validation errors.
var ErrInvalidConfig = errors.New("breaker: invalid configuration")

// Defaults for Config fields left at their zero value.
const (
	DefaultWindow         = 10 * time.Second
	DefaultBuckets        = 10
	DefaultMinCalls       = 20
	DefaultFailureRatio   = 0.5
	DefaultSlowRatio      = 0.8
	DefaultOpenTimeout    = 5 * time.Second
	DefaultHalfOpenProbes = 5
)

// Config sets when a breaker trips and how it recovers. The zero value is
// usable: every zero field means its documented default.
type Config struct {
	// Window is the rolling window over which outcomes are counted. Zero
	// means DefaultWindow.
	Window time.Duration
	// Buckets is the number of time slices of the window. Zero means
	// DefaultBuckets.
	Buckets int
	// MinCalls is the fewest calls in the window before the breaker may
	// trip. Zero means DefaultMinCalls.
	MinCalls int
	// FailureRatio trips the breaker when failures/calls in the window
	// reaches it. Zero means DefaultFailureRatio.
	FailureRatio float64
	// SlowCall is the duration from which a call counts as slow. Zero
	// disables slow-call tripping.
	SlowCall time.Duration
	// SlowRatio trips the breaker when slow calls/calls reaches it. Zero
	// means DefaultSlowRatio.
	SlowRatio float64
	// OpenTimeout is how long the breaker stays open before probing. Zero
	// means DefaultOpenTimeout.
	OpenTimeout time.Duration
	// MaxOpenTimeout, when above OpenTimeout, doubles the open time after
	// every failed half-open round, up to this cap. Zero means no growth.
	MaxOpenTimeout time.Duration
	// Jitter randomises each open time by up to this fraction (0 to 1), so
	// many breakers do not probe in lock step. Zero means none.
	Jitter float64
	// HalfOpenProbes is how many calls half-open admits; all of them must
	// succeed to close the breaker. Zero means DefaultHalfOpenProbes.
	HalfOpenProbes int
}

// Validate reports the first problem with c, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	switch {
	case c.Window < 0, c.SlowCall < 0, c.OpenTimeout < 0, c.MaxOpenTimeout < 0:
		return fmt.Errorf("%w: durations must not be negative", ErrInvalidConfig)
	case c.Buckets < 0 || c.MinCalls < 0 || c.HalfOpenProbes < 0:
		return fmt.Errorf("%w: Buckets, MinCalls and HalfOpenProbes must not be negative", ErrInvalidConfig)
	case c.HalfOpenProbes > MaxProbes:
		return fmt.Errorf("%w: HalfOpenProbes must be at most %d", ErrInvalidConfig, MaxProbes)
	case c.FailureRatio < 0 || c.FailureRatio > 1 || c.SlowRatio < 0 || c.SlowRatio > 1:
		return fmt.Errorf("%w: ratios must be within [0, 1]", ErrInvalidConfig)
	case c.Jitter < 0 || c.Jitter > 1:
		return fmt.Errorf("%w: Jitter must be within [0, 1]", ErrInvalidConfig)
	}
	d := c.withDefaults()
	if d.Window/time.Duration(d.Buckets) < time.Millisecond {
		return fmt.Errorf("%w: Window/Buckets must be at least 1ms", ErrInvalidConfig)
	}
	if d.OpenTimeout < time.Millisecond {
		return fmt.Errorf("%w: OpenTimeout must be at least 1ms", ErrInvalidConfig)
	}
	return nil
}

func (c Config) withDefaults() Config {
	c.Window = cmp.Or(c.Window, DefaultWindow)
	c.Buckets = cmp.Or(c.Buckets, DefaultBuckets)
	c.MinCalls = cmp.Or(c.MinCalls, DefaultMinCalls)
	c.FailureRatio = cmp.Or(c.FailureRatio, DefaultFailureRatio)
	c.SlowRatio = cmp.Or(c.SlowRatio, DefaultSlowRatio)
	c.OpenTimeout = cmp.Or(c.OpenTimeout, DefaultOpenTimeout)
	c.HalfOpenProbes = cmp.Or(c.HalfOpenProbes, DefaultHalfOpenProbes)
	return c
}

// Option configures optional collaborators.
type Option func(*Breaker)

// WithClock makes the breaker read time from c (tests); then every call
// reads c instead of the shared coarse clock.
func WithClock(c Clock) Option { return func(b *Breaker) { b.clock = c } }

// WithStateChange registers fn, called by the goroutine that made each
// transition, after it happened. Keep it fast: it runs on a caller's path.
func WithStateChange(fn func(from, to State)) Option {
	return func(b *Breaker) { b.onChange = fn }
}

// Breaker is a circuit breaker. It is safe for concurrent use; Allow and
// Done never block.
type Breaker struct {
	w     atomic.Uint64 // word
	_     [56]byte
	until atomic.Uint64 // open deadline: unix ms<<20 | generation&(1<<20-1)
	_     [56]byte

	cfg      Config
	clock    Clock // nil: system clock via the coarse clock
	onChange func(from, to State)
	win      *window
	reopens  atomic.Int64 // consecutive failed half-open rounds
	closing  sync.Once
}

// Token is what Allow hands out and Done takes back: it ties an outcome to
// the generation it was admitted in.
type Token struct{ w word }

// New returns a closed breaker. Unless WithClock is given it shares the
// process's coarse clock (one goroutine for all breakers, stopped when the
// last breaker is Closed); call Close when done with it.
func New(cfg Config, opts ...Option) (*Breaker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Breaker{cfg: cfg.withDefaults()}
	for _, o := range opts {
		o(b)
	}
	if b.clock == nil {
		coarseAcquire()
	}
	b.win = newWindow(int64(b.cfg.Window)/int64(b.cfg.Buckets), b.cfg.Buckets, b.now())
	b.w.Store(uint64(pack(1, Closed, 0, 0)))
	return b, nil
}

// Close releases the breaker's share of the coarse clock. The breaker must
// not be used afterwards. Calling Close again does nothing.
func (b *Breaker) Close() {
	b.closing.Do(func() {
		if b.clock == nil {
			coarseRelease()
		}
	})
}

func (b *Breaker) now() int64 {
	if b.clock != nil {
		return b.clock.Now().UnixNano()
	}
	return coarseNow()
}

// State returns the current state. An open breaker whose open time has
// passed reports Open until the next Allow moves it to half-open.
func (b *Breaker) State() State { return word(b.w.Load()).state() }

// Allow asks to make one call. It returns ErrOpen while the breaker is
// open, or half-open with all probes admitted; otherwise a token to hand to
// Done with the call's outcome. Allow never blocks.
func (b *Breaker) Allow() (Token, error) {
	for {
		w := word(b.w.Load())
		switch w.state() {
		case Closed:
			return Token{w}, nil
		case Open:
			until, ok := b.openUntil(w)
			if !ok || b.now() < until {
				return Token{}, ErrOpen
			}
			n := w.next(HalfOpen, b.cfg.HalfOpenProbes)
			if b.w.CompareAndSwap(uint64(w), uint64(n)) {
				b.changed(Open, HalfOpen)
			}
		case HalfOpen:
			if w.permits() == 0 {
				return Token{}, ErrOpen
			}
			n := pack(w.gen(), HalfOpen, w.permits()-1, w.succ())
			if b.w.CompareAndSwap(uint64(w), uint64(n)) {
				return Token{w}, nil
			}
		}
	}
}

// Done reports the outcome of a call admitted by Allow, and how long it
// took (used for slow-call tripping; pass 0 if SlowCall is off). Outcomes
// from an older generation (the breaker changed state since Allow) are
// dropped. Done never blocks.
func (b *Breaker) Done(t Token, o Outcome, d time.Duration) {
	slow := b.cfg.SlowCall > 0 && d >= b.cfg.SlowCall
	switch t.w.state() {
	case Closed:
		if o == Ignored || word(b.w.Load()).gen() != t.w.gen() {
			return // ignored, or admitted before the breaker last changed state
		}
		now := b.now()
		s := b.win.stripeOf(b.win.current(now))
		if o == Success {
			b.win.inc(&s.succ)
			if !slow {
				return // the hot path: one uncontended compare-and-swap
			}
		} else {
			b.win.inc(&s.fail)
		}
		if slow {
			b.win.inc(&s.slow)
		}
		b.evaluate(t.w, now)
	case HalfOpen:
		b.probeDone(t.w, o == Failure || (o == Success && slow), o == Ignored)
	}
}

// evaluate trips the breaker if the window says so.
func (b *Breaker) evaluate(w word, now int64) {
	succ, fail, slow := b.win.sum(now)
	calls := succ + fail
	if calls < uint64(b.cfg.MinCalls) {
		return
	}
	if float64(fail) >= b.cfg.FailureRatio*float64(calls) ||
		(b.cfg.SlowCall > 0 && float64(slow) >= b.cfg.SlowRatio*float64(calls)) {
		b.open(w, b.cfg.OpenTimeout)
	}
}

// probeDone counts a half-open probe's outcome.
func (b *Breaker) probeDone(t word, failed, ignored bool) {
	for {
		w := word(b.w.Load())
		if w.state() != HalfOpen || w.gen() != t.gen() {
			return // stale: the breaker moved on
		}
		switch {
		case failed:
			// The CAS can lose to another probe's update of the same
			// generation; then look again rather than drop this failure.
			k := b.reopens.Load() + 1
			if b.open(w, b.grownTimeout(k)) {
				b.reopens.Store(k)
				return
			}
		case ignored: // give the permit back
			if b.w.CompareAndSwap(uint64(w), uint64(pack(w.gen(), HalfOpen, w.permits()+1, w.succ()))) {
				return
			}
		case w.succ()+1 >= b.cfg.HalfOpenProbes:
			if b.w.CompareAndSwap(uint64(w), uint64(w.next(Closed, 0))) {
				b.reopens.Store(0)
				b.win.reset()
				b.changed(HalfOpen, Closed)
				return
			}
		default:
			if b.w.CompareAndSwap(uint64(w), uint64(pack(w.gen(), HalfOpen, w.permits(), w.succ()+1))) {
				return
			}
		}
	}
}

// open moves the breaker from w to open for about d; only the winner of the
// transition publishes the deadline and fires the hook. It reports whether
// this call made the transition.
func (b *Breaker) open(w word, d time.Duration) bool {
	n := w.next(Open, 0)
	if !b.w.CompareAndSwap(uint64(w), uint64(n)) {
		return false
	}
	if j := b.cfg.Jitter; j > 0 {
		d += time.Duration((rand.Float64()*2 - 1) * j * float64(d))
	}
	until := (b.now() + int64(d)) / int64(time.Millisecond)
	b.until.Store(uint64(until)<<20 | n.gen()&(1<<20-1))
	b.changed(w.state(), Open)
	return true
}

// openUntil returns the open deadline of generation w, if published yet.
func (b *Breaker) openUntil(w word) (int64, bool) {
	u := b.until.Load()
	if u&(1<<20-1) != w.gen()&(1<<20-1) {
		return 0, false // the opener has not published it yet
	}
	return int64(u>>20) * int64(time.Millisecond), true
}

func (b *Breaker) grownTimeout(k int64) time.Duration {
	d := b.cfg.OpenTimeout
	if b.cfg.MaxOpenTimeout <= d {
		return d
	}
	for i := int64(0); i < k && d < b.cfg.MaxOpenTimeout; i++ {
		d *= 2
	}
	return min(d, b.cfg.MaxOpenTimeout)
}

func (b *Breaker) changed(from, to State) {
	if b.onChange != nil {
		b.onChange(from, to)
	}
}

// Trip opens the breaker now, for OpenTimeout (operators, tests).
func (b *Breaker) Trip() {
	for {
		w := word(b.w.Load())
		if w.state() == Open || b.open(w, b.cfg.OpenTimeout) {
			return
		}
	}
}

// Reset closes the breaker now and empties its window.
func (b *Breaker) Reset() {
	for {
		w := word(b.w.Load())
		if b.w.CompareAndSwap(uint64(w), uint64(w.next(Closed, 0))) {
			b.reopens.Store(0)
			b.win.reset()
			if w.state() != Closed {
				b.changed(w.state(), Closed)
			}
			return
		}
	}
}

// Counts is a snapshot of a breaker.
type Counts struct {
	State      State
	Generation uint64
	Successes  uint64 // in the window (closed state)
	Failures   uint64
	Slow       uint64
	OpenUntil  time.Time // zero unless open
	Reopens    int64     // consecutive failed half-open rounds
}

// Counts returns a snapshot. It sums the window: not for the hot path.
func (b *Breaker) Counts() Counts {
	w := word(b.w.Load())
	c := Counts{State: w.state(), Generation: w.gen(), Reopens: b.reopens.Load()}
	c.Successes, c.Failures, c.Slow = b.win.sum(b.now())
	if w.state() == Open {
		if u, ok := b.openUntil(w); ok {
			c.OpenUntil = time.Unix(0, u)
		}
	}
	return c
}
