package consumer

import (
	"testing"
	"time"
)

func TestQueueWait(t *testing.T) {
	ms := func(v int64) int64 { return v * int64(time.Millisecond) }
	for _, tt := range []struct {
		name       string
		id         string
		sent, read int64
		want       time.Duration
	}{
		{"from the entry id", "1000-0", ms(999), ms(1005), 5 * time.Millisecond},
		{"sent later than the id's millisecond", "1000-0", ms(1000) + 300_000, ms(1002), 1700 * time.Microsecond},
		{"no sent time", "1000-3", 0, ms(1001), time.Millisecond},
		{"bad id: sent time only", "x", ms(10), ms(12), 2 * time.Millisecond},
		{"clock skew: read before sent", "1000-0", ms(1010), ms(1005), 0},
		{"nothing known", "x", 0, ms(5), 0},
	} {
		if got := queueWait(tt.id, tt.sent, tt.read); got != tt.want {
			t.Errorf("%s: queueWait = %v, want %v", tt.name, got, tt.want)
		}
	}
}
