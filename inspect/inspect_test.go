package inspect_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOverviewAndPending(t *testing.T) {
	m, c := redistest.Mini(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	insp := inspect.New(c)
	if o, err := insp.Overview(ctx); err != nil || len(o.Topics) != 0 || len(o.ReplyStreams) != 0 {
		t.Fatalf("Overview(empty) = %+v, %v", o, err)
	}
	env := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("x")})
	for range 3 {
		if _, err := m.XAdd("myc:{jobs}", "*", []string{"m", string(env)}); err != nil {
			t.Fatal(err)
		}
	}
	rc := c.Redis()
	if err := rc.Do(ctx, rc.B().XgroupCreate().Key("myc:{jobs}").Group("g1").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(ctx, rc.B().Xreadgroup().Group("g1", "w1").Count(2).Streams().Key("myc:{jobs}").Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	m.XAdd("myc:{gone}:dlq", "*", []string{"reason", "malformed"}) // dead letters of a topic whose stream is gone
	m.XAdd("myc:{r.p1}", "*", []string{"m", "x"})                  // a reply stream
	m.XAdd("other:{jobs}", "*", []string{"m", "x"})                // another prefix
	m.Set("myc:{plain}", "not a stream")                           // not a stream: ignored
	m.SetTTL("myc:{r.p1}", time.Minute)

	names, err := insp.Topics(ctx)
	if err != nil || len(names) != 2 || names[0] != "gone" || names[1] != "jobs" {
		t.Fatalf("Topics = %v, %v; want [gone jobs]", names, err)
	}
	o, err := insp.Overview(ctx)
	if err != nil || len(o.Topics) != 2 || len(o.ReplyStreams) != 1 {
		t.Fatalf("Overview = %+v, %v", o, err)
	}
	if r := o.ReplyStreams[0]; r.ProducerID != "p1" || r.Key != "myc:{r.p1}" || r.Length != 1 || r.TTL <= 0 || r.TTL > time.Minute {
		t.Errorf("reply stream = %+v", r)
	}
	if g := o.Topics[0]; g.Name != "gone" || g.Length != 0 || g.DeadLetters != 1 || len(g.Groups) != 0 {
		t.Errorf("topic gone = %+v", g)
	}
	j := o.Topics[1]
	if j.Name != "jobs" || j.Length != 3 || j.FirstID == "" || j.LastID == "" || j.DeadLetters != 0 || len(j.Groups) != 1 {
		t.Fatalf("topic jobs = %+v", j)
	}
	if g := j.Groups[0]; g.Name != "g1" || g.Pending != 2 || g.OldestPendingID != j.FirstID || len(g.Consumers) != 1 ||
		g.Consumers[0].Name != "w1" || g.Consumers[0].Pending != 2 {
		t.Errorf("group = %+v", g)
	}

	p, err := insp.Pending(ctx, "jobs", "g1", "", 10)
	if err != nil || len(p) != 2 || p[0].Consumer != "w1" || p[0].Deliveries != 1 || p[0].ID != j.FirstID {
		t.Errorf("Pending = %+v, %v", p, err)
	}
	if _, err := insp.Pending(ctx, "jobs", "nope", "", 10); !errors.Is(err, bus.ErrNoGroup) {
		t.Errorf("Pending(missing group) = %v, want ErrNoGroup", err)
	}
	if _, err := insp.Pending(ctx, "jobs", "g1", "", 0); !errors.Is(err, bus.ErrInvalidConfig) {
		t.Errorf("Pending(count 0) = %v, want ErrInvalidConfig", err)
	}
	for name, call := range map[string]func() error{
		"Topic":            func() error { _, err := insp.Topic(ctx, "a{b"); return err },
		"DeadLetters":      func() error { _, err := insp.DeadLetters(ctx, "", 1); return err },
		"Replay":           func() error { _, err := insp.ReplayDeadLetters(ctx, "a b"); return err },
		"Purge":            func() error { _, err := insp.PurgeDeadLetters(ctx, "a}", 0); return err },
		"DeleteTopic":      func() error { return insp.DeleteTopic(ctx, "") },
		"Pending of a bad": func() error { _, err := insp.Pending(ctx, "t", "g g", "", 1); return err },
	} {
		if err := call(); !errors.Is(err, bus.ErrInvalidConfig) {
			t.Errorf("%s with a bad name = %v, want ErrInvalidConfig", name, err)
		}
	}

	m.ZAdd(c.Keys().Workers("jobs"), 1, "workers w1")
	if err := insp.DeleteTopic(ctx, "jobs"); err != nil {
		t.Fatal(err)
	}
	if m.Exists(c.Keys().Workers("jobs")) {
		t.Error("DeleteTopic left the presence set")
	}
	if tp, err := insp.Topic(ctx, "jobs"); err != nil || tp.Length != 0 || len(tp.Groups) != 0 {
		t.Errorf("Topic after DeleteTopic = %+v, %v", tp, err)
	}
	if s, err := insp.Server(ctx); err != nil || s.CPUOK {
		t.Errorf("Server(miniredis) = %+v, %v; want no CPU figure", s, err)
	}
}

func TestDeadLetterAdmin(t *testing.T) {
	m, c := redistest.Mini(t)
	ctx := context.Background()
	insp := inspect.New(c)
	env := codec.AppendEnvelope(nil, &codec.Envelope{Kind: codec.KindEvent, Payload: []byte("job"), Headers: map[string]string{"tenant": "a"}})
	good, _ := m.XAdd("myc:{t}:dlq", "*", []string{"id", "1-1", "topic", "t", "reason", "handler_error", "attempts", "2", "time", "2026-11-30T00:00:00Z", "m", string(env)})
	bad, _ := m.XAdd("myc:{t}:dlq", "*", []string{"id", "1-2", "reason", "malformed", "f.junk", "1", "m", "not msgpack"})

	letters, err := insp.DeadLetters(ctx, "t", 0)
	if err != nil || len(letters) != 2 {
		t.Fatalf("DeadLetters = %+v, %v", letters, err)
	}
	if d := letters[0]; d.ID != good || d.OriginalID != "1-1" || d.Attempts != 2 || d.Time.IsZero() || d.Envelope == nil ||
		string(d.Envelope.Payload) != "job" || d.Fields != nil {
		t.Errorf("good dead letter = %+v", d)
	}
	if d := letters[1]; d.ID != bad || d.Envelope != nil || d.Fields["junk"] != "1" || d.Fields["m"] != "not msgpack" {
		t.Errorf("malformed dead letter = %+v", d)
	}
	if one, err := insp.DeadLetters(ctx, "t", 1); err != nil || len(one) != 1 {
		t.Errorf("DeadLetters(limit 1) = %d, %v", len(one), err)
	}

	n, err := insp.ReplayDeadLetters(ctx, "t", good, bad, "9-9")
	if n != 1 || !errors.Is(err, bus.ErrNotReplayable) || !errors.Is(err, bus.ErrNotFound) {
		t.Fatalf("ReplayDeadLetters = %d, %v; want 1 replayed, one not replayable, one not found", n, err)
	}
	entries, _ := m.Stream("myc:{t}")
	if len(entries) != 1 {
		t.Fatalf("topic stream after replay has %d entries, want 1", len(entries))
	}
	var replayed codec.Envelope
	if err := codec.DecodeEnvelope(entries[0].Values[1], &replayed); err != nil ||
		replayed.Headers[inspect.ReplayedFromHeader] != good || replayed.Headers["tenant"] != "a" {
		t.Fatalf("replayed envelope = %+v, %v", replayed, err)
	}
	if left, _ := insp.DeadLetters(ctx, "t", 0); len(left) != 1 || left[0].ID != bad {
		t.Fatalf("dead letters after replay = %+v, want the malformed one only", left)
	}
	if n, err := insp.PurgeDeadLetters(ctx, "t", time.Hour); err != nil || n != 0 {
		t.Errorf("Purge(older than 1h) = %d, %v; want 0 (it is new)", n, err)
	}
	if n, err := insp.PurgeDeadLetters(ctx, "t", 0); err != nil || n != 1 || m.Exists("myc:{t}:dlq") {
		t.Errorf("Purge(all) = %d, %v; want 1 and the stream gone", n, err)
	}
}

// TestOverviewWithABadTopic: one topic whose metadata is malformed, or
// whose keys hold the wrong type, is reported as such, and the others are
// read (security issue, point 16: it used to fail the whole overview as
// "redis unavailable").
func TestOverviewWithABadTopic(t *testing.T) {
	m, c := redistest.Mini(t)
	ctx := context.Background()
	rc := c.Redis()
	for _, topic := range []string{"good", "badmeta", "wrongtype"} {
		if err := rc.Do(ctx, rc.B().Xadd().Key(c.Keys().Topic(topic)).Id("*").FieldValue().FieldValue("m", "x").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	m.HSet(c.Keys().Meta("badmeta"), "partitions", "0")
	if err := m.Set(c.Keys().Meta("wrongtype"), "x"); err != nil {
		t.Fatal(err)
	}
	o, err := inspect.New(c).Overview(ctx)
	if err != nil {
		t.Fatalf("Overview = %v; want the good topic read and the bad ones reported", err)
	}
	got := map[string]string{}
	for _, tp := range o.Topics {
		got[tp.Name] = tp.Err
		if tp.Name == "good" && tp.Length != 1 {
			t.Errorf("good topic: %+v", tp)
		}
	}
	if got["good"] != "" || !strings.Contains(got["badmeta"], "malformed topic metadata") || !strings.Contains(got["wrongtype"], "not a hash") {
		t.Fatalf("topic errors = %q", got)
	}
	for _, e := range got {
		if strings.Contains(e, "unavailable") {
			t.Fatalf("a malformed topic reported as Redis unavailable: %q", e)
		}
	}
}

// TestFind finds a message by entry id and by correlation id, in a
// topic's stream (with where it stands in each group) and in its dead
// letters, and refuses a bad query.
func TestFind(t *testing.T) {
	m, c := redistest.Mini(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	insp := inspect.New(c)
	add := func(key, id string, env *codec.Envelope, extra ...string) string {
		t.Helper()
		id, err := m.XAdd(key, id, append([]string{"m", string(codec.AppendEnvelope(nil, env))}, extra...))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	first := add("myc:{calls}", "1000-1", &codec.Envelope{Kind: codec.KindRequest, ID: "corr-1", Payload: []byte("a")})
	second := add("myc:{calls}", "1000-2", &codec.Envelope{Kind: codec.KindRequest, ID: "corr-2", Payload: []byte("b")})
	add("myc:{calls}", "1000-3", &codec.Envelope{Kind: codec.KindRequest, ID: "corr-3", Payload: []byte("c")})
	if _, err := m.XAdd("myc:{calls}", "1000-4", []string{"junk", "x"}); err != nil { // not an envelope
		t.Fatal(err)
	}
	rc := c.Redis()
	if err := rc.Do(ctx, rc.B().XgroupCreate().Key("myc:{calls}").Group("g").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// g reads two and acknowledges the first: first acknowledged, second
	// pending with w1, the rest waiting.
	if err := rc.Do(ctx, rc.B().Xreadgroup().Group("g", "w1").Count(2).Streams().Key("myc:{calls}").Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(ctx, rc.B().Xack().Key("myc:{calls}").Group("g").Id(first).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	dl := add("myc:{calls}:dlq", "2000-0", &codec.Envelope{Kind: codec.KindRequest, ID: "corr-dead", Payload: []byte("d")}, "reason", "handler_error", "id", "1-1")

	for _, tc := range []struct {
		q     string
		want  []string // In:ID of each match
		state string   // the first match's state in group g
	}{
		{first, []string{"stream:" + first}, "acknowledged"},
		{second, []string{"stream:" + second}, "pending"},
		{"corr-3", []string{"stream:1000-3"}, "waiting"},
		{"corr-dead", []string{"dead-letters:" + dl}, ""},
		{dl, []string{"dead-letters:" + dl}, ""},
		{"1-1", []string{"dead-letters:" + dl}, ""}, // by the dead letter's original id
		{"nobody", nil, ""},
	} {
		found, err := insp.Find(ctx, tc.q, inspect.FindOptions{})
		if err != nil {
			t.Fatalf("Find(%q) = %v", tc.q, err)
		}
		var got []string
		for _, f := range found {
			got = append(got, f.In+":"+f.ID)
		}
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("Find(%q) = %v, want %v", tc.q, got, tc.want)
			continue
		}
		if tc.state != "" {
			f := found[0]
			if f.Topic != "calls" || len(f.Deliveries) != 1 || f.Deliveries[0].State != tc.state || f.Envelope == nil {
				t.Errorf("Find(%q) = %+v; want topic calls, state %s in g, decoded", tc.q, f, tc.state)
			}
			if tc.state == "pending" && (f.Deliveries[0].Consumer != "w1" || f.Deliveries[0].Deliveries != 1) {
				t.Errorf("Find(%q) delivery = %+v; want pending with w1, 1 delivery", tc.q, f.Deliveries[0])
			}
		}
	}
	// Scan bounds the correlation-id search: corr-1 is the oldest of four.
	if found, err := insp.Find(ctx, "corr-1", inspect.FindOptions{Topic: "calls", Scan: 2}); err != nil || len(found) != 0 {
		t.Errorf("Find(corr-1, scan 2) = %v, %v; want nothing (beyond the scan)", found, err)
	}
	if found, err := insp.Find(ctx, "corr-1", inspect.FindOptions{Topic: "calls", Scan: 4}); err != nil || len(found) != 1 {
		t.Errorf("Find(corr-1, scan 4) = %v, %v; want it", found, err)
	}
	for _, bad := range []struct {
		q string
		o inspect.FindOptions
	}{{"", inspect.FindOptions{}}, {strings.Repeat("x", 201), inspect.FindOptions{}}, {"x", inspect.FindOptions{Scan: -1}}, {"x", inspect.FindOptions{Topic: "a{b"}}} {
		if _, err := insp.Find(ctx, bad.q, bad.o); !errors.Is(err, bus.ErrInvalidConfig) {
			t.Errorf("Find(%.10q, %+v) = %v; want ErrInvalidConfig", bad.q, bad.o, err)
		}
	}
}
