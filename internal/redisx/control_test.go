package redisx

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/egos/mycelium/codec"
)

func TestControlRoundTrip(t *testing.T) {
	_, c := miniClient(t)
	ctx := context.Background()
	start := ControlStart(time.Now(), time.Minute)
	notices := []Control{
		{Op: OpCancel, Token: codec.Token{1, 2, 0, 0xff}, Req: "abc1", To: "myc:{r.p}", Until: 1764500000000},
		{Op: OpWake, Until: 1764500000500},
	}
	if err := AddControl(ctx, c, "ctl", notices); err != nil {
		t.Fatal(err)
	}
	// Malformed notices: unknown op, a cancel without its token (ids are
	// not enough: anyone who saw them could cancel), a short token, a zero
	// token, bad time.
	for _, f := range [][]string{{"op", "explode", "until", "1"}, {"op", "cancel", "until", "1", "id", "abc1", "to", "myc:{r.p}"},
		{"op", "cancel", "until", "1", "tok", "short"}, {"op", "cancel", "until", "1", "tok", string(make([]byte, codec.TokenSize))},
		{"op", "wake", "until", "soon"}, {"x", "y"}} {
		AddBatch(ctx, c, []Add{{Key: "ctl", Fields: f}}, nil, nil)
	}
	got, last, bad, err := ReadControl(ctx, c, "ctl", start, 100, 0)
	if err != nil || bad != 6 || len(got) != 2 || last == "" {
		t.Fatalf("ReadControl = %+v, last %q, bad %d, %v; want 2 notices and 6 malformed", got, last, bad, err)
	}
	for i := range notices {
		got[i].ID = ""
		if got[i] != notices[i] {
			t.Errorf("notice %d = %+v, want %+v", i, got[i], notices[i])
		}
	}
	got, next, _, err := ReadControl(ctx, c, "ctl", last, 100, 0)
	if err != nil || len(got) != 0 || next != "" {
		t.Fatalf("read after the last = %+v, %q, %v; want nothing", got, next, err)
	}
}

func FuzzParseControl(f *testing.F) {
	f.Add("op", "cancel", "id", "x", "tok", "0123456789abcdef", "until", "5")
	f.Add("op", "wake", "until", "12", "", "", "", "")
	f.Add("op", "cancel", "until", "-1", "id", "", "to", "")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3, k4, v4 string) {
		n, ok := parseControl("1-1", []string{k1, v1, k2, v2, k3, v3, k4, v4})
		if !ok {
			return
		}
		switch {
		case n.Until < 0:
			t.Fatalf("accepted a negative time: %+v", n)
		case n.Op == OpCancel && n.Token.IsZero():
			t.Fatalf("accepted a cancel without its token: %+v", n)
		case n.Op != OpCancel && n.Op != OpWake:
			t.Fatalf("accepted op %q", n.Op)
		case len(n.Req) > maxControlField || len(n.To) > maxControlField:
			t.Fatalf("accepted an oversized field")
		}
	})
}

func TestDelayedEventsAndRetries(t *testing.T) {
	m, c := miniClient(t)
	ctx := context.Background()
	if err := CreateGroup(ctx, c, "s", "g", "0"); err != nil {
		t.Fatal(err)
	}
	due, err := AddDelayed(ctx, c, "s:delayed", "d1:event-one", time.Time{}, 2*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AddDelayed(ctx, c, "s:delayed", "d2:event-two", time.UnixMilli(due+3000), 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := AddDelayed(ctx, c, "s:delayed", "d3:x", time.Time{}, time.Second, 2); !errors.Is(err, ErrDelayedFull) {
		t.Fatalf("AddDelayed over max = %v, want ErrDelayedFull", err)
	}
	parts := []DuePart{{Delayed: "s:delayed", Stream: "s", Retry: "s:retry"}}
	r := Due(ctx, c, parts, "g", "c1", 10, []int64{10}, Cap{})[0]
	if r.Err != nil || r.Moved != 0 || r.Next != due {
		t.Fatalf("Due before the time = %+v; want nothing moved, next %d", r, due)
	}
	m.SetTime(time.UnixMilli(due + 1))
	r = Due(ctx, c, parts, "g", "c1", 10, []int64{10}, Cap{})[0]
	if r.Err != nil || r.Moved != 1 || r.Next != due+3000 {
		t.Fatalf("Due at the time = %+v; want one moved, next %d", r, due+3000)
	}
	es, err := ReadGroupNow(ctx, c, "s", "g", "c1", 10)
	if err != nil || len(es) != 1 || es[0].Data != "event-one" {
		t.Fatalf("stream after Due = %+v, %v", es, err)
	}
	// A retry: the entry stays pending; when due, the consumer that runs
	// Due claims it (delivery count up) and the set forgets it.
	rdue, err := ScheduleRetry(ctx, c, "s:retry", es[0].ID, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := RetryDue(ctx, c, "s:retry", []string{es[0].ID, "9-9"}); err != nil || got[0] != rdue || got[1] != -1 {
		t.Fatalf("RetryDue = %v, %v; want [%d -1]", got, err, rdue)
	}
	m.SetTime(time.UnixMilli(rdue + 1))
	r = Due(ctx, c, parts, "g", "c2", 10, []int64{0}, Cap{})[0]
	if r.Err != nil || len(r.Claimed) != 0 {
		t.Fatalf("Due without slots claimed %+v", r)
	}
	r = Due(ctx, c, parts, "g", "c2", 10, []int64{5}, Cap{})[0]
	if r.Err != nil || len(r.Claimed) != 1 || r.Claimed[0].ID != es[0].ID || r.Claimed[0].Data != "event-one" {
		t.Fatalf("Due claimed %+v, %v; want the retried entry", r.Claimed, r.Err)
	}
	if r = Due(ctx, c, parts, "g", "c3", 10, []int64{5}, Cap{})[0]; len(r.Claimed) != 0 {
		t.Fatalf("a second Due claimed the retry again: %+v", r.Claimed)
	}
	pend, err := PendingOf(ctx, c, "s", "g", "-", "+", 10, "c2")
	if err != nil || len(pend) != 1 || pend[0].Deliveries != 2 {
		t.Fatalf("pending of c2 = %+v, %v; want the entry, delivered twice", pend, err)
	}
}

// TestDueSurvivesAReplacedSet: a delayed set replaced by a list (security
// issue, point 18) leaves the retries working (the script used to fail as a
// whole with WRONGTYPE, so a 429-retried request never ran again), and is
// reported; a retry set replaced likewise; RetryDue reads it as "no retry".
// Promoted entries are capped like a producer's writes (point 19).
func TestDueSurvivesAReplacedSet(t *testing.T) {
	m, c := miniClient(t)
	ctx := context.Background()
	if err := CreateGroup(ctx, c, "s", "g", "0"); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, c.B().Rpush().Key("s:delayed").Element("junk").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	AddBatch(ctx, c, []Add{{Key: "s", Data: []byte("retried")}}, nil, nil)
	es, err := ReadGroupNow(ctx, c, "s", "g", "c1", 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("read = %v, %v", es, err)
	}
	due, err := ScheduleRetry(ctx, c, "s:retry", es[0].ID, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m.SetTime(time.UnixMilli(due + 1))
	parts := []DuePart{{Delayed: "s:delayed", Stream: "s", Retry: "s:retry"}}
	r := Due(ctx, c, parts, "g", "c2", 10, []int64{5}, MaxLen(100))[0]
	if r.Err != nil || !r.BadDelayed || r.BadRetry || len(r.Claimed) != 1 || r.Claimed[0].ID != es[0].ID {
		t.Fatalf("Due with a list for the delayed set = %+v; want the retry claimed and the set reported", r)
	}
	if err := c.Do(ctx, c.B().Del().Key("s:retry").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, c.B().Set().Key("s:retry").Value("junk").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if got, err := RetryDue(ctx, c, "s:retry", []string{es[0].ID}); err != nil || got[0] != -1 {
		t.Fatalf("RetryDue on a string = %v, %v; want -1 (handle it now)", got, err)
	}
	// A flood of due delayed events is promoted capped.
	if err := c.Do(ctx, c.B().Del().Key("s:delayed", "s:retry").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if _, err := AddDelayed(ctx, c, "s:delayed", fmt.Sprintf("d%d:e", i), time.UnixMilli(due), 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	r = Due(ctx, c, parts, "g", "c2", 100, []int64{0}, MaxLen(10))[0]
	n, err := c.Do(ctx, c.B().Xlen().Key("s").Build()).AsInt64()
	if r.Err != nil || r.Moved != 30 || err != nil || n > 10 {
		t.Fatalf("30 promoted with a cap of 10: %+v, stream length %d, %v", r, n, err)
	}
}
