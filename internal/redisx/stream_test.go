package redisx

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

func TestIDTime(t *testing.T) {
	if tm, ok := IDTime("1700000000123-4"); !ok || tm.UnixMilli() != 1700000000123 {
		t.Errorf("IDTime = %v, %v", tm, ok)
	}
	for _, bad := range []string{"", "abc", "x-1"} {
		if _, ok := IDTime(bad); ok {
			t.Errorf("IDTime(%q) ok, want false", bad)
		}
	}
}

// miniClient starts a miniredis and a client of it, both closed with t.
func miniClient(t *testing.T) (*miniredis.Miniredis, rueidis.Client) {
	t.Helper()
	m := miniredis.RunT(t)
	c, err := dial(m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return m, c
}

// dial builds a client with the options bus.Config sets that matter to
// miniredis (package bus imports this one, so its tests cannot use it).
func dial(addr string) (rueidis.Client, error) {
	return rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{addr}, ForceSingleClient: true, DisableCache: true,
		ClientSetInfo: rueidis.DisableClientSetInfo,
	})
}

// add is one XADD of data to key.
func add(ctx context.Context, c rueidis.Client, a Add) (string, error) {
	r := AddBatch(ctx, c, []Add{a}, nil, nil)
	return r[0].ID, r[0].Err
}

func TestStreamPortOnMiniredis(t *testing.T) {
	_, c := miniClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	if _, err := ReadGroup(ctx, c, "s", "g", "c1", ">", 10, 10*time.Millisecond); !errors.Is(err, ErrNoGroup) {
		t.Fatalf("ReadGroup without a group = %v, want ErrNoGroup", err)
	}
	for range 2 { // the second create meets BUSYGROUP, which is success
		if err := CreateGroup(ctx, c, "s", "g", "0"); err != nil {
			t.Fatalf("CreateGroup = %v", err)
		}
	}
	if ok, err := GroupExists(ctx, c, "s", "g"); !ok || err != nil {
		t.Fatalf("GroupExists = %v, %v", ok, err)
	}
	if ok, err := GroupExists(ctx, c, "missing", "g"); ok || err != nil {
		t.Fatalf("GroupExists(missing stream) = %v, %v; want false, nil", ok, err)
	}
	if _, err := add(ctx, c, Add{Key: "s", Cap: MaxLen(100), Data: []byte("payload")}); err != nil {
		t.Fatal(err)
	}
	if _, err := add(ctx, c, Add{Key: "s", Fields: []string{"x", "1", "y", "2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := add(ctx, c, Add{Key: "gone", NoMkStream: true, Data: []byte("p")}); !IsNil(err) {
		t.Fatalf("XADD NOMKSTREAM on a missing stream = %v, want the nil reply", err)
	}
	got, err := ReadGroup(ctx, c, "s", "g", "c1", ">", 10, 10*time.Millisecond)
	if err != nil || len(got) != 2 {
		t.Fatalf("ReadGroup = %d entries, %v; want 2", len(got), err)
	}
	if !got[0].HasData || got[0].Data != "payload" {
		t.Errorf("entry 0 = %+v", got[0])
	}
	if got[1].HasData || strings.Join(got[1].Fields(), ",") != "x,1,y,2" {
		t.Errorf("entry 1 = %+v fields %v", got[1], got[1].Fields())
	}
	if r := AddBatch(ctx, c, nil, []Ack{{Key: "s", Group: "g", IDs: []string{got[0].ID, got[1].ID}}}, nil); len(r) != 1 || r[0].N != 2 || r[0].Err != nil {
		t.Errorf("XACK = %+v", r)
	}
	empty, err := ReadGroup(ctx, c, "s", "g", "c1", ">", 10, 10*time.Millisecond)
	if err != nil || empty != nil {
		t.Errorf("ReadGroup on a drained stream = %v, %v; want nil, nil", empty, err)
	}
	all, err := Read(ctx, c, "s", "0-0", 10, 10*time.Millisecond)
	if err != nil || len(all) != 2 {
		t.Errorf("Read = %d, %v", len(all), err)
	}
	groups, err := Groups(ctx, c, "s")
	if err != nil || len(groups) != 1 || groups[0].Name != "g" || groups[0].Pending != 0 {
		t.Errorf("Groups = %+v, %v", groups, err)
	}
	// A consumer miniredis never saw act reports idle -1: no idle time, not
	// a negative one.
	if err := c.Do(ctx, c.B().XgroupCreateconsumer().Key("s").Group("g").Consumer("c2").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	consumers, err := Consumers(ctx, c, "s", "g")
	if err != nil || len(consumers) != 2 {
		t.Fatalf("Consumers = %+v, %v; want c1 and c2", consumers, err)
	}
	for _, ci := range consumers {
		if ci.Idle < 0 {
			t.Errorf("consumer %s idle %v, want >= 0", ci.Name, ci.Idle)
		}
	}
	// A group that does not exist on an existing stream: ErrNoGroup from
	// every group command, so callers know to recreate it.
	if _, err := Consumers(ctx, c, "s", "nog"); !errors.Is(err, ErrNoGroup) {
		t.Errorf("Consumers(missing group) = %v, want ErrNoGroup", err)
	}
	if _, err := PendingOf(ctx, c, "s", "nog", "-", "+", 10, ""); !errors.Is(err, ErrNoGroup) {
		t.Errorf("PendingOf(missing group) = %v, want ErrNoGroup", err)
	}
	if _, _, _, err := AutoClaim(ctx, c, "s", "nog", "c1", time.Millisecond, "0-0", 10); !errors.Is(err, ErrNoGroup) {
		t.Errorf("AutoClaim(missing group) = %v, want ErrNoGroup", err)
	}
}

// TestDeliveries: the delivery count of each id asked, in the order
// asked (ids out of id order too), 0 for an id not pending for the
// consumer; ErrNoGroup for a missing group.
func TestDeliveries(t *testing.T) {
	m := miniredis.RunT(t)
	c, err := dial(m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	var ids []string
	for range 3 {
		id, err := c.Do(ctx, c.B().Xadd().Key("s").Id("*").FieldValue().FieldValue("f", "v").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := c.Do(ctx, c.B().XgroupCreate().Key("s").Group("g").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, c.B().Xreadgroup().Group("g", "c1").Count(2).Streams().Key("s").Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// ids[0] delivered again (claimed: 2 deliveries), ids[1] once, ids[2] never.
	if err := c.Do(ctx, c.B().Xclaim().Key("s").Group("g").Consumer("c1").MinIdleTime("0").Id(ids[0]).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	got, err := Deliveries(ctx, c, "s", "g", "c1", []string{ids[2], ids[1], ids[0]})
	if err != nil || len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 2 {
		t.Fatalf("Deliveries(reversed) = %v, %v; want [0 1 2]", got, err)
	}
	if got, err := Deliveries(ctx, c, "s", "g", "c2", ids[:1]); err != nil || got[0] != 0 {
		t.Fatalf("Deliveries(another consumer) = %v, %v; want [0]", got, err)
	}
	if _, err := Deliveries(ctx, c, "s", "nog", "c1", ids); !errors.Is(err, ErrNoGroup) {
		t.Fatalf("Deliveries(missing group) = %v, want ErrNoGroup", err)
	}
}

func TestReadCancelReturnsPromptly(t *testing.T) {
	m := miniredis.RunT(t)
	c, err := dial(m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := CreateGroup(context.Background(), c, "s", "g", "$"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := ReadGroup(ctx, c, "s", "g", "c", ">", 1, time.Minute)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled ReadGroup = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadGroup with BLOCK 60s ignored cancellation")
	}
}

func TestUnavailable(t *testing.T) {
	m := miniredis.RunT(t)
	ctx := context.Background()
	c, err := dial(m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m.Set("str", "x")
	// WRONGTYPE: a real error reply. (Not XLEN: on miniredis 2.40.0 an XLEN
	// of a non-stream key sends an extra reply and rueidis panics with
	// "protocol bug, message handled out of order".)
	reply := c.Do(ctx, c.B().Lpush().Key("str").Element("a").Build()).Error()
	if reply == nil || errors.Is(Unavailable(reply), ErrUnavailable) {
		t.Fatalf("Unavailable(%v) marked a Redis error reply as unavailable", reply)
	}
	_, conn := dial("127.0.0.1:1") // nothing listens there
	if conn == nil || !errors.Is(Unavailable(conn), ErrUnavailable) || !errors.Is(Unavailable(conn), conn) {
		t.Fatalf("Unavailable(%v) = %v, want ErrUnavailable wrapping it", conn, Unavailable(conn))
	}
	if Unavailable(nil) != nil {
		t.Error("Unavailable(nil) != nil")
	}
	for _, e := range []error{context.Canceled, context.DeadlineExceeded} {
		if got := Unavailable(e); errors.Is(got, ErrUnavailable) || !errors.Is(got, e) {
			t.Errorf("Unavailable(%v) = %v, want it unchanged", e, got)
		}
	}
}
