package worker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
)

// HTTPOptions shape the requests of an http(s):// handler (bus-worker
// serve --http-*). docs/http-backends.md describes the mapping.
type HTTPOptions struct {
	// ContentType of the POST body; empty: the caller's "content-type"
	// header, else application/octet-stream.
	ContentType string
	// AuthHeader names the header that carries AuthValue (e.g.
	// Authorization: "Bearer …"); nothing is sent when AuthValue is empty.
	AuthHeader, AuthValue string
	// HeaderPrefix is put before the name of every envelope header passed
	// on, except the W3C trace context (traceparent, tracestate, baggage),
	// which passes as itself, and content-type. Empty means
	// DefaultHeaderPrefix.
	HeaderPrefix string
	// MaxResponse caps the response body (a streamed one in total); zero
	// means consumer.DefaultMaxEntrySize.
	MaxResponse int
	// Timeout bounds one HTTP call when it is shorter than the message's
	// deadline; zero: the deadline alone.
	Timeout time.Duration
	// MaxRetryAfter caps the delay a 429 or 503 asks for; zero means
	// DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration
	// ErrorBody passes the first 512 bytes of a failed call's body on to
	// the caller in the remote error's message, credentials redacted (a
	// backend may echo the request's Authorization). False: the status
	// alone.
	ErrorBody bool
	// PauseOn429 makes a 429 with Retry-After pause the topic for the
	// whole fleet for that delay (consumer.PauseTopic), not only retry the
	// one message.
	PauseOn429 bool
}

// CostHeader is the response header through which a backend reports what
// a call cost, in the units of the topic's token budget
// (consumer.Message.ReportCost): a model server's tokens, say.
const CostHeader = "X-Mycelium-Cost"

// Defaults of HTTPOptions.
const (
	DefaultHeaderPrefix  = "X-Mycelium-Header-"
	DefaultMaxRetryAfter = 10 * time.Minute
)

// traceHeaders pass to the backend under their own names.
var traceHeaders = map[string]bool{"traceparent": true, "tracestate": true, "baggage": true}

// NewHTTPTransport returns the transport of http(s):// handlers: dial and
// TLS handshakes bounded (5 s), up to conns idle connections kept per host
// (one per handler slot: no reconnect per request), idle ones closed after
// 90 s, proxies from the environment, HTTP/2 when the server offers it. No
// response-header timeout: a model may think a long while before its first
// byte; the message's deadline bounds every call.
func NewHTTPTransport(conns int) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		MaxIdleConns:          max(conns, 100),
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// httpHandler forwards the payload as a POST body. A 2xx answer is the
// reply; for a caller reading a stream, an event stream (text/event-stream:
// each event's data), NDJSON (each line) or any other body (each piece as
// it arrives) becomes chunks. 429 and 503 with Retry-After ask for a
// retry after that delay (consumer.RetryAfter); other non-2xx statuses are
// remote errors "http_<status>". Cancelling the handler's ctx (the caller
// gave up) aborts the call.
func httpHandler(client *http.Client, target string, o HTTPOptions) consumer.Handler {
	if o.HeaderPrefix == "" {
		o.HeaderPrefix = DefaultHeaderPrefix
	}
	if o.MaxResponse <= 0 {
		o.MaxResponse = consumer.DefaultMaxEntrySize
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = DefaultMaxRetryAfter
	}
	shown := redactURL(target) // what errors say: never its password
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		if o.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, o.Timeout)
			defer cancel()
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(m.Payload))
		if err != nil {
			return nil, err
		}
		setHeaders(req.Header, m, &o)
		// The handler's ctx carries the message's span (its process span
		// when the worker traces): the backend's request continues it, by
		// the process's propagators (W3C when bus-worker traces; without
		// tracing the caller's headers above already carry it).
		if trace.SpanContextFromContext(ctx).IsValid() {
			otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(req.Header))
		}
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, &bus.RemoteError{Code: bus.CodeHTTPUnreachable, Message: "POST " + shown + ": " + redactSecrets(unwrapURLError(err).Error())}
		}
		defer resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return nil, statusError(resp, o.MaxRetryAfter, o.ErrorBody, o.PauseOn429)
		}
		if v := resp.Header.Get(CostHeader); v != "" {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n >= 0 {
				m.ReportCost(n)
			}
		}
		if m.Streaming() {
			return nil, streamBody(ctx, m, resp, o.MaxResponse)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, int64(o.MaxResponse)+1))
		if err != nil {
			return nil, readError(ctx, shown, err)
		}
		if len(body) > o.MaxResponse {
			return nil, tooLarge(o.MaxResponse)
		}
		return body, nil
	})
}

// setHeaders sets the request headers of m's call (see HTTPOptions).
func setHeaders(h http.Header, m *consumer.Message, o *HTTPOptions) {
	ct := o.ContentType
	for k, v := range m.Headers {
		lk := strings.ToLower(k)
		switch {
		case lk == "content-type":
			if ct == "" {
				ct = v
			}
		case traceHeaders[lk]:
			if ValidHeaderValue(v) { // else net/http refuses the whole call
				h.Set(lk, v)
			}
		case ValidHeaderName(k) && ValidHeaderValue(v):
			h.Set(o.HeaderPrefix+k, v)
		}
	}
	if ct == "" || !ValidHeaderValue(ct) {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	if m.Streaming() {
		h.Set("Accept", "text/event-stream, application/x-ndjson, */*")
	}
	h.Set("X-Mycelium-Id", m.ID)
	h.Set("X-Mycelium-Topic", m.Topic)
	h.Set("X-Mycelium-Attempt", strconv.Itoa(m.Attempt))
	if o.AuthValue != "" {
		h.Set(o.AuthHeader, o.AuthValue)
	}
}

// ValidHeaderName reports whether s is an HTTP token (RFC 9110); envelope
// headers that are not are not passed on.
func ValidHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || c <= ' ' || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 || c == 0x7f {
			return false
		}
	}
	return true
}

// ValidHeaderValue reports whether s holds no control character but tab.
func ValidHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// statusError turns a non-2xx answer into the handler's error: a retry
// after Retry-After for 429 and 503 that carry one, else a remote error
// http_<status> (with the start of the body, credentials redacted, when
// withBody). A 4xx other than 408 and 429 is the request's fault, not the
// backend's (consumer.CallerFault: the breaker does not count it).
func statusError(resp *http.Response, maxDelay time.Duration, withBody, pauseOn429 bool) error {
	re := &bus.RemoteError{Code: bus.CodeHTTPStatus(resp.StatusCode), Message: resp.Status}
	if withBody {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if msg := strings.TrimSpace(string(body)); msg != "" {
			re.Message += ": " + redactSecrets(msg)
		}
	}
	switch code := resp.StatusCode; {
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable:
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			if pauseOn429 && code == http.StatusTooManyRequests {
				return consumer.PauseTopic(re, min(d, maxDelay))
			}
			return consumer.RetryAfter(re, min(d, maxDelay))
		}
	case code >= 400 && code < 500 && code != http.StatusRequestTimeout:
		return consumer.CallerFault(re)
	}
	return re
}

// secretPatterns match credentials a backend's error body or a transport
// error may echo: authorization values, bearer tokens, API keys (OpenAI's
// sk-…, and key/token/secret/password parameters), and a URL's password.
var secretPatterns = []*regexp.Regexp{
	regexp.MustCompile(`(?i)(authorization|proxy-authorization)(["']?\s*[:=]\s*["']?)[^"',;\s]+(\s+[^"',;\s]+)?`),
	regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+`),
	regexp.MustCompile(`\bsk-[A-Za-z0-9_-]{6,}`),
	regexp.MustCompile(`(?i)\b([a-z_-]*(?:api[_-]?key|token|secret|password|passwd))(["']?\s*[:=]\s*["']?)[^"',;&\s]+`),
	regexp.MustCompile(`(://[^/:@\s]*:)[^@/\s]+@`),
}

// redactSecrets replaces what looks like a credential in s with "[redacted]".
func redactSecrets(s string) string {
	for i, re := range secretPatterns {
		switch i {
		case 0, 3:
			s = re.ReplaceAllString(s, "${1}${2}[redacted]")
		case 4:
			s = re.ReplaceAllString(s, "${1}[redacted]@")
		default:
			s = re.ReplaceAllString(s, "[redacted]")
		}
	}
	return s
}

// redactURL is target with its password replaced, for messages and logs.
func redactURL(target string) string {
	if u, err := url.Parse(target); err == nil {
		return u.Redacted()
	}
	return redactSecrets(target)
}

// parseRetryAfter reads a Retry-After value: delay-seconds or an HTTP date
// (RFC 9110 10.2.3). A date in the past means now.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return time.Duration(min(n, int64(24*time.Hour/time.Second))) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// streamBody sends the response body as chunks: event data for an event
// stream, lines for NDJSON, else each piece as it arrives. At most max
// bytes in total.
func streamBody(ctx context.Context, m *consumer.Message, resp *http.Response, max int) error {
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	total := 0
	send := func(b []byte) error {
		if total += len(b); total > max {
			return tooLarge(max)
		}
		return m.Send(ctx, b)
	}
	switch mt {
	case "text/event-stream":
		return readEvents(resp.Body, max, send)
	case "application/x-ndjson", "application/jsonl", "application/json-seq":
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, min(64<<10, max)), max)
		for sc.Scan() {
			if line := bytes.TrimRight(sc.Bytes(), "\r"); len(line) > 0 {
				if err := send(bytes.Clone(line)); err != nil {
					return err
				}
			}
		}
		return scanError(ctx, sc.Err(), max)
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if err := send(bytes.Clone(buf[:n])); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return readError(ctx, resp.Request.URL.Redacted(), err)
		}
	}
}

// readEvents parses a text/event-stream body (WHATWG HTML, "Server-sent
// events"): lines "data: …" of one event (up to a blank line) are joined
// with newlines and handed to send; comments, event names, ids and retry
// fields are dropped. An event without data sends nothing.
func readEvents(r io.Reader, max int, send func([]byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, min(64<<10, max)), max)
	var data []byte
	has := false
	flush := func() error {
		if !has {
			return nil
		}
		out := data
		data, has = nil, false
		return send(out)
	}
	for sc.Scan() {
		line := bytes.TrimSuffix(sc.Bytes(), []byte("\r"))
		if len(line) == 0 {
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		field, value, found := bytes.Cut(line, []byte(":"))
		if !found {
			value = nil
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		if string(field) != "data" {
			continue // comment (empty field), event, id, retry
		}
		if has {
			data = append(data, '\n')
		}
		data = append(data, value...)
		has = true
	}
	if err := sc.Err(); err != nil {
		return scanError(context.Background(), err, max)
	}
	return flush() // an event cut short by the end of the body
}

func scanError(ctx context.Context, err error, max int) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, bufio.ErrTooLong):
		return tooLarge(max)
	case ctx.Err() != nil:
		return context.Cause(ctx)
	}
	return &bus.RemoteError{Code: bus.CodeHTTPRead, Message: "reading the response: " + err.Error()}
}

func readError(ctx context.Context, target string, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return &bus.RemoteError{Code: bus.CodeHTTPRead, Message: "POST " + target + ": reading the response: " + err.Error()}
}

func tooLarge(max int) error {
	return fmt.Errorf("%w", &bus.RemoteError{Code: bus.CodeHTTPResponseTooLarge, Message: fmt.Sprintf("response larger than %d bytes", max)})
}

// unwrapURLError drops the *url.Error wrapper (it repeats method and URL).
func unwrapURLError(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}
