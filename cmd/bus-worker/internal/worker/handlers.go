package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/egos/mycelium/cmd/internal/simwork"
	"github.com/egos/mycelium/consumer"
)

// ParseHandler turns a handler spec (bus-worker's --handler) into a
// consumer.Handler: echo | sleep:<dur>[,<jitter>] |
// stream:<chunks>,<interval> | http(s)://URL. HTTP backends are called
// through client, shaped by o. A bad spec is an error wrapping ErrSetup.
func ParseHandler(spec string, o HTTPOptions, client *http.Client) (consumer.Handler, error) {
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
			return nil, fmt.Errorf("%w: --handler %q: not a valid http(s) URL", ErrSetup, RedactSpec(spec))
		}
		return httpHandler(client, u.String(), o), nil
	case strings.HasPrefix(spec, "stream:"):
		n, every, err := parseStream(strings.TrimPrefix(spec, "stream:"))
		if err != nil {
			return nil, fmt.Errorf("%w: --handler %q: %w", ErrSetup, spec, err)
		}
		return streamHandler(n, every), nil
	}
	return nil, fmt.Errorf("%w: --handler %q: want echo, sleep:<dur>[,<jitter>], stream:<chunks>,<interval> or an http(s):// URL", ErrSetup, RedactSpec(spec))
}

// RedactSpec is a handler spec as logs and errors show it: an http(s) URL's
// password replaced.
func RedactSpec(spec string) string {
	if strings.HasPrefix(spec, "http://") || strings.HasPrefix(spec, "https://") {
		return redactURL(spec)
	}
	return spec
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

// parseStream reads "<chunks>,<interval>" (e.g. 200,20ms: a fake model at
// 50 tokens per second).
func parseStream(s string) (int, time.Duration, error) {
	ns, ds, ok := strings.Cut(s, ",")
	n, err := strconv.Atoi(ns)
	if !ok || err != nil || n < 1 || n > 1_000_000 {
		return 0, 0, errors.New("want stream:<chunks>,<interval> with 1 to 1000000 chunks, e.g. stream:200,20ms")
	}
	d, err := time.ParseDuration(ds)
	if err != nil || d < 0 {
		return 0, 0, errors.New("want a non-negative interval, e.g. stream:200,20ms")
	}
	return n, d, nil
}

// streamHandler plays a model that streams: n chunks ("tok<i> "), one every
// interval (the first after one interval), honouring cancellation; a caller
// that reads no stream gets them all in one reply.
func streamHandler(n int, every time.Duration) consumer.Handler {
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		var whole []byte
		var t *time.Timer
		if every > 0 {
			t = time.NewTimer(every)
			defer t.Stop()
		}
		for i := range n {
			if t != nil {
				select {
				case <-t.C:
					t.Reset(every)
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				}
			}
			tok := []byte("tok" + strconv.Itoa(i) + " ")
			if !m.Streaming() {
				whole = append(whole, tok...)
				continue
			}
			if err := m.Send(ctx, tok); err != nil {
				return nil, err
			}
		}
		return whole, nil
	})
}
