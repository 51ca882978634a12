package breaker

import (
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// model is the reference: the same rules written as plainly as possible,
// under one mutex, with a map for the window.
type model struct {
	mu      sync.Mutex
	cfg     Config
	width   int64
	state   State
	gen     uint64
	buckets map[int64]*[3]uint64 // time index -> succ, fail, slow
	until   int64
	permits int
	succ    int
	reopens int64
}

type mtoken struct {
	gen   uint64
	state State
}

func newModel(cfg Config) *model {
	cfg = cfg.withDefaults()
	return &model{cfg: cfg, width: int64(cfg.Window) / int64(cfg.Buckets), gen: 1, buckets: map[int64]*[3]uint64{}}
}

func (m *model) open(now int64, d time.Duration) {
	m.state, m.gen = Open, m.gen+1
	m.until = (now + int64(d)) / int64(time.Millisecond) * int64(time.Millisecond)
}

func (m *model) allow(now int64) (mtoken, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == Open {
		if now < m.until {
			return mtoken{}, false
		}
		m.state, m.gen, m.permits, m.succ = HalfOpen, m.gen+1, m.cfg.HalfOpenProbes, 0
	}
	if m.state == HalfOpen {
		if m.permits == 0 {
			return mtoken{}, false
		}
		m.permits--
	}
	return mtoken{m.gen, m.state}, true
}

func (m *model) sum(now int64) (s, f, sl uint64) {
	idx := now / m.width
	for i, b := range m.buckets {
		if i > idx-int64(m.cfg.Buckets) && i <= idx {
			s, f, sl = s+b[0], f+b[1], sl+b[2]
		}
	}
	return
}

func (m *model) done(t mtoken, o Outcome, d time.Duration, now int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	slow := m.cfg.SlowCall > 0 && d >= m.cfg.SlowCall
	if t.gen != m.gen {
		return
	}
	switch t.state {
	case Closed:
		if o == Ignored {
			return
		}
		idx := now / m.width
		b := m.buckets[idx]
		if b == nil {
			b = &[3]uint64{}
			m.buckets[idx] = b
		}
		if o == Success {
			b[0]++
		} else {
			b[1]++
		}
		if slow {
			b[2]++
		}
		if o == Success && !slow {
			return
		}
		s, f, sl := m.sum(now)
		calls := s + f
		if calls >= uint64(m.cfg.MinCalls) && (float64(f) >= m.cfg.FailureRatio*float64(calls) || (m.cfg.SlowCall > 0 && float64(sl) >= m.cfg.SlowRatio*float64(calls))) {
			m.open(now, m.cfg.OpenTimeout)
		}
	case HalfOpen:
		switch {
		case o == Failure || (o == Success && slow):
			m.reopens++
			d := m.cfg.OpenTimeout
			for i := int64(0); i < m.reopens && m.cfg.MaxOpenTimeout > d; i++ {
				d *= 2
			}
			if m.cfg.MaxOpenTimeout > m.cfg.OpenTimeout {
				d = min(d, m.cfg.MaxOpenTimeout)
			}
			m.open(now, d)
		case o == Ignored:
			m.permits++
		case m.succ+1 >= m.cfg.HalfOpenProbes:
			m.state, m.gen, m.reopens = Closed, m.gen+1, 0
			m.buckets = map[int64]*[3]uint64{}
		default:
			m.succ++
		}
	}
}

func TestAgainstModel(t *testing.T) {
	configs := []Config{
		{Window: 10 * time.Second, Buckets: 10, MinCalls: 5, FailureRatio: 0.5, OpenTimeout: 2 * time.Second, HalfOpenProbes: 3},
		{Window: time.Second, Buckets: 4, MinCalls: 3, FailureRatio: 0.3, SlowCall: 100 * time.Millisecond, SlowRatio: 0.5,
			OpenTimeout: 500 * time.Millisecond, MaxOpenTimeout: 4 * time.Second, HalfOpenProbes: 2},
		{Window: 3 * time.Second, Buckets: 3, MinCalls: 1, FailureRatio: 1, OpenTimeout: time.Second, HalfOpenProbes: 1},
	}
	for ci, cfg := range configs {
		for seed := uint64(1); seed <= 40; seed++ {
			rng := rand.New(rand.NewPCG(seed, uint64(ci)))
			clk := newFakeClock()
			b := newTest(t, cfg, clk)
			m := newModel(cfg)
			type held struct {
				real Token
				mod  mtoken
			}
			var pending []held
			for step := range 400 {
				now := clk.Now().UnixNano()
				switch r := rng.IntN(100); {
				case r < 8:
					clk.Advance(time.Duration(rng.Int64N(int64(3 * time.Second))))
					continue
				case r < 15 && len(pending) > 0: // finish a held call later
					i := rng.IntN(len(pending))
					h := pending[i]
					pending = append(pending[:i], pending[i+1:]...)
					o, d := Outcome(rng.IntN(3)), time.Duration(rng.Int64N(int64(200*time.Millisecond)))
					b.Done(h.real, o, d)
					m.done(h.mod, o, d, now)
				default:
					tok, err := b.Allow()
					mt, ok := m.allow(now)
					if (err == nil) != ok || (err != nil && !errors.Is(err, ErrOpen)) {
						t.Fatalf("cfg %d seed %d step %d: Allow = %v, model allowed=%v", ci, seed, step, err, ok)
					}
					if !ok {
						break
					}
					if rng.IntN(5) == 0 {
						pending = append(pending, held{tok, mt})
						break
					}
					o := Outcome(rng.IntN(100) / 45) // ~45% success, 45% failure, 10% ignored
					d := time.Duration(rng.Int64N(int64(200 * time.Millisecond)))
					b.Done(tok, o, d)
					m.done(mt, o, d, now)
				}
				c := b.Counts()
				ms, mf, msl := m.sum(now)
				if c.State != m.state || c.Generation != m.gen || c.Successes != ms || c.Failures != mf || c.Slow != msl {
					t.Fatalf("cfg %d seed %d step %d: breaker %+v, model state %v gen %d window %d/%d/%d",
						ci, seed, step, c, m.state, m.gen, ms, mf, msl)
				}
			}
		}
	}
}

func TestConcurrentNoLostTransitionsNoExtraProbes(t *testing.T) {
	const probes = 3
	clk := newFakeClock()
	var transitions atomic.Int64
	b := newTest(t, Config{Window: time.Second, Buckets: 4, MinCalls: 10, FailureRatio: 0.3, OpenTimeout: 10 * time.Millisecond, HalfOpenProbes: probes},
		clk, WithStateChange(func(_, _ State) { transitions.Add(1) }))
	var mu sync.Mutex
	admitted := map[uint64]int{} // half-open generation -> probes admitted
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := b.Allow()
				if err != nil {
					runtime.Gosched() // open: let the clock move
					continue
				}
				if tok.w.state() == HalfOpen {
					mu.Lock()
					admitted[tok.w.gen()]++
					mu.Unlock()
				}
				o := Success
				if rng.IntN(100) < 35 {
					o = Failure
				}
				b.Done(tok, o, 0)
			}
		}()
	}
	// Drive time until the breaker has cycled enough (bounded by a deadline).
	deadline := time.Now().Add(20 * time.Second)
	for transitions.Load() < 60 && time.Now().Before(deadline) {
		clk.Advance(time.Millisecond)
		runtime.Gosched()
	}
	close(stop)
	wg.Wait()
	if got, want := transitions.Load(), int64(b.Counts().Generation-1); got != want {
		t.Fatalf("hook saw %d transitions, generation advanced %d times", got, want)
	}
	if transitions.Load() < 60 {
		t.Fatalf("only %d transitions: the test did not exercise the state machine", transitions.Load())
	}
	for gen, n := range admitted {
		if n > probes {
			t.Fatalf("half-open generation %d admitted %d probes, max %d", gen, n, probes)
		}
	}
}

func TestConcurrentSystemClock(t *testing.T) {
	b, err := New(Config{Window: 100 * time.Millisecond, Buckets: 5, MinCalls: 5, OpenTimeout: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20000 {
				if tok, err := b.Allow(); err == nil {
					o := Success
					if (i+g)%3 == 0 {
						o = Failure
					}
					b.Done(tok, o, 0)
				}
			}
		}()
	}
	wg.Wait()
	_ = b.Counts()
}
