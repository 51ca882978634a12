package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/test/redistest"
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
	replies, err := bus.Read(context.Background(), c, "myc:{r.p}", "0-0", 10, time.Millisecond)
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
