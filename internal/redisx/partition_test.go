package redisx

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestPartitionsMeta(t *testing.T) {
	m, c := miniClient(t)
	ctx := context.Background()
	got, err := Partitions(ctx, c, "meta")
	if err != nil || got.N != 1 || got.Drain != 1 || got.Set {
		t.Fatalf("missing meta = %+v, %v; want one partition, not set", got, err)
	}
	if got, err = SetPartitions(ctx, c, "meta", 6); err != nil || got.N != 6 || got.Drain != 6 || !got.Set || !got.Lowered.IsZero() {
		t.Fatalf("raised to 6 = %+v, %v", got, err)
	}
	if got, err = SetPartitions(ctx, c, "meta", 2); err != nil || got.N != 2 || got.Drain != 6 || got.Lowered.IsZero() || !got.Draining() {
		t.Fatalf("lowered to 2 = %+v, %v; want 2 written, 6 read, a lowering time", got, err)
	}
	if got, err = SetPartitions(ctx, c, "meta", 4); err != nil || got.N != 4 || got.Drain != 6 {
		t.Fatalf("raised to 4 while draining = %+v, %v; want drain kept at 6", got, err)
	}
	// Not yet: the grace has not passed by Redis's clock.
	if ok, err := ForgetPartitions(ctx, c, "meta", got, 4, time.Hour); err != nil || ok {
		t.Fatalf("forget within the grace = %v, %v; want false", ok, err)
	}
	// Stale view: the metadata changed since it was read.
	stale := got
	stale.N = 3
	if ok, err := ForgetPartitions(ctx, c, "meta", stale, 4, 0); err != nil || ok {
		t.Fatalf("forget with a stale view = %v, %v; want false", ok, err)
	}
	if ok, err := ForgetPartitions(ctx, c, "meta", got, 4, 0); err != nil || !ok {
		t.Fatalf("forget after the grace = %v, %v; want true", ok, err)
	}
	if got, _ = Partitions(ctx, c, "meta"); got.Drain != 4 || got.Draining() {
		t.Errorf("after forgetting: %+v; want drain 4", got)
	}
	if _, err := ForgetPartitions(ctx, c, "meta", got, 5, 0); err == nil {
		t.Error("forgetting to a bound outside [N, Drain) succeeded")
	}
	if _, err := SetPartitions(ctx, c, "meta", 0); err == nil {
		t.Error("SetPartitions(0) succeeded")
	}
	// Nothing read from Redis is trusted: a corrupt field is an error.
	for _, bad := range [][2]string{{"partitions", "0"}, {"partitions", "abc"}, {"partitions", "99999"}, {"drain", "-3"}, {"lowered", "x"}} {
		m.HSet("bad", bad[0], bad[1])
		if _, err := Partitions(ctx, c, "bad"); !errors.Is(err, ErrCorruptMeta) {
			t.Errorf("%s=%q read as %v; want ErrCorruptMeta", bad[0], bad[1], err)
		}
		m.Del("bad")
	}
	if err := ForgetPartitionCount(ctx, c, "meta"); err != nil {
		t.Fatal(err)
	}
	if got, _ = Partitions(ctx, c, "meta"); got.Set || got.N != 1 {
		t.Errorf("after ForgetPartitionCount: %+v; want one partition, not set", got)
	}
}

func TestDrained(t *testing.T) {
	_, c := miniClient(t)
	ctx := context.Background()
	sets := []string{"s:delayed", "s:retry"}
	if ok, err := Drained(ctx, c, "s", "s:dlq", sets, []string{"g"}); err != nil || !ok {
		t.Fatalf("missing stream drained = %v, %v; want true", ok, err)
	}
	if err := CreateGroup(ctx, c, "s", "g", "0"); err != nil {
		t.Fatal(err)
	}
	res := AddBatch(ctx, c, []Add{{Key: "s", Data: []byte("a")}, {Key: "s", Data: []byte("b")}}, nil, nil)
	if ok, _ := Drained(ctx, c, "s", "s:dlq", sets, []string{"g"}); ok {
		t.Fatal("undelivered entries read as drained")
	}
	if ok, _ := Drained(ctx, c, "s", "s:dlq", sets, []string{"other"}); ok {
		t.Fatal("a group missing on the stream read as drained")
	}
	es, err := ReadGroupNow(ctx, c, "s", "g", "c1", 10)
	if err != nil || len(es) != 2 {
		t.Fatalf("read = %d, %v", len(es), err)
	}
	if ok, _ := Drained(ctx, c, "s", "s:dlq", sets, []string{"g"}); ok {
		t.Fatal("pending entries read as drained")
	}
	AddBatch(ctx, c, nil, []Ack{{Key: "s", Group: "g", IDs: []string{res[0].ID, res[1].ID}}}, nil)
	if ok, err := Drained(ctx, c, "s", "s:dlq", sets, []string{"g"}); err != nil || !ok {
		t.Fatalf("all acknowledged = %v, %v; want drained", ok, err)
	}
	if _, err := ScheduleRetry(ctx, c, "s:retry", res[0].ID, time.Minute); err != nil {
		t.Fatal(err)
	}
	if ok, _ := Drained(ctx, c, "s", "s:dlq", sets, []string{"g"}); ok {
		t.Fatal("a partition with a retry scheduled read as drained")
	}
	if err := c.Do(ctx, c.B().Zrem().Key("s:retry").Member(res[0].ID).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	AddBatch(ctx, c, []Add{{Key: "s:dlq", Fields: []string{"reason", "x"}}}, nil, nil)
	if ok, _ := Drained(ctx, c, "s", "s:dlq", sets, []string{"g"}); ok {
		t.Fatal("a partition with dead letters read as drained")
	}
}

func TestReadGroupAll(t *testing.T) {
	_, c := miniClient(t)
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c"} {
		if err := CreateGroup(ctx, c, k, "g", "0"); err != nil {
			t.Fatal(err)
		}
	}
	AddBatch(ctx, c, []Add{{Key: "a", Data: []byte("1")}, {Key: "a", Data: []byte("2")}, {Key: "c", Data: []byte("3")}}, nil, nil)
	res, err := ReadGroupAll(ctx, c, []string{"a", "b", "c"}, "g", "c1", 1, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || len(res[0]) != 1 || len(res[1]) != 0 || len(res[2]) != 1 || res[2][0].Data != "3" {
		t.Fatalf("ReadGroupAll COUNT 1 = %+v; want one of a, none of b, one of c", res)
	}
	if _, err := ReadGroupAll(ctx, c, []string{"a", "nogroup"}, "g", "c1", 1, 10*time.Millisecond); !errors.Is(err, ErrNoGroup) {
		t.Errorf("a stream without the group: %v; want ErrNoGroup", err)
	}
}

func TestCompareIDs(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"1-0", "1-0", 0}, {"1-1", "1-2", -1}, {"2-0", "1-9", 1}, {"10-0", "9-0", 1}, {"", "1-0", -1}, {"1-0", "", 1}, {"", "x", 0}, {"5", "5-0", 0},
	} {
		if got := CompareIDs(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareIDs(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

const clusterNodesReply = `07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002,hostname2 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003,hostname3 master - 0 1426238318243 3 connected 10923-16383 [16383->-abc]
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001,hostname1 myself,master - 0 0 1 connected 0-5460
`

func TestParseClusterNodes(t *testing.T) {
	nodes, err := parseClusterNodes(clusterNodesReply)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 4 {
		t.Fatalf("%d nodes", len(nodes))
	}
	if n := nodes[0]; n.Master || n.Addr != "127.0.0.1:30004" || n.MasterAddr != "127.0.0.1:30001" {
		t.Errorf("replica = %+v", n)
	}
	if n := nodes[2]; !n.Master || !n.Serves(16383) || n.Serves(0) || len(n.Slots) != 1 {
		t.Errorf("master with a migrating slot = %+v", n)
	}
	for _, bad := range []string{"a b c", "id 1.2.3.4:1@2 master - 0 0 1 connected 9-x", "id 1.2.3.4:1@2 master - 0 0 1 connected 20000"} {
		if _, err := parseClusterNodes(bad); err == nil {
			t.Errorf("parseClusterNodes(%q) succeeded", bad)
		}
	}
}

// FuzzParseClusterNodes: CLUSTER NODES comes from Redis; no input may make
// the parser panic, and what it accepts is within the slot space.
func FuzzParseClusterNodes(f *testing.F) {
	f.Add(clusterNodesReply)
	f.Add("x y z w 0 0 0 c 1-2 3")
	f.Fuzz(func(t *testing.T, s string) {
		nodes, err := parseClusterNodes(s)
		if err != nil {
			return
		}
		for _, n := range nodes {
			for _, r := range n.Slots {
				if r[0] < 0 || r[1] > 16383 || r[0] > r[1] {
					t.Fatalf("slot range %v accepted from %q", r, s)
				}
			}
		}
	})
}

// FuzzParsePartitions: a topic's metadata comes from Redis; what the
// parser accepts is a count in range with drain >= N, priority levels in
// [1, MaxLevels] with one weight in [1, MaxWeight] each, shards in range.
func FuzzParsePartitions(f *testing.F) {
	f.Add("4", "8", "1700000000000", "3", "4,2,1", "1", "2", uint8(127))
	f.Add("", "", "", "", "", "", "", uint8(0))
	f.Add("0", "-1", "x", "11", "0,,x", "2", "-1", uint8(127))
	f.Add("1", "1", "0", "2", " 9 , 1000", "0", "1024", uint8(127))
	f.Fuzz(func(t *testing.T, n, d, l, lv, w, st, sh string, has uint8) {
		vals := [len(metaFields)]*string{}
		for i, s := range []string{n, d, l, lv, w, st, sh} {
			if has&(1<<i) != 0 {
				vals[i] = &s
			}
		}
		m, err := parsePartitions("meta", vals)
		if err != nil {
			if !errors.Is(err, ErrCorruptMeta) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if m.N < 1 || m.N > MaxPartitions || m.Drain < m.N || m.Drain > MaxPartitions {
			t.Fatalf("accepted %+v from %q %q %q", m, n, d, l)
		}
		if m.Levels < 1 || m.Levels > MaxLevels || len(m.Weights) != m.Levels || m.Shards < 0 || m.Shards > MaxPartitions {
			t.Fatalf("accepted scheduling %+v from %q %q %q %q", m, lv, w, st, sh)
		}
		for _, x := range m.Weights {
			if x < 1 || x > MaxWeight {
				t.Fatalf("accepted weight %d from %q", x, w)
			}
		}
	})
}

// TestSetScheduling: levels set with their weights, never lowered; a
// level count nobody wrote through the bus is replaced; the script
// refuses malformed arguments whoever calls it.
func TestSetScheduling(t *testing.T) {
	m, c := miniClient(t)
	ctx := context.Background()
	got, err := SetScheduling(ctx, c, "meta", Scheduling{Levels: 3, Strict: true, Shards: 2})
	if err != nil || got.Levels != 3 || !got.Strict || got.Shards != 2 || len(got.Weights) != 3 || got.Weights[0] != 4 {
		t.Fatalf("SetScheduling(3 levels) = %+v, %v", got, err)
	}
	if _, err := SetScheduling(ctx, c, "meta", Scheduling{Levels: 2}); !errors.Is(err, ErrLevelsLowered) {
		t.Fatalf("lowering = %v, want ErrLevelsLowered", err)
	}
	if _, err := SetScheduling(ctx, c, "meta", Scheduling{Levels: 3, Weights: []int{1, 2}}); err == nil {
		t.Fatal("two weights for three levels accepted")
	}
	m.HSet("meta", "priorities", "99")
	if _, err := Partitions(ctx, c, "meta"); !errors.Is(err, ErrCorruptMeta) {
		t.Fatalf("priorities 99 read as %v, want ErrCorruptMeta", err)
	}
	if got, err = SetScheduling(ctx, c, "meta", Scheduling{Levels: 2, Weights: []int{3, 1}}); err != nil || got.Levels != 2 || got.Weights[0] != 3 || got.Strict {
		t.Fatalf("replacing a malformed count = %+v, %v", got, err)
	}
	for _, args := range [][]string{{"abc", "1", "0", "0"}, {"11", "1", "0", "0"}, {"2", "1,,2", "0", "0"}, {"2", "1,2,", "0", "0"},
		{"2", "0,1", "0", "0"}, {"2", "1,2", "2", "0"}, {"2", "1,2", "0", "-1"}, {"2", "1,2", "0", "1025"}} {
		if err := setSchedulingScript.Exec(ctx, c, []string{"meta"}, args).Error(); err == nil {
			t.Errorf("set_scheduling %v accepted", args)
		}
	}
	if got, err = Partitions(ctx, c, "meta"); err != nil || got.Levels != 2 {
		t.Fatalf("after refused calls: %+v, %v; want the 2 levels kept", got, err)
	}
}
