package producer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
)

// TestTimingsAndLogs: every request records every producer stage, takes
// the worker's queue wait and handler time from its reply, and logs its
// stages at the level the config asks for.
func TestTimingsAndLogs(t *testing.T) {
	const queued, handled = 3 * time.Millisecond, 7 * time.Millisecond
	tests := []struct {
		name      string
		level     zerolog.Level
		cfg       producer.Config
		wantLevel string
		wantLines int
	}{
		{"debug logs every request", zerolog.DebugLevel, producer.Config{TimingSample: -1, SlowRequest: -1}, "debug", 10},
		{"info samples one in five", zerolog.InfoLevel, producer.Config{TimingSample: 5, SlowRequest: -1}, "info", 2},
		{"slow requests at warn", zerolog.InfoLevel, producer.Config{TimingSample: -1, SlowRequest: time.Nanosecond}, "warn", 10},
		{"default level logs nothing", zerolog.InfoLevel, producer.Config{TimingSample: -1, SlowRequest: -1}, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, c := redistest.Mini(t)
			var logs bytes.Buffer
			cfg := tt.cfg
			cfg.WaitForResponders = true // answered by hand, no worker announces itself
			p, err := producer.New(c, cfg, producer.WithLogger(zerolog.New(&logs).Level(tt.level)))
			if err != nil {
				t.Fatal(err)
			}
			stop := replier(t, m, c, "t", func(env *codec.Envelope) *codec.Envelope {
				time.Sleep(handled) // the simulated handler's work, reported below
				return &codec.Envelope{
					Kind: codec.KindReply, ID: env.ID, Sent: time.Now().UnixNano(), Payload: env.Payload,
					QueueWait: int64(queued), Handler: int64(handled),
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for range 10 {
				if _, err := p.Request(ctx, "t", []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			stop()
			if err := p.Close(ctx); err != nil {
				t.Fatal(err)
			}
			s := p.Timings()
			for _, st := range metrics.Stages() {
				want := uint64(10)
				if st == metrics.ReplyWrite || st == metrics.Cache || st == metrics.RetryWait || st >= metrics.FirstChunk {
					want = 0 // a consumer's stage; cached topics only; redeliveries only; streams only
				}
				if got := s.Stage(st).Count; got != want {
					t.Errorf("stage %v: %d observations, want %d", st, got, want)
				}
			}
			for st, want := range map[metrics.Stage]time.Duration{metrics.QueueWait: queued, metrics.Handler: handled} {
				if got := s.Stage(st).Quantile(0.5); math.Abs(float64(got-want)) > 0.05*float64(want) {
					t.Errorf("stage %v p50 = %v, want about %v (from the reply)", st, got, want)
				}
			}
			if e2e, h := s.Stage(metrics.EndToEnd).Quantile(0.5), s.Stage(metrics.Handler).Quantile(0.5); e2e < h {
				t.Errorf("end to end p50 %v below the handler's %v", e2e, h)
			}

			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			if logs.Len() == 0 {
				lines = nil
			}
			if len(lines) != tt.wantLines {
				t.Fatalf("%d log lines, want %d:\n%s", len(lines), tt.wantLines, logs.String())
			}
			for _, l := range lines {
				var ev map[string]any
				if err := json.Unmarshal([]byte(l), &ev); err != nil {
					t.Fatalf("log line %q: %v", l, err)
				}
				if ev["level"] != tt.wantLevel || ev["message"] != "request timing" || ev["outcome"] != "ok" || ev["topic"] != "t" {
					t.Fatalf("log line %q: wrong level, message, outcome or topic", l)
				}
				for _, f := range []string{"admission_us", "encode_us", "redis_write_us", "queue_wait_us", "handler_us", "reply_transit_us", "decode_us", "end_to_end_us"} {
					if _, ok := ev[f].(float64); !ok {
						t.Fatalf("log line %q lacks %s", l, f)
					}
				}
				if ev["handler_us"] != 7000.0 || ev["queue_wait_us"] != 3000.0 {
					t.Fatalf("log line %q: handler/queue wait not the worker's", l)
				}
			}
		})
	}
}

// TestTimingsOfEveryVerb: Request, each request of a RequestBatch and a
// Stream go through one write path, so each records the same stages (every
// producer stage of a request but Cache) and logs one timing line (issue
// 25, point 2: RequestBatch recorded none, Stream some).
func TestTimingsOfEveryVerb(t *testing.T) {
	const queued, handled = 3 * time.Millisecond, 7 * time.Millisecond
	requestStages := []metrics.Stage{metrics.Admission, metrics.Encode, metrics.Write, metrics.QueueWait,
		metrics.Handler, metrics.ReplyTransit, metrics.Decode, metrics.EndToEnd}
	for _, tc := range []struct {
		name string
		n    int // requests
		call func(ctx context.Context, p *producer.Producer) error
	}{
		{"Request", 1, func(ctx context.Context, p *producer.Producer) error {
			_, err := p.Request(ctx, "t", []byte("x"))
			return err
		}},
		{"RequestBatch", 3, func(ctx context.Context, p *producer.Producer) error {
			out, err := p.RequestBatch(ctx, "t", [][]byte{[]byte("a"), []byte("b"), []byte("c")})
			for _, r := range out {
				err = errors.Join(err, r.Err)
			}
			return err
		}},
		{"Stream", 1, func(ctx context.Context, p *producer.Producer) error {
			s, err := p.Stream(ctx, "t", []byte("x"))
			if err != nil {
				return err
			}
			for _, err := range s.All() {
				if err != nil {
					return err
				}
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, c := redistest.Mini(t)
			var logs bytes.Buffer
			p, err := producer.New(c, producer.Config{WaitForResponders: true, TimingSample: -1, SlowRequest: -1},
				producer.WithLogger(zerolog.New(&logs).Level(zerolog.DebugLevel)))
			if err != nil {
				t.Fatal(err)
			}
			stop := replier(t, m, c, "t", func(env *codec.Envelope) *codec.Envelope {
				return &codec.Envelope{Kind: codec.KindReply, ID: env.ID, Sent: time.Now().UnixNano(), Payload: env.Payload,
					QueueWait: int64(queued), Handler: int64(handled)}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tc.call(ctx, p); err != nil {
				t.Fatal(err)
			}
			stop()
			if err := p.Close(ctx); err != nil {
				t.Fatal(err)
			}
			s := p.Timings()
			for _, st := range requestStages {
				if got := s.Stage(st).Count; got != uint64(tc.n) {
					t.Errorf("stage %v: %d observations, want %d", st, got, tc.n)
				}
			}
			if got := s.Stage(metrics.Handler).Quantile(0.5); math.Abs(float64(got-handled)) > 0.05*float64(handled) {
				t.Errorf("handler stage %v, want about the worker's %v", got, handled)
			}
			if got := strings.Count(logs.String(), `"message":"request timing"`); got != tc.n {
				t.Errorf("%d timing log lines, want %d:\n%s", got, tc.n, logs.String())
			}
			if st := p.Stats(); st.Requests != uint64(tc.n) || st.Replies != uint64(tc.n) || st.Writes != 1 {
				t.Errorf("Stats = %+v; want %d requests and replies in 1 write", st, tc.n)
			}
		})
	}
}
