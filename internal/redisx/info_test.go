package redisx

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestInfoAndGroupDetail(t *testing.T) {
	m, c := miniClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	si, err := Info(ctx, c, "missing", "missing:dlq")
	if err != nil || si.Length != 0 || si.FirstID != "" || si.LastID != "" || len(si.Groups) != 0 {
		t.Fatalf("Info(missing) = %+v, %v", si, err)
	}
	var ids []string
	for range 3 {
		id, err := add(ctx, c, Add{Key: "s", Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := CreateGroup(ctx, c, "s", "g", "0"); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadGroup(ctx, c, "s", "g", "w1", ">", 2, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := add(ctx, c, Add{Key: "s:dlq", Fields: (&DeadLetter{Reason: "malformed"}).Fields()}); err != nil {
		t.Fatal(err)
	}
	si, err = Info(ctx, c, "s", "s:dlq")
	if err != nil || si.Length != 3 || si.FirstID != ids[0] || si.LastID != ids[2] || len(si.Groups) != 1 || si.Groups[0].Pending != 2 ||
		si.DeadLetters != 1 {
		t.Fatalf("Info(s) = %+v, %v; ids %v", si, err, ids)
	}
	p, consumers, err := GroupDetail(ctx, c, "s", "g")
	if err != nil || p.Count != 2 || p.OldestID != ids[0] || p.ByOwner["w1"] != 2 || len(consumers) != 1 ||
		consumers[0].Name != "w1" || consumers[0].Pending != 2 {
		t.Fatalf("GroupDetail = %+v, %+v, %v", p, consumers, err)
	}
	if _, _, err := GroupDetail(ctx, c, "s", "nogroup"); !errors.Is(err, ErrNoGroup) {
		t.Fatalf("GroupDetail(no group) = %v, want ErrNoGroup", err)
	}
	sizes, err := Sizes(ctx, c, []string{"s", "nothing"})
	if err != nil || len(sizes) != 2 || sizes[0].Length != 3 || sizes[0].TTL != -1 || sizes[1].Length != 0 || sizes[1].TTL != -2 {
		t.Fatalf("Sizes = %+v, %v", sizes, err)
	}
	m.Set("plain", "not a stream")
	if keys, err := ScanStreams(ctx, c, "s*"); err != nil || len(keys) != 2 {
		t.Fatalf("ScanStreams = %v, %v; want [s s:dlq]", keys, err)
	}

}

func TestResponders(t *testing.T) {
	_, c := miniClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := time.Now()
	is := func(want bool, at time.Time, what string) {
		t.Helper()
		if got, err := Responders(ctx, c, "s", "s:workers", at, 15*time.Second); got != want || err != nil {
			t.Fatalf("%s: Responders = %v, %v; want %v", what, got, err, want)
		}
	}
	is(false, now, "no stream, no presence")
	if err := CreateGroup(ctx, c, "s", "g", "0"); err != nil {
		t.Fatal(err)
	}
	is(false, now, "a group without consumers")
	if err := c.Do(ctx, c.B().XgroupCreateconsumer().Key("s").Group("g").Consumer("old").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	is(true, now, "no presence set, a consumer in the group (a worker that does not announce itself)")

	if err := Beat(ctx, c, "s:workers", "g w1", now, time.Hour); err != nil {
		t.Fatal(err)
	}
	is(true, now.Add(10*time.Second), "a beat 10s ago")
	is(false, now.Add(20*time.Second), "a beat 20s ago, window 15s: presence says nobody, whatever the group holds")
	// A later beat of another worker prunes one silent for longer than prune.
	if err := Beat(ctx, c, "s:workers", "g w2", now.Add(2*time.Hour), time.Hour); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Do(ctx, c.B().Zcard().Key("s:workers").Build()).AsInt64(); n != 1 || err != nil {
		t.Fatalf("presence after pruning = %d members, %v; want only w2", n, err)
	}

	// A member planted with a score from the future (security issue, point
	// 17) counts as nobody, and the next beat prunes it.
	later := now.Add(3 * time.Hour)
	if err := c.Do(ctx, c.B().Zadd().Key("s:workers").ScoreMember().ScoreMember(9e15, "ghost").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	is(false, later, "only a ghost from the future")
	if err := Beat(ctx, c, "s:workers", "g w2", now.Add(2*time.Hour), time.Hour); err != nil {
		t.Fatal(err)
	}
	if s, err := c.Do(ctx, c.B().Zscore().Key("s:workers").Member("ghost").Build()).AsFloat64(); !IsNil(err) {
		t.Fatalf("the ghost after a beat: score %v, %v; want it pruned", s, err)
	}

	// Leave removes the member, and the consumer when it holds nothing.
	if err := c.Do(ctx, c.B().XgroupCreateconsumer().Key("s").Group("g").Consumer("w2").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	removed, err := Leave(ctx, c, "s", "s:workers", "g", "w2", "g w2")
	if err != nil || !removed {
		t.Fatalf("Leave = %v, %v; want the consumer removed", removed, err)
	}
	cs, _ := Consumers(ctx, c, "s", "g")
	if len(cs) != 1 || cs[0].Name != "old" {
		t.Fatalf("consumers after Leave = %+v, want only old", cs)
	}
	// The set is gone with its last member: back to the group's consumers.
	is(true, now.Add(3*time.Hour), "no presence set again, a consumer in the group")
	// One holding an entry stays in its group.
	if _, err := add(ctx, c, Add{Key: "s", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadGroup(ctx, c, "s", "g", "old", ">", 1, 0); err != nil {
		t.Fatal(err)
	}
	if removed, err := Leave(ctx, c, "s", "s:workers", "g", "old", "g old"); err != nil || removed {
		t.Fatalf("Leave(consumer holding an entry) = %v, %v; want it kept", removed, err)
	}
}
