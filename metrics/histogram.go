package metrics

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	// subBuckets is the number of fine buckets per power of two (a
	// Prometheus native-histogram schema of 3: each bound is 2^(1/8) times
	// the one before).
	subBuckets = 8
	// minExp and maxExp bound the fine range: 2^6 ns (64 ns) up to 2^37 ns
	// (about 137 s). Shorter values land in bucket 0, longer ones in the
	// last bucket.
	minExp = 6
	maxExp = 37
	// fineBuckets counts the underflow bucket, the exponential buckets and
	// the overflow bucket.
	fineBuckets = 1 + (maxExp-minExp)*subBuckets + 1
)

// ClassicBounds are the upper bounds of the Prometheus-style buckets every
// Histogram also counts exactly: 50 µs to 60 s.
var ClassicBounds = []time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
	10 * time.Second, 30 * time.Second, 60 * time.Second,
}

// classicBuckets counts one bucket per bound plus +Inf.
const classicBuckets = 20

// thresholds[e-minExp][j] is the smallest integer n with n >= 2^(e+j/8):
// an integer v with bits.Len64(v) == e+1 is in sub-bucket j or above when
// v >= thresholds[e-minExp][j]. Comparing integers keeps the bucketing exact.
var thresholds = func() (t [maxExp - minExp][subBuckets]uint64) {
	for e := minExp; e < maxExp; e++ {
		for j := range subBuckets {
			t[e-minExp][j] = uint64(math.Ceil(math.Exp2(float64(e) + float64(j)/subBuckets)))
		}
	}
	return t
}()

// fineIndex returns the fine bucket of v nanoseconds.
func fineIndex(v uint64) int {
	if v < 1<<minExp {
		return 0
	}
	e := bits.Len64(v) - 1
	if e >= maxExp {
		return fineBuckets - 1
	}
	row := &thresholds[e-minExp]
	j := 0
	for j < subBuckets-1 && v >= row[j+1] {
		j++
	}
	return 1 + (e-minExp)*subBuckets + j
}

// fineLower returns the lower bound of fine bucket i in nanoseconds (as a
// float, since the bounds are powers of 2^(1/8)).
func fineLower(i int) float64 {
	switch {
	case i <= 0:
		return 0
	case i >= fineBuckets-1:
		return math.Exp2(maxExp)
	}
	return math.Exp2(minExp + float64(i-1)/subBuckets)
}

// fineUpper returns the upper bound of fine bucket i in nanoseconds; the
// overflow bucket has none (+Inf).
func fineUpper(i int) float64 {
	if i >= fineBuckets-1 {
		return math.Inf(1)
	}
	return fineLower(i + 1)
}

// classicIndex returns the classic bucket of v nanoseconds: the first bound
// v does not exceed (Prometheus buckets are "less than or equal").
func classicIndex(v int64) int {
	lo, hi := 0, len(ClassicBounds)
	for lo < hi {
		m := (lo + hi) / 2
		if v <= int64(ClassicBounds[m]) {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// Histogram is a lock-free latency histogram. The zero value is ready to
// use; it must not be copied after first use.
type Histogram struct {
	sum     atomic.Int64 // nanoseconds
	classic [classicBuckets]atomic.Uint64
	fine    [fineBuckets]atomic.Uint64
}

// Record adds one observation. Negative durations count as zero. Safe for
// concurrent use; it does not allocate.
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.fine[fineIndex(uint64(v))].Add(1)
	h.classic[classicIndex(v)].Add(1)
	h.sum.Add(v)
}

// Snapshot copies the histogram. Concurrent Records may be half-seen (in
// one bucket set and not yet the other); every count is still a real one.
func (h *Histogram) Snapshot() HistogramSnapshot {
	var s HistogramSnapshot
	h.snapshotInto(&s)
	return s
}

func (h *Histogram) snapshotInto(s *HistogramSnapshot) {
	for i := range h.classic {
		n := h.classic[i].Load()
		s.Classic[i] = n
		s.Count += n
	}
	for i := range h.fine {
		s.Fine[i] = h.fine[i].Load()
	}
	s.Sum = time.Duration(h.sum.Load())
}

// HistogramSnapshot is a point-in-time copy of a Histogram. Snapshots can
// be merged (several processes or roles) and subtracted (an interval).
type HistogramSnapshot struct {
	Count   uint64
	Sum     time.Duration
	Classic [classicBuckets]uint64 // per bucket, not cumulative; the last is +Inf
	Fine    [fineBuckets]uint64
}

// Merge adds o into s.
func (s *HistogramSnapshot) Merge(o *HistogramSnapshot) {
	s.Count += o.Count
	s.Sum += o.Sum
	for i := range s.Classic {
		s.Classic[i] += o.Classic[i]
	}
	for i := range s.Fine {
		s.Fine[i] += o.Fine[i]
	}
}

// Sub removes the observations of an earlier snapshot of the same
// histogram, leaving those recorded in between.
func (s *HistogramSnapshot) Sub(earlier *HistogramSnapshot) {
	s.Count -= earlier.Count
	s.Sum -= earlier.Sum
	for i := range s.Classic {
		s.Classic[i] -= earlier.Classic[i]
	}
	for i := range s.Fine {
		s.Fine[i] -= earlier.Fine[i]
	}
}

// Mean returns the average observation, 0 when there is none.
func (s *HistogramSnapshot) Mean() time.Duration {
	if s.Count == 0 {
		return 0
	}
	return s.Sum / time.Duration(s.Count)
}

// Quantile returns the q-quantile (0 < q <= 1), interpolated inside its
// fine bucket: within about 4.5% of the exact value. It returns 0 when the
// snapshot is empty. Values beyond the fine range report the range's end.
func (s *HistogramSnapshot) Quantile(q float64) time.Duration {
	var total uint64
	for _, n := range s.Fine {
		total += n
	}
	if total == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := q * float64(total)
	var seen float64
	for i, n := range s.Fine {
		if n == 0 {
			continue
		}
		if seen+float64(n) >= rank {
			lo, hi := fineLower(i), fineUpper(i)
			if math.IsInf(hi, 1) {
				return time.Duration(lo)
			}
			f := (rank - seen) / float64(n)
			return time.Duration(lo + f*(hi-lo))
		}
		seen += float64(n)
	}
	return time.Duration(fineLower(fineBuckets - 1))
}

// Cumulative returns, for each classic bound, how many observations were at
// most that long (Prometheus "le" buckets).
func (s *HistogramSnapshot) Cumulative() []uint64 {
	out := make([]uint64, len(ClassicBounds))
	var c uint64
	for i := range ClassicBounds {
		c += s.Classic[i]
		out[i] = c
	}
	return out
}

// FineBuckets calls fn for every non-empty fine bucket with its bounds in
// nanoseconds (hi is +Inf for the overflow bucket) and its count, in
// increasing order. Charts use it to draw distributions.
func (s *HistogramSnapshot) FineBuckets(fn func(lo, hi float64, n uint64)) {
	for i, n := range s.Fine {
		if n != 0 {
			fn(fineLower(i), fineUpper(i), n)
		}
	}
}
