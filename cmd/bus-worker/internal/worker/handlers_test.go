package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/cmd/internal/simwork"
	"github.com/egos/mycelium/consumer"
)

func TestParseHandler(t *testing.T) {
	for _, tt := range []struct {
		spec string
		ok   bool
	}{
		{"echo", true}, {"stream:200,20ms", true}, {"stream:1,0s", true}, {"stream:0,1ms", false}, {"stream:5", false}, {"stream:5,-1s", false}, {"sleep:10ms", true}, {"sleep:2s,500ms", true}, {"http://127.0.0.1:1/x", true}, {"https://h/x", true},
		{"", false}, {"sleep:", false}, {"sleep:abc", false}, {"sleep:1s,2s", false}, {"sleep:-1s", false}, {"http://", false}, {"ftp://h", false}, {"teleport", false},
	} {
		_, err := ParseHandler(tt.spec, HTTPOptions{MaxResponse: 1 << 10}, http.DefaultClient)
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
	h := httpHandler(srv.Client(), srv.URL, HTTPOptions{MaxResponse: 1024})
	msg := func(p string) *consumer.Message {
		return &consumer.Message{ID: "1-1", Topic: "t", Payload: []byte(p), Attempt: 1, Headers: map[string]string{"Trace": "abc"}}
	}
	ctx := context.Background()
	if out, err := h.Handle(ctx, msg("hi")); err != nil || string(out) != "re:hi" {
		t.Fatalf("http handler = %q, %v", out, err)
	}
	_, err := h.Handle(ctx, msg("fail"))
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "http_503" || strings.Contains(re.Message, "model overloaded") {
		t.Fatalf("http handler on 503 = %v, want RemoteError http_503 without the body (not asked for)", err)
	}
	withBody := httpHandler(srv.Client(), srv.URL, HTTPOptions{MaxResponse: 1024, ErrorBody: true})
	if _, err := withBody.Handle(ctx, msg("fail")); !errors.As(err, &re) || re.Code != "http_503" || !strings.Contains(re.Message, "model overloaded") {
		t.Fatalf("http handler (ErrorBody) on 503 = %v, want RemoteError http_503 with the body", err)
	}
	if _, err := h.Handle(ctx, msg("big")); !errors.As(err, &re) || re.Code != "http_response_too_large" {
		t.Fatalf("http handler on an oversized body = %v", err)
	}
	if _, err := httpHandler(srv.Client(), "http://127.0.0.1:1", HTTPOptions{MaxResponse: 1024}).Handle(ctx, msg("x")); err == nil {
		t.Fatal("http handler with an unreachable target returned no error")
	}
}

func TestHTTPHandlerHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
	}))
	defer srv.Close()
	m := &consumer.Message{ID: "1-1", Topic: "t", Attempt: 2, Headers: map[string]string{
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=b", "baggage": "k=v",
		"content-type": "application/json", "tenant": "acme", "bad name": "dropped", "x": "bad\nvalue"}}
	h := httpHandler(srv.Client(), srv.URL, HTTPOptions{AuthHeader: "Authorization", AuthValue: "Bearer s3cret"})
	if _, err := h.Handle(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	hd := <-got
	for k, want := range map[string]string{
		"Traceparent": m.Headers["traceparent"], "Tracestate": "a=b", "Baggage": "k=v",
		"Content-Type": "application/json", "X-Mycelium-Header-Tenant": "acme", "Authorization": "Bearer s3cret",
		"X-Mycelium-Attempt": "2", "X-Mycelium-Header-Traceparent": "", "X-Mycelium-Header-X": "",
	} {
		if hd.Get(k) != want {
			t.Errorf("header %s = %q, want %q", k, hd.Get(k), want)
		}
	}
	for k := range hd {
		if strings.Contains(k, " ") {
			t.Errorf("header %q passed on", k)
		}
	}
	// The configured content type wins over the caller's; none at all
	// gives application/octet-stream.
	h = httpHandler(srv.Client(), srv.URL, HTTPOptions{ContentType: "text/plain"})
	_, _ = h.Handle(context.Background(), m)
	if ct := (<-got).Get("Content-Type"); ct != "text/plain" {
		t.Errorf("configured content type: got %q", ct)
	}
	_, _ = h.Handle(context.Background(), &consumer.Message{})
	if ct := (<-got).Get("Content-Type"); ct != "text/plain" {
		t.Errorf("configured content type without caller header: got %q", ct)
	}
	h = httpHandler(srv.Client(), srv.URL, HTTPOptions{})
	_, _ = h.Handle(context.Background(), &consumer.Message{})
	if ct := (<-got).Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("default content type: got %q", ct)
	}
}

func TestHTTPRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"1", time.Second, true}, {" 120 ", 2 * time.Minute, true}, {"0", 0, true},
		{"Mon, 30 Nov 2026 12:00:30 GMT", 30 * time.Second, true}, {"Mon, 30 Nov 2026 11:00:00 GMT", 0, true},
		{"", 0, false}, {"-1", 0, false}, {"soon", 0, false}, {"1.5", 0, false},
	} {
		d, ok := parseRetryAfter(tt.v, now)
		if d != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.v, d, ok, tt.want, tt.ok)
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/429":
			w.Header().Set("Retry-After", "7")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case "/503-long":
			w.Header().Set("Retry-After", "86400")
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			http.Error(w, "overloaded", http.StatusServiceUnavailable) // no Retry-After
		}
	}))
	defer srv.Close()
	for path, want := range map[string]time.Duration{"/429": 7 * time.Second, "/503-long": time.Minute, "/503": -1} {
		_, err := httpHandler(srv.Client(), srv.URL+path, HTTPOptions{MaxRetryAfter: time.Minute}).Handle(context.Background(), &consumer.Message{})
		var ra *consumer.RetryAfterError
		var re *bus.RemoteError
		switch {
		case want < 0 && errors.As(err, &ra):
			t.Errorf("%s: %v asks for a retry", path, err)
		case want >= 0 && (!errors.As(err, &ra) || ra.Delay != want):
			t.Errorf("%s: %v, want a retry after %v", path, err, want)
		case !errors.As(err, &re) || !strings.HasPrefix(string(re.Code), "http_"):
			t.Errorf("%s: %v does not carry the status as a remote error", path, err)
		}
	}
}

func TestReadEvents(t *testing.T) {
	body := ": comment\nevent: message\ndata: {\"a\":1}\n\ndata: line1\r\ndata:line2\nid: 7\n\nretry: 10\n\ndata: [DONE]\n\ndata: cut"
	var got []string
	err := readEvents(strings.NewReader(body), 1<<10, func(b []byte) error { got = append(got, string(b)); return nil })
	want := []string{`{"a":1}`, "line1\nline2", "[DONE]", "cut"}
	if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("readEvents = %q, %v; want %q", got, err, want)
	}
	err = readEvents(strings.NewReader("data: "+strings.Repeat("x", 100)+"\n\n"), 50, func([]byte) error { return nil })
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "http_response_too_large" {
		t.Fatalf("oversized event = %v", err)
	}
}

// TestHTTPHandlerKeepsSecrets (security issue, points 14 and 15): a handler
// URL's password never reaches callers' errors; a backend's error body
// reaches them only when asked for, with credentials redacted.
func TestHTTPHandlerKeepsSecrets(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"bad key","headers":{"Authorization":"Bearer sk-live-0123456789abcdef"},"api_key":"k3y-s3cret","url":"https://u:pw0rd@x"}`, http.StatusUnauthorized)
	}))
	defer srv.Close()
	ctx := context.Background()
	m := &consumer.Message{ID: "1-1", Topic: "t", Payload: []byte("x"), Attempt: 1}
	_, err := httpHandler(srv.Client(), srv.URL, HTTPOptions{ErrorBody: true}).Handle(ctx, m)
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Code != "http_401" || !strings.Contains(re.Message, "bad key") {
		t.Fatalf("401 with ErrorBody = %v", err)
	}
	for _, secret := range []string{"sk-live", "0123456789abcdef", "k3y-s3cret", "pw0rd"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the caller's error shows %q: %v", secret, err)
		}
	}
	if !errors.Is(err, bus.ErrCallerFault) {
		t.Errorf("401 = %v, want it marked the caller's fault (the breaker must not count it)", err)
	}
	// A password in the handler's URL: unreachable, and not shown.
	_, err = httpHandler(srv.Client(), "http://user:hunter2@127.0.0.1:1/v1", HTTPOptions{}).Handle(ctx, m)
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "http_unreachable") {
		t.Fatalf("unreachable backend with a password = %v", err)
	}
	if got := RedactSpec("https://user:hunter2@model.internal/v1"); strings.Contains(got, "hunter2") {
		t.Fatalf("RedactSpec = %q", got)
	}
	if _, err := ParseHandler("http://user:hunter2@[::1", HTTPOptions{}, srv.Client()); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("ParseHandler(bad URL with a password) = %v", err)
	}
}

// TestHTTPHandlerCallerFaults (security issue, point 10): 4xx answers but
// 408 and 429 are the request's fault, not the backend's; a trace header
// holding a CR is dropped instead of failing the call.
func TestHTTPHandlerCallerFaults(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		if code == 0 {
			_, _ = w.Write([]byte("ok"))
			return
		}
		w.WriteHeader(code)
	}))
	defer srv.Close()
	ctx := context.Background()
	for code, fault := range map[int]bool{400: true, 404: true, 422: true, 408: false, 500: false, 502: false} {
		_, err := httpHandler(srv.Client(), srv.URL+"?code="+strconv.Itoa(code), HTTPOptions{}).Handle(ctx, &consumer.Message{ID: "1-1"})
		if err == nil || errors.Is(err, bus.ErrCallerFault) != fault {
			t.Errorf("status %d = %v; caller's fault %v, want %v", code, err, errors.Is(err, bus.ErrCallerFault), fault)
		}
	}
	m := &consumer.Message{ID: "1-1", Headers: map[string]string{"traceparent": "00-abc\r\nX-Evil: 1"}}
	if out, err := httpHandler(srv.Client(), srv.URL, HTTPOptions{}).Handle(ctx, m); err != nil || string(out) != "ok" {
		t.Fatalf("a traceparent holding CR LF = %q, %v; want the call made without it", out, err)
	}
}
