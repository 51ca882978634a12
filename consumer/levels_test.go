package consumer

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestLevelSchedShares: with every level backlogged, the levels are read
// in the proportion of their weights (entries, whatever a read's size).
func TestLevelSchedShares(t *testing.T) {
	var s levelSched
	weights := []int{4, 2, 1}
	got := make([]int, 3)
	for k := range 7000 {
		order := s.next(3, false)
		n := 1 + k%5 // reads of 1 to 5 entries
		got[order[0]] += n
		s.read(order[0], n, weights, nil)
	}
	total := got[0] + got[1] + got[2]
	for l, w := range weights {
		share, want := float64(got[l])/float64(total), float64(w)/7
		if share < want-0.01 || share > want+0.01 {
			t.Errorf("level %d: share %.3f, want %.3f (counts %v)", l, share, want, got)
		}
	}
}

// TestLevelSchedIdleLevelFirst: a level found empty banks no credit, and
// is tried first at the next read once the others were read: a request
// arriving on an idle urgent level waits for one read at most.
func TestLevelSchedIdleLevelFirst(t *testing.T) {
	var s levelSched
	weights := []int{4, 2, 1}
	for range 1000 { // level 0 idle, level 2 backlogged (level 1 idle too)
		order := slices.Clone(s.next(3, false))
		k := slices.Index(order, 2)
		s.read(2, 3, weights, order[:k])
	}
	if order := s.next(3, false); order[0] != 0 {
		t.Fatalf("order %v after level 0 idled: want it tried first", order)
	}
	// It banked nothing: once backlogged it takes its share, not 1,000
	// reads in a row.
	run := 0
	for range 20 {
		order := s.next(3, false)
		if order[0] != 0 {
			break
		}
		run++
		s.read(0, 3, weights, nil)
	}
	if run > 3 {
		t.Fatalf("level 0 was read %d times in a row after idling: it banked credit", run)
	}
	if order := s.next(3, true); !slices.Equal(order, []int{0, 1, 2}) {
		t.Fatalf("strict order %v, want 0 1 2", order)
	}
	s.idle()
	if s.pass[0] != s.pass[1] || s.pass[1] != s.pass[2] {
		t.Fatalf("idle left passes %v, want them equal", s.pass)
	}
}

// TestSlowEntryLinesLimited: a backlog makes every entry slow; at most
// warnBurst warn lines per warnPeriod say so, the rest go to debug, and
// the next warn line counts those not logged.
func TestSlowEntryLinesLimited(t *testing.T) {
	var buf strings.Builder
	e := &env{cfg: Config{Topic: "t", Timing: TimingConfig{SlowEntry: time.Millisecond, Sample: -1}}, log: zerolog.New(&buf).Level(zerolog.WarnLevel)}
	for range 25 {
		e.logTiming(&completion{id: "1-1", queued: time.Second}, 0)
	}
	if n := strings.Count(buf.String(), `"level":"warn"`); n != warnBurst {
		t.Fatalf("%d warn lines for 25 slow entries, want %d:\n%s", n, warnBurst, buf.String())
	}
	e.slowWarns.start = time.Now().Add(-warnPeriod) // the next period
	buf.Reset()
	e.logTiming(&completion{id: "1-2", queued: time.Second}, 0)
	if !strings.Contains(buf.String(), `"slow_entries_not_logged":15`) {
		t.Fatalf("the next period's first line %q does not count the 15 not logged", buf.String())
	}
}
