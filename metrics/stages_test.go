package metrics

import (
	"testing"
	"time"
)

func TestMicros(t *testing.T) {
	for d, want := range map[time.Duration]float64{0: 0, 1234567 * time.Nanosecond: 1234.5, 99 * time.Nanosecond: 0, time.Second: 1e6} {
		if got := Micros(d); got != want {
			t.Errorf("Micros(%v) = %v, want %v", d, got, want)
		}
	}
}
