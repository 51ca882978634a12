package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

func TestDeadLetterTooling(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	var healthy atomic.Bool
	var mu sync.Mutex
	replayed := map[string]consumer.Message{}
	co := runConsumer(t, c, consumer.Config{Topic: "jobs"}, consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		if !healthy.Load() {
			return nil, fmt.Errorf("bad input %s: %w", m.Payload, bus.ErrSkipRetry)
		}
		mu.Lock()
		replayed[string(m.Payload)] = *m
		mu.Unlock()
		return nil, nil
	}))
	p := newProducer(t, c, producer.Config{})
	ctx := context.Background()
	for i := range 3 {
		if _, err := p.Publish(ctx, "jobs", []byte(fmt.Sprintf("job-%d", i)), producer.WithHeaders(map[string]string{"tenant": "a"})); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Redis().Do(ctx, c.Redis().B().Xadd().Key("myc:{jobs}").Id("*").FieldValue().FieldValue("junk", "1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "4 dead letters", func() bool { return co.Stats().DeadLettered == 4 })

	worker := buildCmd(t, "bus-worker")
	run := func(args ...string) (string, error) {
		out, err := exec.Command(worker, append(append([]string{"dlq"}, args...), "--redis", srv.URL, "--topic", "jobs")...).CombinedOutput()
		return string(out), err
	}
	out, err := run("list", "--json")
	if err != nil {
		t.Fatalf("dlq list --json: %v\n%s", err, out)
	}
	// The envelope in the wire format's names, its payload as text
	// (issue 31, point 11: Go field names and base64 before).
	type letter struct {
		inspect.DeadLetter
		Envelope *struct {
			Kind    string `json:"kind"`
			Payload string `json:"payload"`
		} `json:"envelope"`
	}
	if strings.Contains(out, `"Payload"`) || strings.Contains(out, `"ReplyTo"`) {
		t.Fatalf("dlq list --json shows Go field names:\n%s", out)
	}
	var letters []letter
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var d letter
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("dlq list --json line %q: %v", line, err)
		}
		letters = append(letters, d)
	}
	// Dead letters are in completion order, not publish order: index them.
	byPayload := map[string]letter{}
	var malformed letter
	for _, d := range letters {
		if d.Envelope == nil {
			malformed = d
			continue
		}
		byPayload[d.Envelope.Payload] = d
	}
	job1 := byPayload["job-1"]
	if len(letters) != 4 || len(byPayload) != 3 || job1.Reason != "handler_error" || !strings.Contains(job1.Error, "bad input job-1") ||
		malformed.Reason != "malformed" || malformed.Fields["junk"] != "1" {
		t.Fatalf("dlq list --json = %+v", letters)
	}
	if out, err := run("list"); err != nil || !strings.Contains(out, "REASON") || strings.Count(out, "\n") != 5 {
		t.Fatalf("dlq list = %v\n%s", err, out)
	}
	// Without --topic: every topic's, with a TOPIC column; replay and purge
	// refuse to guess.
	every, err := exec.Command(worker, "dlq", "list", "--redis", srv.URL).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(every), "TOPIC") || strings.Count(string(every), "\njobs ") != 4 {
		t.Fatalf("dlq list without --topic = %v\n%s", err, every)
	}
	for _, sub := range [][]string{{"replay", "--all"}, {"purge", "--all"}} {
		out, err := exec.Command(worker, append([]string{"dlq"}, append(sub, "--redis", srv.URL)...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "--topic") {
			t.Fatalf("dlq %v without --topic = %v %q, want exit 2 asking for --topic", sub, err, out)
		}
	}

	healthy.Store(true)
	if out, err := run("replay", "--id", job1.ID); err != nil || !strings.Contains(out, "replayed 1") {
		t.Fatalf("dlq replay --id: %v\n%s", err, out)
	}
	waitFor(t, 10*time.Second, "the replayed job", func() bool { mu.Lock(); defer mu.Unlock(); return len(replayed) == 1 })
	mu.Lock()
	m := replayed["job-1"]
	mu.Unlock()
	if m.Headers[inspect.ReplayedFromHeader] != job1.ID || m.Headers["tenant"] != "a" || m.Attempt != 1 {
		t.Fatalf("replayed message = %+v", m)
	}
	// --all replays the good ones and refuses the malformed one (exit 1).
	out, err = run("replay", "--all")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "replayed 2") || !strings.Contains(out, "no decodable envelope") {
		t.Fatalf("dlq replay --all = %v\n%s", err, out)
	}
	waitFor(t, 10*time.Second, "all replayed jobs", func() bool { mu.Lock(); defer mu.Unlock(); return len(replayed) == 3 })

	if out, err := run("purge", "--older-than", "1h"); err != nil || !strings.Contains(out, "deleted 0") {
		t.Fatalf("dlq purge --older-than 1h = %v\n%s", err, out)
	}
	if out, err := run("purge", "--all"); err != nil || !strings.Contains(out, "deleted 1") {
		t.Fatalf("dlq purge --all = %v\n%s", err, out)
	}
	if out, err := run("purge"); err == nil || !strings.Contains(out, "exactly one") {
		t.Fatalf("dlq purge without a scope = %v\n%s", err, out)
	}
}

// TestReplayKeepsTheDeadLetterWhenItsWriteFails: a replay whose XADD Redis
// refuses (here the topic key holds a string: WRONGTYPE) must report the
// error and leave the dead letter where it is.
func TestReplayKeepsTheDeadLetterWhenItsWriteFails(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	t.Run("dead-letter one job", func(t *testing.T) {
		co := runConsumer(t, c, consumer.Config{Topic: "jobs"}, consumer.HandlerFunc(func(context.Context, *consumer.Message) ([]byte, error) {
			return nil, fmt.Errorf("refused: %w", bus.ErrSkipRetry)
		}))
		if _, err := newProducer(t, c, producer.Config{}).Publish(ctx, "jobs", []byte("job")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the dead letter", func() bool { return co.Stats().DeadLettered == 1 })
	})
	rc := c.Redis()
	for _, cmd := range []rueidis.Completed{rc.B().Del().Key("myc:{jobs}").Build(), rc.B().Set().Key("myc:{jobs}").Value("x").Build()} {
		if err := rc.Do(ctx, cmd).Error(); err != nil {
			t.Fatal(err)
		}
	}
	n, err := inspect.New(c).ReplayDeadLetters(ctx, "jobs")
	if n != 0 || err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("ReplayDeadLetters onto a string key = %d, %v; want 0 and the WRONGTYPE error", n, err)
	}
	if l, err := c.Redis().Do(ctx, c.Redis().B().Xlen().Key("myc:{jobs}:dlq").Build()).AsInt64(); err != nil || l != 1 {
		t.Errorf("dead letters after the failed replay = %d, %v; want 1 (kept)", l, err)
	}
}
