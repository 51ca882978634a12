package consumer

import (
	"testing"
	"time"
)

func TestWarnLimiter(t *testing.T) {
	var l warnLimiter
	t0 := time.Unix(1000, 0)
	for i := range warnBurst {
		if ok, s := l.allow(t0.Add(time.Duration(i) * time.Millisecond)); !ok || s != 0 {
			t.Fatalf("event %d of the burst: allow = %v, %d", i, ok, s)
		}
	}
	for i := range 5 {
		if ok, _ := l.allow(t0.Add(time.Second + time.Duration(i))); ok {
			t.Fatalf("event %d past the burst was allowed", i)
		}
	}
	if ok, s := l.allow(t0.Add(warnPeriod)); !ok || s != 5 {
		t.Fatalf("first event of the next period: allow = %v, suppressed %d; want true, 5", ok, s)
	}
	if ok, s := l.allow(t0.Add(warnPeriod + time.Millisecond)); !ok || s != 0 {
		t.Fatalf("second event of the next period: allow = %v, suppressed %d; want true, 0", ok, s)
	}
}
