package test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// TestBusWorkerStats: `bus-worker stats` reports length, ages, groups,
// consumers with their pending entries, the oldest pending age, lag, dead
// letters and reply streams, as JSON and as a table.
func TestBusWorkerStats(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := newProducer(t, c, producer.Config{})
	for range 5 {
		if _, err := p.Publish(ctx, "jobs", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	key := bus.Keys{}.Topic("jobs")
	if err := redisx.CreateGroup(ctx, c.Redis(), key, "g1", "0"); err != nil {
		t.Fatal(err)
	}
	// w1 takes three entries and never acknowledges them; two stay undelivered.
	if got, err := redisx.ReadGroup(ctx, c.Redis(), key, "g1", "w1", ">", 3, 0); err != nil || len(got) != 3 {
		t.Fatalf("ReadGroup = %d, %v", len(got), err)
	}
	if err := c.Redis().Do(ctx, c.Redis().B().Xadd().Key(bus.Keys{}.DeadLetter("jobs")).Id("*").FieldValue().FieldValue("reason", "malformed").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// w1 announced itself 3 s ago (a live worker beats every few seconds
	// however idle: IDLE alone made a live idle worker look dead); w2 is
	// in the group and never announced itself.
	if err := redisx.Beat(ctx, c.Redis(), bus.Keys{}.Workers("jobs"), "g1 w1", time.Now().Add(-3*time.Second), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := c.Redis().Do(ctx, c.Redis().B().XgroupCreateconsumer().Key(key).Group("g1").Consumer("w2").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// A request creates the producer's reply stream; nobody answers it.
	rctx, rcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, _ = p.Request(rctx, "other", []byte("?"), producer.WaitForResponders())
	rcancel()

	out, err := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "stats", "--redis", srv.URL, "--json").Output()
	if err != nil {
		t.Fatalf("stats --json: %v", err)
	}
	var s struct {
		Topics []struct {
			Topic       string  `json:"topic"`
			Length      int64   `json:"length"`
			FirstAge    float64 `json:"first_entry_age_seconds"`
			DeadLetters int64   `json:"dead_letters"`
			Groups      []struct {
				Group            string  `json:"group"`
				Pending          int64   `json:"pending"`
				OldestPendingAge float64 `json:"oldest_pending_age_seconds"`
				Lag              int64   `json:"lag"`
				Consumers        []struct {
					Name     string  `json:"name"`
					Idle     float64 `json:"idle_seconds"`
					Pending  int64   `json:"pending"`
					LastBeat float64 `json:"last_beat_seconds"`
				} `json:"consumers"`
			} `json:"groups"`
		} `json:"topics"`
		ReplyStreams int `json:"reply_streams"`
	}
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("stats --json printed %q: %v", out, err)
	}
	if len(s.Topics) != 2 || s.Topics[0].Topic != "jobs" || s.Topics[1].Topic != "other" || s.ReplyStreams != 1 {
		t.Fatalf("stats = %s", out)
	}
	j := s.Topics[0]
	if j.Length != 5 || j.DeadLetters != 1 || j.FirstAge <= 0 || len(j.Groups) != 1 {
		t.Fatalf("jobs = %+v", j)
	}
	g := j.Groups[0]
	if g.Group != "g1" || g.Pending != 3 || g.Lag != 2 || g.OldestPendingAge <= 0 ||
		len(g.Consumers) != 2 || g.Consumers[0].Name != "w1" || g.Consumers[0].Pending != 3 {
		t.Fatalf("group = %+v", g)
	}
	if w1, w2 := g.Consumers[0].LastBeat, g.Consumers[1].LastBeat; w1 < 2.5 || w1 > 30 || w2 != -1 {
		t.Fatalf("last beats: w1 %v s ago (want about 3), w2 %v (want -1: never)", w1, w2)
	}

	table, err := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "stats", "--redis", srv.URL).Output()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	for _, want := range []string{"TOPIC", "OLDEST PENDING", "DELAYED", "LAG (UNREAD)", "LAST BEAT", "s ago", "none (gone?)", "jobs", "g1", "w1", "reply streams: 1"} {
		if !strings.Contains(string(table), want) {
			t.Fatalf("stats table lacks %q:\n%s", want, table)
		}
	}

	// --watch prints one JSON line per interval until interrupted.
	watch := exec.CommandContext(ctx, buildCmd(t, "bus-worker"), "stats", "--redis", srv.URL, "--json", "--watch", "50ms")
	stdout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for i := range 3 {
		if !sc.Scan() || !json.Valid(sc.Bytes()) {
			t.Fatalf("--watch line %d: %q, %v", i, sc.Text(), sc.Err())
		}
	}
	_ = watch.Process.Signal(os.Interrupt)
	if err := watch.Wait(); err != nil {
		t.Fatalf("stats --watch exit after SIGINT = %v", err)
	}
}
