package consumer

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/egos/mycelium/codec"
)

func tokenOf(i uint64) codec.Token {
	var t codec.Token
	binary.LittleEndian.PutUint64(t[:], i+1)
	binary.LittleEndian.PutUint64(t[8:], i*0x9e3779b97f4a7c15)
	return t
}

// TestCancelSetExpiresAndEvicts: a cancelled token is remembered until its
// deadline; full, the set forgets the soonest-expiring first; nothing
// else is ever held.
func TestCancelSetExpiresAndEvicts(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC).UnixMilli()
	var s cancelSet
	s.limit = 100
	var zero codec.Token
	s.add(zero, now+1000, now)
	if s.has(&zero) || s.n.Load() != 0 {
		t.Fatal("the zero token (a request without one) was remembered")
	}
	a, b := tokenOf(1), tokenOf(2)
	s.add(a, now+1500, now)
	s.add(b, now+5000, now)
	s.add(tokenOf(3), now-1, now) // its deadline passed: nothing to remember
	if !s.has(&a) || !s.has(&b) || s.n.Load() != 2 {
		t.Fatalf("after two adds: has(a) %v has(b) %v n %d", s.has(&a), s.has(&b), s.n.Load())
	}
	s.prune(now + 2000)
	if s.has(&a) || !s.has(&b) {
		t.Fatalf("after a's deadline: has(a) %v has(b) %v", s.has(&a), s.has(&b))
	}
	// A second notice for b moves its expiry later: it outlives its first.
	s.add(b, now+9000, now+2000)
	s.prune(now + 6000)
	if !s.has(&b) {
		t.Fatal("b forgotten at its first deadline though a second notice moved it")
	}
	// Full: the soonest-expiring go first.
	for i := uint64(10); i < 10+200; i++ {
		s.add(tokenOf(i), now+6000+int64(i)*1000, now+6000)
	}
	if n := s.n.Load(); n != 100 {
		t.Fatalf("set holds %d tokens, want its limit 100", n)
	}
	if s.has(&b) {
		t.Error("b (expiring soonest) kept while later ones were evicted")
	}
	for _, i := range []uint64{209, 150, 111} {
		if tok := tokenOf(i); !s.has(&tok) {
			t.Errorf("token %d (among the latest to expire) evicted", i)
		}
	}
	// Idle longer than the wheel turns: everything expired is swept.
	s.prune(now + 3_600_000)
	if s.n.Load() != 0 || len(s.until) != 0 {
		t.Fatalf("an hour later the set holds %d", len(s.until))
	}
}

// TestCancelSetRunning: a notice finds the running handler by its token;
// a request started after its notice learns it was cancelled.
func TestCancelSetRunning(t *testing.T) {
	var s cancelSet
	now := time.Now().UnixMilli()
	slot := &workerSlot{}
	tok := tokenOf(7)
	if s.started(&tok, slot) {
		t.Fatal("started reported a cancel nobody sent")
	}
	if got := s.runner(&tok); got != slot {
		t.Fatalf("runner = %p, want %p", got, slot)
	}
	s.finished(&tok)
	if s.runner(&tok) != nil {
		t.Fatal("finished request still running")
	}
	other := tokenOf(8)
	s.add(other, now+1000, now)
	if !s.started(&other, slot) {
		t.Fatal("a request whose notice came first started as not cancelled")
	}
	var zero codec.Token
	if s.started(&zero, slot) || s.runner(&zero) != nil {
		t.Fatal("a request without a token registered")
	}
}

// BenchmarkCancelFlood: notices for distinct requests, a million and more
// (b.N of them) into one set: each costs O(1), the set stays at its bound.
func BenchmarkCancelFlood(b *testing.B) {
	var s cancelSet
	now := time.Now().UnixMilli()
	toks := make([]codec.Token, 1<<20)
	for i := range toks {
		toks[i] = tokenOf(uint64(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Deadlines spread over the next ten minutes; the clock advances
		// a millisecond every 100 notices.
		at := now + int64(i/100)
		s.add(toks[i&(len(toks)-1)], at+int64(i%600_000), at)
	}
	b.StopTimer()
	if n := s.n.Load(); n > maxCancelled {
		b.Fatalf("set holds %d, bound %d", n, maxCancelled)
	}
}
