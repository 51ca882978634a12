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
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
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
	for _, tt := range []struct {
		in   string
		code bus.Code
		msg  string
	}{
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
	// No consumer yet: queued anyway, the request times out.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := p.Request(ctx, "slow", []byte("x"), producer.WaitForResponders())
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

// TestNoResponders: a request to a topic no worker serves fails at once
// with ErrNoResponders and writes nothing; once a worker has joined it is
// served; a worker stopped gracefully leaves its group and the presence set,
// and requests fail fast again; WaitForResponders queues one anyway.
func TestNoResponders(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	rc := c.Redis()
	p := newProducer(t, c, producer.Config{})
	xlen := func() int64 {
		n, err := rc.Do(context.Background(), rc.B().Xlen().Key("myc:{nobody}").Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := p.Request(ctx, "nobody", []byte("x")); !errors.Is(err, bus.ErrNoResponders) || time.Since(start) > 5*time.Second {
		t.Fatalf("Request to an unserved topic = %v after %v, want ErrNoResponders at once", err, time.Since(start))
	}
	if n := xlen(); n != 0 {
		t.Fatalf("the refused request left %d entries", n)
	}

	wctx, stopWorker := context.WithCancel(context.Background())
	co, err := consumer.New(c, consumer.Config{Topic: "nobody"}, echo)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- co.Run(wctx) }()
	<-co.Serving()
	// Refused just now: the answer is cached for a second, then checked again.
	waitFor(t, 5*time.Second, "the new worker to be seen", func() bool {
		got, err := p.Request(ctx, "nobody", []byte("y"))
		return err == nil && string(got) == "y"
	})

	stopWorker()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ti, err := inspect.New(c).Topic(ctx, "nobody")
	if err != nil || len(ti.Groups) != 1 || len(ti.Groups[0].Consumers) != 0 {
		t.Fatalf("after a graceful stop: topic %+v, %v; want the group without its consumer", ti, err)
	}
	if n, err := rc.Do(ctx, rc.B().Exists().Key(c.Keys().Workers("nobody")).Build()).AsInt64(); err != nil || n != 0 {
		t.Fatalf("presence set after the last worker left: exists %d, %v", n, err)
	}
	// For up to a second the cached answer still says served (a request
	// then queues and times out); after that, requests fail fast.
	waitFor(t, 5*time.Second, "requests to fail fast again", func() bool {
		actx, acancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer acancel()
		_, err := p.Request(actx, "nobody", []byte("z"))
		return errors.Is(err, bus.ErrNoResponders)
	})
	before := xlen()
	qctx, qcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer qcancel()
	if _, err := p.Request(qctx, "nobody", []byte("queued"), producer.WaitForResponders()); !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("Request with WaitForResponders = %v, want it queued and timed out", err)
	}
	if n := xlen(); n != before+1 {
		t.Fatalf("WaitForResponders wrote %d entries, want 1", n-before)
	}
	if s := p.Stats(); s.NoResponders < 2 {
		t.Fatalf("stats = %+v, want the refusals counted", s)
	}
}
