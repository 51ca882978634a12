package bus

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestInfoAndPendingSummary(t *testing.T) {
	m, c := miniClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	si, err := Info(ctx, c, "missing")
	if err != nil || si.Length != 0 || si.FirstID != "" || si.LastID != "" || len(si.Groups) != 0 {
		t.Fatalf("Info(missing) = %+v, %v", si, err)
	}
	var ids []string
	for range 3 {
		id, err := c.Do(ctx, AddCmd(c, "s", Cap{}, false, []byte("x"))).ToString()
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
	si, err = Info(ctx, c, "s")
	if err != nil || si.Length != 3 || si.FirstID != ids[0] || si.LastID != ids[2] || len(si.Groups) != 1 || si.Groups[0].Pending != 2 {
		t.Fatalf("Info(s) = %+v, %v; ids %v", si, err, ids)
	}
	p, err := PendingSummary(ctx, c, "s", "g")
	if err != nil || p.Count != 2 || p.OldestID != ids[0] || p.ByOwner["w1"] != 2 {
		t.Fatalf("PendingSummary = %+v, %v", p, err)
	}
	m.Set("plain", "not a stream")
	if keys, err := ScanStreams(ctx, c, "*"); err != nil || len(keys) != 1 || keys[0] != "s" {
		t.Fatalf("ScanStreams = %v, %v; want [s]", keys, err)
	}
	if _, err := PendingSummary(ctx, c, "s", "nogroup"); !errors.Is(err, ErrNoGroup) {
		t.Fatalf("PendingSummary(no group) = %v, want ErrNoGroup", err)
	}
}
