package consumer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
)

// TestTimings: the consumer records queue wait, handler and reply write,
// and reports queue wait and handler time on each reply.
func TestTimings(t *testing.T) {
	const work = 5 * time.Millisecond
	m, c := redistest.Mini(t)
	if _, err := m.XAdd("myc:{r.p}", "*", []string{"m", "x"}); err != nil {
		t.Fatal(err)
	}
	// Entries wait in the stream before the consumer starts: their queue
	// wait is at least this long.
	const waited = 20 * time.Millisecond
	future := time.Now().Add(time.Minute).UnixNano()
	for i := range 4 {
		add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: string(rune('a' + i)), ReplyTo: "myc:{r.p}",
			Deadline: future, Sent: time.Now().UnixNano()})
	}
	added := time.Now()
	for time.Since(added) < waited {
		time.Sleep(waited - time.Since(added)) // let the entries age in the stream
	}
	co := start(t, c, consumer.Config{Topic: "t"}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
		time.Sleep(work) // the simulated handler's work
		return []byte("ok"), nil
	}))
	eventually(t, "replies written", func() bool { return co.Timings().Stage(metrics.ReplyWrite).Count == 4 })
	s := co.Timings()
	if n := s.Stage(metrics.QueueWait).Count; n != 4 {
		t.Fatalf("queue wait observations %d, want 4", n)
	}
	if q := s.Stage(metrics.QueueWait).Quantile(0.01); q < waited*95/100 {
		t.Fatalf("queue wait p1 %v, want at least %v", q, waited)
	}
	if h := s.Stage(metrics.Handler).Quantile(0.5); h < work || h > 20*work {
		t.Fatalf("handler p50 %v, want about %v", h, work)
	}
	replies, err := redisx.Read(context.Background(), c.Redis(), "myc:{r.p}", "0-0", 10, time.Millisecond)
	if err != nil || len(replies) != 5 {
		t.Fatalf("replies %d, %v", len(replies), err)
	}
	for _, e := range replies[1:] {
		var env codec.Envelope
		if err := codec.DecodeEnvelope(e.Data, &env); err != nil {
			t.Fatal(err)
		}
		if time.Duration(env.Handler) < work || time.Duration(env.QueueWait) < waited*95/100 || env.Sent == 0 {
			t.Fatalf("reply %s reports handler %v, queue wait %v", env.ID, time.Duration(env.Handler), time.Duration(env.QueueWait))
		}
	}
}

// TestTimingLogs: each handled entry logs its stages once its reply or
// acknowledgement is written, at the level the config asks for.
func TestTimingLogs(t *testing.T) {
	tests := []struct {
		name      string
		level     zerolog.Level
		cfg       consumer.Config
		wantLevel string
		wantLines int
	}{
		{"debug logs every entry", zerolog.DebugLevel, consumer.Config{Timing: consumer.TimingConfig{Sample: -1, SlowEntry: -1}}, "debug", 6},
		{"info samples one in three", zerolog.InfoLevel, consumer.Config{Timing: consumer.TimingConfig{Sample: 3, SlowEntry: -1}}, "info", 2},
		{"slow entries at warn", zerolog.WarnLevel, consumer.Config{Timing: consumer.TimingConfig{Sample: -1, SlowEntry: time.Nanosecond}}, "warn", 6},
		{"default level logs nothing", zerolog.InfoLevel, consumer.Config{Timing: consumer.TimingConfig{Sample: -1, SlowEntry: -1}}, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, c := redistest.Mini(t)
			if _, err := m.XAdd("myc:{r.p}", "*", []string{"m", "x"}); err != nil {
				t.Fatal(err)
			}
			future := time.Now().Add(time.Minute).UnixNano()
			for i := range 3 {
				add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindRequest, ID: fmt.Sprint(i), ReplyTo: "myc:{r.p}", Deadline: future, Payload: []byte("q")})
				add(t, c, "myc:{t}", &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("e")})
			}
			var logs redistest.SyncBuffer
			cfg := tt.cfg
			cfg.Topic = "t"
			co, err := consumer.New(c, cfg, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
				return []byte("ok"), nil
			}), consumer.WithLogger(zerolog.New(&logs).Level(tt.level)))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- co.Run(ctx) }()
			eventually(t, "all six acknowledged", func() bool { return co.Stats().Acked == 6 })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			var lines []map[string]any
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var ev map[string]any
				if l == "" || json.Unmarshal([]byte(l), &ev) != nil || ev["message"] != "entry timing" {
					continue
				}
				lines = append(lines, ev)
			}
			if len(lines) != tt.wantLines {
				t.Fatalf("%d timing lines, want %d:\n%s", len(lines), tt.wantLines, logs.String())
			}
			requests := 0
			for _, ev := range lines {
				if ev["level"] != tt.wantLevel || ev["topic"] != "t" || ev["outcome"] != "ok" || ev["entry"] == "" {
					t.Fatalf("timing line %v", ev)
				}
				for _, f := range []string{"queue_wait_us", "handler_us", "reply_write_us", "total_us"} {
					if _, ok := ev[f].(float64); !ok {
						t.Fatalf("timing line %v lacks %s", ev, f)
					}
				}
				if ev["request"] == true {
					requests++
				}
			}
			if tt.wantLines == 6 && requests != 3 {
				t.Fatalf("%d request lines, want 3", requests)
			}
		})
	}
}
