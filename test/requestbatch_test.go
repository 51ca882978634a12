package test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// batchEcho is a BatchHandler that answers "re:<payload>", fails payloads
// starting with "fail", and records the size of every batch it got.
type batchEcho struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batchEcho) HandleBatch(_ context.Context, msgs []*consumer.Message) []consumer.Result {
	b.mu.Lock()
	b.sizes = append(b.sizes, len(msgs))
	b.mu.Unlock()
	out := make([]consumer.Result, len(msgs))
	for i, m := range msgs {
		if strings.HasPrefix(string(m.Payload), "fail") {
			out[i].Err = &bus.RemoteError{Code: "bad_prompt", Message: string(m.Payload)}
			continue
		}
		out[i].Payload = append([]byte("re:"), m.Payload...)
	}
	return out
}

// TestRequestBatchWithBatchHandler: a RequestBatch of 100 with mixed
// outcomes reaches a BatchHandler in batches; every caller gets its own
// answer or error.
func TestRequestBatchWithBatchHandler(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	bh := &batchEcho{}
	runConsumer(t, c, consumer.Config{Topic: "infer", Concurrency: 32},
		consumer.Batch(bh, consumer.BatchConfig{Size: 16, Window: 20 * time.Millisecond}))
	p := newProducer(t, c, producer.Config{})

	payloads := make([][]byte, 100)
	for i := range payloads {
		if i%10 == 3 {
			payloads[i] = []byte("fail-" + strconv.Itoa(i))
		} else {
			payloads[i] = []byte("q-" + strconv.Itoa(i))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := p.RequestBatch(ctx, "infer", payloads)
	if err != nil || len(out) != len(payloads) {
		t.Fatalf("RequestBatch = %d replies, %v", len(out), err)
	}
	for i, r := range out {
		if i%10 == 3 {
			var re *bus.RemoteError
			if !errors.As(r.Err, &re) || re.Code != "bad_prompt" || re.Message != string(payloads[i]) {
				t.Fatalf("reply %d = %q, %v; want its own bad_prompt error", i, r.Payload, r.Err)
			}
			continue
		}
		if r.Err != nil || string(r.Payload) != "re:"+string(payloads[i]) {
			t.Fatalf("reply %d = %q, %v; want %q", i, r.Payload, r.Err, "re:"+string(payloads[i]))
		}
	}
	bh.mu.Lock()
	defer bh.mu.Unlock()
	total, biggest := 0, 0
	for _, n := range bh.sizes {
		total += n
		biggest = max(biggest, n)
	}
	if total != 100 || biggest < 2 || biggest > 16 {
		t.Fatalf("batch sizes %v: want 100 messages in batches of 2..16", bh.sizes)
	}
	if s := p.Stats(); s.Writes != 1 {
		t.Fatalf("producer writes = %d, want 1 round trip for the batch", s.Writes)
	}
}

// TestRequestBatchOnCachedTopic: the cached path serves what it can.
func TestRequestBatchOnCachedTopic(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	h := newCounting()
	runConsumer(t, c, consumer.Config{Topic: "llm"}, h)
	p := cachedProducer(t, c, "llm")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	payloads := [][]byte{[]byte("a"), []byte("b"), []byte("a"), []byte("fail"), []byte("a")}
	for round := range 2 {
		out, err := p.RequestBatch(ctx, "llm", payloads)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range out {
			want := "re:" + string(payloads[i])
			if string(payloads[i]) == "fail" {
				if r.Err == nil {
					t.Fatalf("round %d reply %d: no error", round, i)
				}
				continue
			}
			if r.Err != nil || string(r.Payload) != want {
				t.Fatalf("round %d reply %d = %q, %v; want %q", round, i, r.Payload, r.Err, want)
			}
		}
	}
	if a, b, f := h.count("a"), h.count("b"), h.count("fail"); a != 1 || b != 1 || f != 2 {
		t.Fatalf("handler calls a=%d b=%d fail=%d, want 1, 1 and 2", a, b, f)
	}
}

// TestBatchHandlerEdges: a batch handler that panics or returns the wrong
// number of results fails its messages, never hangs them.
func TestBatchHandlerEdges(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	bad := consumer.BatchHandlerFunc(func(_ context.Context, msgs []*consumer.Message) []consumer.Result {
		if string(msgs[0].Payload) == "panic" {
			panic("boom")
		}
		return nil
	})
	runConsumer(t, c, consumer.Config{Topic: "bad"}, consumer.Batch(bad, consumer.BatchConfig{}))
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, pl := range []string{"panic", "short"} {
		_, err := p.Request(ctx, "bad", []byte(pl))
		var re *bus.RemoteError
		if !errors.As(err, &re) {
			t.Fatalf("Request(%s) = %v, want a remote error", pl, err)
		}
		t.Log(fmt.Sprint(re))
	}
}
