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
