package simwork

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Sleep
		ok   bool
	}{
		{"2s", Sleep{D: 2 * time.Second}, true},
		{"2s,500ms", Sleep{D: 2 * time.Second, Jitter: 500 * time.Millisecond}, true},
		{"0s", Sleep{}, true},
		{"-1s", Sleep{}, false},
		{"x", Sleep{}, false},
		{"1s,2s", Sleep{}, false},
		{"1s,-1ms", Sleep{}, false},
	} {
		got, err := Parse(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestWait(t *testing.T) {
	w := Sleep{D: 20 * time.Millisecond, Jitter: 10 * time.Millisecond}
	for range 5 {
		start := time.Now()
		if err := w.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < 10*time.Millisecond {
			t.Fatalf("waited %v, want at least D - Jitter", took)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := (Sleep{D: time.Hour}).Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on a cancelled ctx = %v", err)
	}
}
