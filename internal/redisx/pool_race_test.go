package redisx

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// TestAddBatchAfterABrokenConnection: a connection that breaks while a
// write is under way makes DoMulti return before rueidis's writer is done
// with the command slice; AddBatch must not hand that slice to the next
// call (the race detector caught it in the chaos test, where Redis is
// SIGKILLed under load). Run with -race: the race is the failure.
func TestAddBatchAfterABrokenConnection(t *testing.T) {
	data := make([]byte, 256<<10) // long writes: the break lands mid-write
	for range 20 {
		m := miniredis.NewMiniRedis()
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		c, err := dial(m.Addr())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var wg sync.WaitGroup
		var once sync.Once
		for range 4 {
			wg.Go(func() {
				var out []Result
				for ctx.Err() == nil {
					out = AddBatch(ctx, c, []Add{{Key: "s", Data: data}}, nil, out[:0])
					if IsConnErr(out[0].Err) {
						return // broken: the next call would only reconnect
					}
					once.Do(func() { go m.Close() }) // break it while the others write
				}
			})
		}
		wg.Wait()
		cancel()
		c.Close()
	}
}
