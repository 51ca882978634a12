package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/simwork"
)

func TestParseHandler(t *testing.T) {
	for _, tt := range []struct {
		spec string
		ok   bool
	}{
		{"echo", true}, {"sleep:10ms", true}, {"sleep:2s,500ms", true}, {"http://127.0.0.1:1/x", true}, {"https://h/x", true},
		{"", false}, {"sleep:", false}, {"sleep:abc", false}, {"sleep:1s,2s", false}, {"sleep:-1s", false}, {"http://", false}, {"ftp://h", false}, {"teleport", false},
	} {
		_, err := ParseHandler(tt.spec, 1<<10, http.DefaultClient)
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrSetup)) {
			t.Errorf("ParseHandler(%q) = %v, want ok=%v (errors must wrap ErrSetup)", tt.spec, err, tt.ok)
		}
	}
}

func TestSleepHandlerHonoursDeadline(t *testing.T) {
	h := sleepHandler(simwork.Sleep{D: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := h.Handle(ctx, &consumer.Message{Payload: []byte("x")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("sleep handler past the deadline = %v, want DeadlineExceeded", err)
	}
	out, err := sleepHandler(simwork.Sleep{D: time.Millisecond, Jitter: time.Millisecond}).Handle(context.Background(), &consumer.Message{Payload: []byte("p")})
	if err != nil || string(out) != "p" {
		t.Fatalf("sleep handler = %q, %v; want the payload echoed", out, err)
	}
}

func TestHTTPHandler(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch string(body) {
		case "fail":
			http.Error(w, "model overloaded", http.StatusServiceUnavailable)
		case "big":
			_, _ = w.Write(bytes.Repeat([]byte("x"), 2048))
		default:
			if r.Method != http.MethodPost || r.Header.Get("X-Mycelium-Topic") != "t" || r.Header.Get("X-Mycelium-Header-Trace") != "abc" {
				http.Error(w, "bad request shape", http.StatusBadRequest)
				return
			}
			_, _ = w.Write(append([]byte("re:"), body...))
		}
	}))
	defer srv.Close()
	h := httpHandler(srv.Client(), srv.URL, 1024)
	msg := func(p string) *consumer.Message {
		return &consumer.Message{ID: "1-1", Topic: "t", Payload: []byte(p), Attempt: 1, Headers: map[string]string{"Trace": "abc"}}
	}
	ctx := context.Background()
	if out, err := h.Handle(ctx, msg("hi")); err != nil || string(out) != "re:hi" {
		t.Fatalf("http handler = %q, %v", out, err)
	}
	_, err := h.Handle(ctx, msg("fail"))
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "http_503" || !strings.Contains(re.Message, "model overloaded") {
		t.Fatalf("http handler on 503 = %v, want RemoteError http_503", err)
	}
	if _, err := h.Handle(ctx, msg("big")); !errors.As(err, &re) || re.Code != "http_response_too_large" {
		t.Fatalf("http handler on an oversized body = %v", err)
	}
	if _, err := httpHandler(srv.Client(), "http://127.0.0.1:1", 1024).Handle(ctx, msg("x")); err == nil {
		t.Fatal("http handler with an unreachable target returned no error")
	}
}
