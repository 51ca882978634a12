package plain

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/internal/redistest"
)

// The baseline answers requests (and errors) and serves events through its
// group, on a real redis-server.
func TestRequestReplyAndEvents(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c, err := Dial(ctx, srv.URL, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var mu sync.Mutex
	events := map[string]bool{}
	stop, err := StartWorkers(ctx, c, "myc", "t", 8, func(_ context.Context, p []byte) ([]byte, error) {
		switch s := string(p); {
		case s == "fail":
			return nil, errors.New("handler says no")
		case len(s) > 3 && s[:3] == "ev-":
			mu.Lock()
			events[s] = true
			mu.Unlock()
			return nil, nil
		}
		return append([]byte("re:"), p...), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	b := NewCaller(c, "myc", "t", 5*time.Second)
	defer b.Close()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			out, err := b.Request(ctx, []byte(fmt.Sprint(i)))
			if err != nil || string(out) != fmt.Sprint("re:", i) {
				t.Errorf("request %d = %q, %v", i, out, err)
			}
		})
	}
	wg.Wait()
	if _, err := b.Request(ctx, []byte("fail")); err == nil || err.Error() != "handler says no" {
		t.Fatalf("failing request = %v", err)
	}
	for i := range 20 {
		if err := b.Publish(ctx, []byte(fmt.Sprint("ev-", i))); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(events)
		mu.Unlock()
		if n == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 20 events handled", n)
		}
		time.Sleep(2 * time.Millisecond) // polling with a deadline
	}
	short := NewCaller(c, "myc", "nobody", 50*time.Millisecond)
	defer short.Close()
	if _, err := short.Request(ctx, []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request nobody serves = %v, want the timeout", err)
	}
}
