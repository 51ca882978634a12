package worker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/simwork"
)

// ParseHandler turns a handler spec (bus-worker's --handler) into a
// consumer.Handler: echo | sleep:<dur>[,<jitter>] | http(s)://URL. HTTP
// backends are called through client and may answer at most maxBody bytes.
// A bad spec is an error wrapping ErrSetup.
func ParseHandler(spec string, maxBody int, client *http.Client) (consumer.Handler, error) {
	switch {
	case spec == "echo":
		return consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) { return m.Payload, nil }), nil
	case strings.HasPrefix(spec, "sleep:"):
		w, err := simwork.Parse(strings.TrimPrefix(spec, "sleep:"))
		if err != nil {
			return nil, fmt.Errorf("%w: --handler %q: %w", ErrSetup, spec, err)
		}
		return sleepHandler(w), nil
	case strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://"):
		u, err := url.Parse(spec)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("%w: --handler %q: not a valid http(s) URL", ErrSetup, spec)
		}
		return httpHandler(client, u.String(), maxBody), nil
	}
	return nil, fmt.Errorf("%w: --handler %q: want echo, sleep:<dur>[,<jitter>] or an http(s):// URL", ErrSetup, spec)
}

// sleepHandler simulates reasoning work: it waits w (honouring
// cancellation), then echoes the payload.
func sleepHandler(w simwork.Sleep) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		if err := w.Wait(ctx); err != nil {
			return nil, err
		}
		return m.Payload, nil
	})
}

// httpHandler forwards the payload as a POST body and replies with the
// response body; a non-2xx status becomes a remote error "http_<status>".
func httpHandler(client *http.Client, target string, maxBody int) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(m.Payload))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("X-Mycelium-Id", m.ID)
		req.Header.Set("X-Mycelium-Topic", m.Topic)
		req.Header.Set("X-Mycelium-Attempt", strconv.Itoa(m.Attempt))
		for k, v := range m.Headers {
			req.Header.Set("X-Mycelium-Header-"+k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("POST %s: %w", target, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, int64(maxBody)+1))
		if err != nil {
			return nil, fmt.Errorf("POST %s: reading the response: %w", target, err)
		}
		if len(body) > maxBody {
			return nil, &bus.RemoteError{Code: "http_response_too_large", Message: fmt.Sprintf("response larger than %d bytes", maxBody)}
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			msg := strings.TrimSpace(string(body))
			if len(msg) > 512 {
				msg = msg[:512]
			}
			return nil, &bus.RemoteError{Code: "http_" + strconv.Itoa(resp.StatusCode), Message: resp.Status + ": " + msg}
		}
		return body, nil
	})
}
