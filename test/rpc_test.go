package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
	"github.com/egos/mycelium/test/redistest"
)

func TestRequestsAtConcurrency256NoCrossTalk(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	runConsumer(t, c, consumer.Config{Topic: "rpc", Concurrency: 64}, echo)
	p := newProducer(t, c, producer.Config{})

	const total, conc = 10_000, 256
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	next := make(chan int, total)
	for i := range total {
		next <- i
	}
	close(next)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				req := []byte(fmt.Sprintf("request-%d-%s", i, bytes.Repeat([]byte{byte(i)}, i%300)))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				got, err := p.Request(ctx, "rpc", req)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("Request(%d) = %w", i, err)
					return
				}
				if !bytes.Equal(got, req) {
					errs <- fmt.Errorf("Request(%d) got the reply of another request: %.40q", i, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s := p.Stats(); s.Replies != total || s.Late != 0 {
		t.Fatalf("producer stats = %+v, want %d replies and no late ones", s, total)
	}
}

func TestLargePayloadAndLimit(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	runConsumer(t, c, consumer.Config{Topic: "big"}, echo)
	p := newProducer(t, c, producer.Config{MaxPayload: 1 << 20})

	big := bytes.Repeat([]byte("0123456789abcdef"), (1<<20)/16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := p.Request(ctx, "big", big)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("Request(1 MiB) = %d bytes, %v; want the same 1 MiB back", len(got), err)
	}
	_, err = p.Request(ctx, "big", append(big, 'x'))
	if !errors.Is(err, bus.ErrPayloadTooLarge) {
		t.Fatalf("Request(1 MiB + 1) = %v, want ErrPayloadTooLarge", err)
	}
	if _, err := p.Publish(ctx, "big", append(big, 'x')); !errors.Is(err, bus.ErrPayloadTooLarge) {
		t.Fatalf("Publish(1 MiB + 1) = %v, want ErrPayloadTooLarge", err)
	}
}

func TestRemoteErrorsAndPanics(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	runConsumer(t, c, consumer.Config{Topic: "err"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		switch string(m.Payload) {
		case "plain":
			return nil, errors.New("model overloaded")
		case "coded":
			return nil, &bus.RemoteError{Code: "quota", Message: "out of tokens"}
		case "panic":
			panic("boom")
		}
		return []byte("ok"), nil
	}))
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tt := range []struct{ in, code, msg string }{
		{"plain", bus.CodeHandler, "model overloaded"},
		{"coded", "quota", "out of tokens"},
		{"panic", bus.CodePanic, "boom"},
	} {
		_, err := p.Request(ctx, "err", []byte(tt.in))
		var re *bus.RemoteError
		if !errors.As(err, &re) || re.Code != tt.code || re.Message != tt.msg {
			t.Errorf("Request(%q) = %v, want RemoteError{%q, %q}", tt.in, err, tt.code, tt.msg)
		}
	}
	if got, err := p.Request(ctx, "err", []byte("fine")); err != nil || string(got) != "ok" {
		t.Errorf("Request(fine) after a panic = %q, %v; want ok", got, err)
	}
}

func TestTimeoutAndExpiredRequests(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	p := newProducer(t, c, producer.Config{})
	// No consumer yet: the request times out while queued.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := p.Request(ctx, "slow", []byte("x"))
	cancel()
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Request without a consumer = %v, want ErrTimeout and DeadlineExceeded", err)
	}
	var calls sync.Map
	co := runConsumer(t, c, consumer.Config{Topic: "slow"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		calls.Store(string(m.Payload), true)
		return m.Payload, nil
	}))
	waitFor(t, 5*time.Second, "the expired request to be acknowledged", func() bool { return co.Stats().Expired == 1 })
	if _, ok := calls.Load("x"); ok {
		t.Fatal("the handler ran a request whose caller had given up")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := p.Request(ctx, "slow", []byte("y")); err != nil || string(got) != "y" {
		t.Fatalf("Request(y) = %q, %v", got, err)
	}
}
