package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
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

// modelServer is an HTTP test server playing an OpenAI-style model server.
type modelServer struct {
	*httptest.Server
	mu      sync.Mutex
	calls   []time.Time
	headers []http.Header
	aborted chan struct{} // a request's ctx ended before the handler did
}

func newModelServer(t *testing.T, h func(ms *modelServer, w http.ResponseWriter, r *http.Request, call int)) *modelServer {
	ms := &modelServer{aborted: make(chan struct{}, 16)}
	ms.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ms.mu.Lock()
		ms.calls = append(ms.calls, time.Now())
		ms.headers = append(ms.headers, r.Header.Clone())
		n := len(ms.calls)
		ms.mu.Unlock()
		h(ms, w, r, n)
	}))
	t.Cleanup(ms.Close)
	return ms
}

func (ms *modelServer) snapshot() ([]time.Time, []http.Header) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return append([]time.Time(nil), ms.calls...), append([]http.Header(nil), ms.headers...)
}

// sse writes one server-sent event and flushes it.
func sse(w http.ResponseWriter, data string) {
	fmt.Fprintf(w, "data: %s\n\n", data)
	w.(http.Flusher).Flush()
}

// TestHTTPBackendStreamsEvents: an event stream passes chunk by chunk (the
// first reaches the caller while the server still holds the rest), and the
// trace context arrives under its own name.
func TestHTTPBackendStreamsEvents(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	release := make(chan struct{})
	ms := newModelServer(t, func(ms *modelServer, w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Content-Type", "text/event-stream")
		sse(w, `{"choices":[{"delta":{"content":"Hel"}}]}`)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		for _, tok := range []string{"lo", ",", " world"} {
			sse(w, `{"choices":[{"delta":{"content":"`+tok+`"}}]}`)
		}
		sse(w, "[DONE]")
	})
	startServe(t, "--redis", srv.URL, "--topic", "llm", "--handler", ms.URL+"/v1/chat/completions")
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	s, err := p.Stream(ctx, "llm", []byte(`{"stream":true}`), producer.WithHeaders(map[string]string{"traceparent": tp, "content-type": "application/json"}))
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil || string(first) != `{"choices":[{"delta":{"content":"Hel"}}]}` {
		t.Fatalf("first chunk = %q, %v", first, err)
	}
	close(release) // the server sends the rest only now
	var rest []string
	for chunk, err := range s.All() {
		if err != nil {
			t.Fatal(err)
		}
		rest = append(rest, string(chunk))
	}
	if len(rest) != 4 || rest[3] != "[DONE]" || !strings.Contains(rest[2], " world") {
		t.Fatalf("chunks after the first = %q", rest)
	}
	_, hs := ms.snapshot()
	if got := hs[0].Get("traceparent"); got != tp {
		t.Fatalf("traceparent at the backend = %q, want %q (headers %v)", got, tp, hs[0])
	}
	if hs[0].Get("Content-Type") != "application/json" || hs[0].Get("X-Mycelium-Header-Traceparent") != "" {
		t.Fatalf("backend headers = %v", hs[0])
	}
}

// TestHTTPBackendAbortOnCancel: a caller that stops reading (or whose ctx
// is cancelled) aborts the backend's request.
func TestHTTPBackendAbortOnCancel(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ms := newModelServer(t, func(ms *modelServer, w http.ResponseWriter, r *http.Request, _ int) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			sse(w, "tok"+strconv.Itoa(i))
			select {
			case <-r.Context().Done():
				ms.aborted <- struct{}{}
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	startServe(t, "--redis", srv.URL, "--topic", "gen", "--handler", ms.URL)
	p := newProducer(t, c, producer.Config{})

	// A stream closed early.
	s, err := p.Stream(context.Background(), "gen", nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Now()
	s.Close()
	select {
	case <-ms.aborted:
		t.Logf("stream closed → backend request aborted in %v", time.Since(at))
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's request still runs 5s after the stream was closed")
	}

	// A plain request whose ctx is cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := p.Request(ctx, "gen", nil)
		done <- err
	}()
	redistest.WaitFor(t, 5*time.Second, "second backend call", func() bool { calls, _ := ms.snapshot(); return len(calls) == 2 })
	cancel()
	<-done
	select {
	case <-ms.aborted:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's request still runs 5s after the caller cancelled")
	}
}

// TestHTTPBackendRetryAfter: a 429 with Retry-After: 1 is retried once,
// about a second later, and then succeeds.
func TestHTTPBackendRetryAfter(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ms := newModelServer(t, func(ms *modelServer, w http.ResponseWriter, r *http.Request, call int) {
		if call == 1 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "rate limited", http.StatusTooManyRequests)
			return
		}
		_, _ = io.WriteString(w, "answer")
	})
	startServe(t, "--redis", srv.URL, "--topic", "quota", "--handler", ms.URL)
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := p.Request(ctx, "quota", []byte("q"))
	if err != nil || string(got) != "answer" {
		t.Fatalf("Request = %q, %v", got, err)
	}
	calls, _ := ms.snapshot()
	if len(calls) != 2 {
		t.Fatalf("backend called %d times, want 2", len(calls))
	}
	if gap := calls[1].Sub(calls[0]); gap < 950*time.Millisecond || gap > 2500*time.Millisecond {
		t.Fatalf("retried after %v, want about 1s", gap)
	}
	// A 503 without Retry-After is a remote error carrying the status.
	ms2 := newModelServer(t, func(_ *modelServer, w http.ResponseWriter, _ *http.Request, _ int) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	startServe(t, "--redis", srv.URL, "--topic", "down", "--handler", ms2.URL, "--breaker=false")
	_, err = p.Request(ctx, "down", nil)
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "http_503" {
		t.Fatalf("Request to a 503 backend = %v, want remote error http_503", err)
	}
}

// TestRequestInterruptCancelsHandler: SIGINT to `bus-worker request`
// cancels its request, and the handler's ctx ends.
func TestRequestInterruptCancelsHandler(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	runConsumer(t, c, consumer.Config{Topic: "intr"}, consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		ended <- context.Cause(ctx)
		return nil, ctx.Err()
	}))
	cmd := exec.Command(buildCmd(t, "bus-worker"), "request", "--redis", srv.URL, "--topic", "intr", "--data", "x", "--timeout", "1m", "--stream", "--json")
	out := &redistest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the handler")
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case cause := <-ended:
		if !errors.Is(cause, bus.ErrCancelled) {
			t.Fatalf("handler ctx ended with %v, want ErrCancelled", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler still running 5s after SIGINT to bus-worker request")
	}
	_ = cmd.Wait()
	var line struct {
		Error struct{ Kind string } `json:"error"`
	}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "{") {
			_ = json.Unmarshal(sc.Bytes(), &line)
		}
	}
	if line.Error.Kind != "cancelled" {
		t.Fatalf("request --stream --json printed %q, want a cancelled error line", out)
	}
}

// TestStreamWorkerKilled: the worker streaming a reply is SIGKILLed; the
// request is reclaimed by another worker after ClaimIdle. The caller,
// having read chunks of the first delivery, gets bus.ErrStreamBroken and
// never a chunk of the second; the second handler is cancelled.
func TestStreamWorkerKilled(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	w := redistest.StartWorker(t, "--redis", srv.URL, "--topic", "kill", "--handler", "stream:1000,5ms", "--claim-idle", "1s")
	p := newProducer(t, c, producer.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := p.Stream(ctx, "kill", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		chunk, err := s.Recv()
		if err != nil || string(chunk) != "tok"+strconv.Itoa(i)+" " {
			t.Fatalf("chunk %d = %q, %v", i, chunk, err)
		}
	}
	w.Kill()
	second := make(chan error, 1)
	runConsumer(t, c, consumer.Config{Topic: "kill", Reclaim: consumer.ReclaimConfig{ClaimIdle: time.Second, Interval: 200 * time.Millisecond}},
		consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
			for i := 0; ; i++ {
				if err := m.Send(ctx, []byte("second"+strconv.Itoa(i))); err != nil {
					second <- err
					return nil, err
				}
				time.Sleep(5 * time.Millisecond)
			}
		}))
	n := 20
	for {
		chunk, err := s.Recv()
		if err != nil {
			if !errors.Is(err, bus.ErrStreamBroken) {
				t.Fatalf("after %d chunks: %v, want ErrStreamBroken", n, err)
			}
			break
		}
		if strings.HasPrefix(string(chunk), "second") {
			t.Fatalf("chunk %d came from the second delivery: %q", n, chunk)
		}
		n++
	}
	select {
	case err := <-second:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("second handler's Send = %v, want a cancellation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second handler not cancelled")
	}
}
