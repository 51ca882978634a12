package pubsub

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// freshSub is the baseline's subscription on its own, newly dialled
// connection: what a "new subscription" is in the clients the old design
// used (go-redis's Subscribe and redis-py's pubsub() each open a connection
// for it). It speaks just enough RESP2 for AUTH, SELECT and SUBSCRIBE.
type freshSub struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialSub connects to the Redis of opt and subscribes to channel, returning
// once Redis confirmed the subscription.
func dialSub(ctx context.Context, opt *rueidis.ClientOption, channel string) (*freshSub, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", opt.InitAddress[0])
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		// Close with RST: tens of thousands of short connections must not
		// exhaust ephemeral ports in TIME_WAIT during a benchmark.
		_ = tc.SetLinger(0)
	}
	if opt.TLSConfig != nil {
		conn = tls.Client(conn, opt.TLSConfig)
	}
	s := &freshSub{conn: conn, r: bufio.NewReaderSize(conn, 4096)}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	fail := func(err error) (*freshSub, error) {
		conn.Close()
		return nil, err
	}
	if opt.Password != "" {
		args := []string{"AUTH", opt.Password}
		if opt.Username != "" {
			args = []string{"AUTH", opt.Username, opt.Password}
		}
		if err := s.call(args...); err != nil {
			return fail(err)
		}
	}
	if opt.SelectDB != 0 {
		if err := s.call("SELECT", strconv.Itoa(opt.SelectDB)); err != nil {
			return fail(err)
		}
	}
	if err := s.send("SUBSCRIBE", channel); err != nil {
		return fail(err)
	}
	v, err := s.read()
	if err != nil {
		return fail(err)
	}
	if a, ok := v.([]any); !ok || len(a) != 3 || a[0] != "subscribe" {
		return fail(fmt.Errorf("unexpected SUBSCRIBE reply %v", v))
	}
	return s, nil
}

// next returns the payload of the next message published on the channel.
func (s *freshSub) next(ctx context.Context) (string, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = s.conn.SetDeadline(dl)
	}
	for {
		v, err := s.read()
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", err
		}
		if a, ok := v.([]any); ok && len(a) == 3 && a[0] == "message" {
			msg, _ := a[2].(string)
			return msg, nil
		}
	}
}

func (s *freshSub) close() { _ = s.conn.Close() }

func (s *freshSub) call(args ...string) error {
	if err := s.send(args...); err != nil {
		return err
	}
	v, err := s.read()
	if err != nil {
		return err
	}
	if e, ok := v.(error); ok {
		return e
	}
	return nil
}

func (s *freshSub) send(args ...string) error {
	b := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, "\r\n"...)
		b = append(b, a...)
		b = append(b, "\r\n"...)
	}
	_, err := s.conn.Write(b)
	return err
}

// Bounds on what read accepts, so bytes that are not RESP cannot make it
// allocate without limit: Redis's own proto-max-bulk-len default, and far
// more elements and nesting than a pub/sub message has.
const (
	maxBulk  = 512 << 20
	maxArray = 1 << 16
	maxDepth = 8
)

// read reads one RESP2 value: string, int64, error (a Redis error reply,
// returned as the value), []any, or nil.
func (s *freshSub) read() (any, error) { return s.readDepth(0) }

func (s *freshSub) readDepth(depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("RESP nested too deeply")
	}
	line, err := s.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, errors.New("malformed RESP line")
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return errors.New(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		switch {
		case err != nil:
			return nil, err
		case n < 0:
			return nil, nil // null bulk string
		case n > maxBulk:
			return nil, fmt.Errorf("RESP bulk string of %d bytes", n)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(s.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		switch {
		case err != nil:
			return nil, err
		case n < 0:
			return nil, nil // null array
		case n > maxArray:
			return nil, fmt.Errorf("RESP array of %d elements", n)
		}
		out := make([]any, 0, min(n, 64))
		for range n {
			v, err := s.readDepth(depth + 1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown RESP type %q", line[0])
}
