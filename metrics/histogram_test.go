package metrics

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestFineIndexMatchesBounds: every value lands in the bucket whose bounds
// contain it, checked against float math around each bound and at random.
func TestFineIndexMatchesBounds(t *testing.T) {
	check := func(v uint64) {
		t.Helper()
		i := fineIndex(v)
		lo, hi := fineLower(i), fineUpper(i)
		if float64(v) < lo || float64(v) >= hi {
			if i == fineBuckets-1 && float64(v) >= lo {
				return
			}
			t.Fatalf("fineIndex(%d) = %d with bounds [%g, %g)", v, i, lo, hi)
		}
	}
	for i := 1; i < fineBuckets; i++ {
		b := uint64(math.Ceil(fineLower(i)))
		for _, v := range []uint64{b - 1, b, b + 1} {
			check(v)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		check(r.Uint64N(1 << 40))
		check(r.Uint64N(1 << 20))
	}
	check(0)
	check(math.MaxInt64)
}

func TestClassicBoundsAreInclusive(t *testing.T) {
	var h Histogram
	for _, b := range ClassicBounds {
		h.Record(b)     // exactly on the bound: counted at that bound
		h.Record(b + 1) // just above: the next one
	}
	h.Record(time.Hour)
	s := h.Snapshot()
	cum := s.Cumulative()
	for i := range ClassicBounds {
		if want := uint64(2*i + 1); cum[i] != want {
			t.Fatalf("le=%v: %d, want %d", ClassicBounds[i], cum[i], want)
		}
	}
	if s.Count != uint64(2*len(ClassicBounds)+1) || s.Classic[classicBuckets-1] != 2 {
		t.Fatalf("count %d, +Inf bucket %d", s.Count, s.Classic[classicBuckets-1])
	}
}

func TestQuantileAccuracy(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var h Histogram
	vals := make([]time.Duration, 50000)
	for i := range vals {
		// log-normal around 300 µs: the shape of real latencies.
		vals[i] = time.Duration(300e3 * math.Exp(r.NormFloat64()))
		h.Record(vals[i])
	}
	slices.Sort(vals)
	s := h.Snapshot()
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(q*float64(len(vals)))-1]
		got := s.Quantile(q)
		if rel := math.Abs(float64(got-exact)) / float64(exact); rel > 0.045 {
			t.Errorf("q%.3f = %v, exact %v (%.1f%% off)", q, got, exact, 100*rel)
		}
	}
	var sum time.Duration
	for _, v := range vals {
		sum += v
	}
	if s.Sum != sum || s.Mean() != sum/time.Duration(len(vals)) {
		t.Fatalf("sum %v mean %v, want %v", s.Sum, s.Mean(), sum)
	}
}

func TestEmptyAndExtremes(t *testing.T) {
	var h Histogram
	s := h.Snapshot()
	if s.Quantile(0.5) != 0 || s.Mean() != 0 {
		t.Fatal("empty histogram must report zero")
	}
	h.Record(-5)
	h.Record(10 * time.Minute)
	s = h.Snapshot()
	if s.Count != 2 || s.Fine[0] != 1 || s.Fine[fineBuckets-1] != 1 {
		t.Fatalf("negative/overflow not counted at the ends: %+v", s.Count)
	}
	if got := s.Quantile(1); got != time.Duration(math.Exp2(maxExp)) {
		t.Fatalf("q1 = %v, want the range end", got)
	}
}

func TestMergeSub(t *testing.T) {
	var a, b Histogram
	a.Record(time.Millisecond)
	b.Record(time.Second)
	sa, sb := a.Snapshot(), b.Snapshot()
	m := sa
	m.Merge(&sb)
	if m.Count != 2 || m.Sum != time.Second+time.Millisecond {
		t.Fatalf("merge: %d %v", m.Count, m.Sum)
	}
	m.Sub(&sa)
	if m != sb {
		t.Fatal("merge then sub must give the other snapshot back")
	}
}

func TestConcurrentRecord(t *testing.T) {
	var r Recorder
	var wg sync.WaitGroup
	const workers, each = 8, 5000
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				r.Record(Stage(i%int(NumStages)), time.Duration(w*each+i)*time.Microsecond)
			}
		})
	}
	wg.Wait()
	s := r.Snapshot()
	var total uint64
	for i := range s.Stages {
		var fine uint64
		for _, n := range s.Stages[i].Fine {
			fine += n
		}
		if fine != s.Stages[i].Count {
			t.Fatalf("stage %v: fine %d != classic %d", Stage(i), fine, s.Stages[i].Count)
		}
		total += s.Stages[i].Count
	}
	if total != workers*each {
		t.Fatalf("recorded %d, want %d", total, workers*each)
	}
	if got := len(s.Summaries()); got != int(NumStages) {
		t.Fatalf("%d summaries, want %d", got, NumStages)
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	var r Recorder
	if n := testing.AllocsPerRun(1000, func() { r.Record(Handler, 123*time.Microsecond) }); n != 0 {
		t.Fatalf("Record allocates %v times", n)
	}
}

func TestStageNames(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Stages() {
		n := s.String()
		if n == "" || n == "unknown" || seen[n] {
			t.Fatalf("stage %d has a bad or duplicate name %q", s, n)
		}
		seen[n] = true
	}
	if NumStages.String() != "unknown" {
		t.Fatal("out of range stage must be unknown")
	}
}

// BenchmarkRecordAllStages is the cost of recording one request's stages.
func BenchmarkRecordAllStages(b *testing.B) {
	var r Recorder
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(rand.Int64N(int64(time.Millisecond)))
		for pb.Next() {
			for s := range NumStages {
				r.Record(s, d)
			}
		}
	})
}
