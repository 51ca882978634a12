package breaker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a manual clock safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Unix(1_800_000_000, 0).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTest(t *testing.T, cfg Config, clk *fakeClock, opts ...Option) *Breaker {
	t.Helper()
	b, err := New(cfg, append([]Option{WithClock(clk)}, opts...)...)
	if err != nil {
		t.Fatalf("New(%+v) = %v", cfg, err)
	}
	t.Cleanup(b.Close)
	return b
}

// call runs one call with the given outcome and duration; it reports
// whether the breaker admitted it.
func call(b *Breaker, o Outcome, d time.Duration) bool {
	tok, err := b.Allow()
	if err != nil {
		return false
	}
	b.Done(tok, o, d)
	return true
}

func TestStateStrings(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", Open: "open", HalfOpen: "half-open", 7: "state(7)"} {
		if s.String() != want {
			t.Errorf("State(%d) = %q, want %q", s, s.String(), want)
		}
	}
	for o, want := range map[Outcome]string{Success: "success", Failure: "failure", Ignored: "ignored", 9: "outcome(9)"} {
		if o.String() != want {
			t.Errorf("Outcome(%d) = %q, want %q", o, o.String(), want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []Config{
		{Window: -1}, {Buckets: -1}, {FailureRatio: 1.5}, {SlowRatio: -0.1}, {Jitter: 2},
		{HalfOpenProbes: MaxProbes + 1}, {Window: time.Millisecond, Buckets: 10}, {OpenTimeout: time.Microsecond},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

func TestTransitions(t *testing.T) {
	cfg := Config{Window: 10 * time.Second, Buckets: 10, MinCalls: 10, FailureRatio: 0.5, OpenTimeout: time.Second, HalfOpenProbes: 3}
	type step struct {
		name    string
		do      func(b *Breaker, c *fakeClock)
		want    State
		allowed bool // does a fresh Allow succeed afterwards (checked without consuming in Closed)
	}
	fail := func(n int) func(*Breaker, *fakeClock) {
		return func(b *Breaker, _ *fakeClock) {
			for range n {
				call(b, Failure, 0)
			}
		}
	}
	succeed := func(n int) func(*Breaker, *fakeClock) {
		return func(b *Breaker, _ *fakeClock) {
			for range n {
				call(b, Success, 0)
			}
		}
	}
	wait := func(d time.Duration) func(*Breaker, *fakeClock) {
		return func(_ *Breaker, c *fakeClock) { c.Advance(d) }
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"below MinCalls never trips", []step{{"9 failures", fail(9), Closed, true}}},
		{"failure ratio trips", []step{
			{"5 ok", succeed(5), Closed, true},
			{"5 failures (50% of 10)", fail(5), Open, false},
		}},
		{"ratio below threshold stays closed", []step{
			{"6 ok", succeed(6), Closed, true},
			{"4 failures (40%)", fail(4), Closed, true},
		}},
		{"failures age out of the window", []step{
			{"5 failures", fail(5), Closed, true},
			{"11s later", wait(11 * time.Second), Closed, true},
			{"5 ok + 4 failures (old ones gone)", func(b *Breaker, c *fakeClock) { succeed(5)(b, c); fail(4)(b, c) }, Closed, true},
		}},
		{"open then half-open then closed", []step{
			{"trip", fail(10), Open, false},
			{"before timeout", wait(999 * time.Millisecond), Open, false},
			{"after timeout", wait(time.Millisecond), HalfOpen, true},
			{"3 probes succeed", succeed(3), Closed, true},
		}},
		{"half-open failure reopens", []step{
			{"trip", fail(10), Open, false},
			{"timeout", wait(time.Second), HalfOpen, true},
			{"probe fails", fail(1), Open, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			b := newTest(t, cfg, clk)
			for _, s := range tt.steps {
				s.do(b, clk)
				tok, err := b.Allow()
				if (err == nil) != s.allowed {
					t.Fatalf("after %q: Allow() = %v, want allowed=%v", s.name, err, s.allowed)
				}
				if err == nil {
					b.Done(tok, Ignored, 0) // give a probe permit back
				}
				if got := b.State(); got != s.want {
					t.Fatalf("after %q: state %v, want %v", s.name, got, s.want)
				}
			}
		})
	}
}

func TestHalfOpenAdmitsBoundedProbes(t *testing.T) {
	clk := newFakeClock()
	b := newTest(t, Config{MinCalls: 1, OpenTimeout: time.Second, HalfOpenProbes: 2}, clk)
	call(b, Failure, 0)
	clk.Advance(time.Second)
	t1, err1 := b.Allow()
	t2, err2 := b.Allow()
	_, err3 := b.Allow()
	if err1 != nil || err2 != nil || !errors.Is(err3, ErrOpen) {
		t.Fatalf("half-open Allow x3 = %v, %v, %v; want two probes then ErrOpen", err1, err2, err3)
	}
	b.Done(t1, Ignored, 0) // an ignored probe returns its permit
	t3, err := b.Allow()
	if err != nil {
		t.Fatalf("Allow after an ignored probe = %v", err)
	}
	b.Done(t2, Success, 0)
	if b.State() != HalfOpen {
		t.Fatalf("one success of two closed the breaker")
	}
	b.Done(t3, Success, 0)
	if b.State() != Closed {
		t.Fatalf("state after two successful probes = %v, want closed", b.State())
	}
}

func TestSlowCallsTrip(t *testing.T) {
	clk := newFakeClock()
	b := newTest(t, Config{MinCalls: 10, SlowCall: 100 * time.Millisecond, SlowRatio: 0.5}, clk)
	for range 5 {
		call(b, Success, 10*time.Millisecond)
	}
	for range 4 {
		call(b, Success, time.Second)
	}
	if b.State() != Closed {
		t.Fatal("tripped below the slow ratio")
	}
	call(b, Success, time.Second)
	if b.State() != Open {
		t.Fatalf("5 slow of 10 calls: state %v, want open", b.State())
	}
	// A slow probe counts as a failed probe.
	clk.Advance(DefaultOpenTimeout)
	call(b, Success, time.Second)
	if b.State() != Open {
		t.Fatalf("slow probe: state %v, want open", b.State())
	}
}

func TestOpenTimeoutGrowsAndJitters(t *testing.T) {
	clk := newFakeClock()
	b := newTest(t, Config{MinCalls: 1, OpenTimeout: time.Second, MaxOpenTimeout: 5 * time.Second, HalfOpenProbes: 1}, clk)
	call(b, Failure, 0)
	for _, want := range []time.Duration{2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		until := b.Counts().OpenUntil
		clk.Advance(until.Sub(clk.Now()))
		call(b, Failure, 0) // probe fails
		if got := b.Counts().OpenUntil.Sub(clk.Now()); got != want {
			t.Fatalf("open time after a failed probe = %v, want %v", got, want)
		}
	}
	// Closing resets the growth.
	clk.Advance(5 * time.Second)
	call(b, Success, 0)
	if b.State() != Closed || b.Counts().Reopens != 0 {
		t.Fatalf("after a good probe: %+v", b.Counts())
	}

	jb := newTest(t, Config{MinCalls: 1, OpenTimeout: 10 * time.Second, Jitter: 0.2}, clk)
	seen := map[time.Duration]bool{}
	for range 20 {
		jb.Reset()
		call(jb, Failure, 0)
		d := jb.Counts().OpenUntil.Sub(clk.Now())
		if d < 8*time.Second || d > 12*time.Second {
			t.Fatalf("jittered open time %v outside 10s ± 20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Fatal("jitter produced a single value in 20 trips")
	}
}

func TestStaleGenerationIsIgnored(t *testing.T) {
	clk := newFakeClock()
	b := newTest(t, Config{MinCalls: 2, OpenTimeout: time.Second, HalfOpenProbes: 1}, clk)
	slowTok, _ := b.Allow() // admitted while closed, finishes much later
	call(b, Failure, 0)
	call(b, Failure, 0)
	if b.State() != Open {
		t.Fatal("did not trip")
	}
	b.Done(slowTok, Success, 0) // old generation: must not count or change anything
	clk.Advance(time.Second)
	probe, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	b.Done(slowTok, Failure, 0) // still stale: must not reopen the half-open breaker
	if b.State() != HalfOpen {
		t.Fatalf("stale failure changed half-open to %v", b.State())
	}
	b.Done(probe, Success, 0)
	if b.State() != Closed {
		t.Fatalf("state %v, want closed", b.State())
	}
	b.Done(probe, Failure, 0) // the probe's token is stale now too
	if b.State() != Closed || b.Counts().Failures != 0 {
		t.Fatalf("stale probe outcome counted: %+v", b.Counts())
	}
}

func TestTripResetAndHook(t *testing.T) {
	clk := newFakeClock()
	var mu sync.Mutex
	var seen []string
	b := newTest(t, Config{OpenTimeout: time.Second, HalfOpenProbes: 1}, clk, WithStateChange(func(from, to State) {
		mu.Lock()
		seen = append(seen, from.String()+">"+to.String())
		mu.Unlock()
	}))
	b.Trip()
	b.Trip() // already open: no second transition
	if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("Allow after Trip = %v", err)
	}
	clk.Advance(time.Second)
	call(b, Success, 0)
	b.Trip()
	b.Reset()
	want := "closed>open open>half-open half-open>closed closed>open open>closed"
	if got := join(seen); got != want {
		t.Fatalf("hook saw %q, want %q", got, want)
	}
	if c := b.Counts(); c.State != Closed || c.Generation != 6 {
		t.Fatalf("Counts = %+v, want closed generation 6", c)
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}

func TestDo(t *testing.T) {
	clk := newFakeClock()
	b := newTest(t, Config{MinCalls: 2, FailureRatio: 0.6, OpenTimeout: time.Second}, clk)
	ctx := context.Background()
	v, err := Do(ctx, b, func(context.Context) (int, error) { return 42, nil })
	if v != 42 || err != nil {
		t.Fatalf("Do = %d, %v", v, err)
	}
	boom := errors.New("boom")
	for range 2 {
		if _, err := Do(ctx, b, func(context.Context) (int, error) { return 0, boom }); !errors.Is(err, boom) {
			t.Fatalf("Do = %v, want boom", err)
		}
	}
	// 1 ok + 2 failures = 67% ≥ 60%: open.
	if _, err := Do(ctx, b, func(context.Context) (int, error) { return 1, nil }); !errors.Is(err, ErrOpen) {
		t.Fatalf("Do on an open breaker = %v, want ErrOpen", err)
	}
	for err, want := range map[error]Outcome{nil: Success, boom: Failure, context.Canceled: Ignored, context.DeadlineExceeded: Failure} {
		if got := Classify(err); got != want {
			t.Errorf("Classify(%v) = %v, want %v", err, got, want)
		}
	}
}

func TestSystemClockBreaker(t *testing.T) {
	// In a synctest bubble the shared coarse clock (started by the first
	// breaker, stopped by the last Close) runs on the bubble's fake time.
	synctest.Test(t, func(t *testing.T) {
		b, err := New(Config{MinCalls: 1, OpenTimeout: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		b2, _ := New(Config{})
		b2.Close()
		b2.Close() // idempotent; the coarse clock keeps running for b
		call(b, Failure, 0)
		if b.State() != Open {
			t.Fatal("did not trip")
		}
		time.Sleep(19 * time.Millisecond)
		if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
			t.Fatalf("Allow 19ms into a 20ms open period = %v, want ErrOpen", err)
		}
		time.Sleep(3 * time.Millisecond)
		if _, err := b.Allow(); err != nil {
			t.Fatalf("Allow after the open period = %v, want a probe", err)
		}
	})
}

// The coarse clock sleeps once nobody reads it for coarseIdleTicks ticks
// (an idle producer costs no wake-ups); the next read returns the current
// time and wakes it, and it ticks again while read.
func TestCoarseClockSleepsWhenUnread(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		time.Sleep((coarseIdleTicks + 2) * coarseTick)
		synctest.Wait()
		if !coarse.asleep.Load() {
			t.Fatal("coarse clock still ticking with no reader")
		}
		time.Sleep(time.Hour) // asleep: no ticks, yet a read is current
		if got, want := b.now(), time.Now().UnixNano(); got != want {
			t.Fatalf("read while asleep = %d, want the current time %d", got, want)
		}
		synctest.Wait()
		if coarse.asleep.Load() {
			t.Fatal("a read did not wake the clock")
		}
		start := b.now()
		for range 10 { // read every tick: it keeps ticking
			time.Sleep(coarseTick)
			synctest.Wait()
			if got := b.now(); got < start+int64(coarseTick)/2 {
				t.Fatalf("clock did not advance while read: %d after %d", got, start)
			}
			start = b.now()
		}
		if coarse.asleep.Load() {
			t.Fatal("clock fell asleep while read every tick")
		}
	})
}

func TestCoarseAdvanceNeverGoesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, err := New(Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		now := coarse.now.Load()
		coarseAdvance(now - 1000)
		if got := coarse.now.Load(); got != now {
			t.Fatalf("coarseAdvance went back: %d -> %d", now, got)
		}
		coarseAdvance(now + 1000)
		if got := coarse.now.Load(); got != now+1000 {
			t.Fatalf("coarseAdvance did not advance: %d", got)
		}
	})
}

// Readers racing with the clock falling asleep and waking never see the
// time go back, each in its own sequence of reads.
func TestCoarseClockMonotonicUnderRaces(t *testing.T) {
	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			last := b.now()
			for i := range 400 {
				if i%50 == g { // pause long enough for the clock to fall asleep
					time.Sleep((coarseIdleTicks + 2) * coarseTick)
				}
				now := b.now()
				if now < last {
					t.Errorf("reader %d: time went back %d ns", g, last-now)
					return
				}
				last = now
			}
		})
	}
	wg.Wait()
}
