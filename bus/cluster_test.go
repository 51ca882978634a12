package bus

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestClusterAndSentinelURLs(t *testing.T) {
	opt, err := Config{URL: "redis://:pw@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002"}.clientOption()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"}; !slices.Equal(opt.InitAddress, want) {
		t.Errorf("seeds = %v, want %v", opt.InitAddress, want)
	}
	if opt.ForceSingleClient || opt.Password != "pw" || opt.ClusterOption.ShardsRefreshInterval == 0 {
		t.Errorf("several hosts: ForceSingleClient=%v password=%q refresh=%v; want the cluster client", opt.ForceSingleClient, opt.Password, opt.ClusterOption.ShardsRefreshInterval)
	}
	one, _ := Config{URL: "redis://10.0.0.1:7000", Cluster: true}.clientOption()
	if one.ForceSingleClient {
		t.Error("Cluster with one seed built the standalone client")
	}
	single, _ := Config{URL: "redis://10.0.0.1:7000"}.clientOption()
	if !single.ForceSingleClient {
		t.Error("one host without Cluster did not force the standalone client")
	}
	s, err := Config{URL: "redis://10.0.0.1:26379,10.0.0.2:26379?master_set=mymaster", SentinelPassword: "spw"}.clientOption()
	if err != nil {
		t.Fatal(err)
	}
	if s.Sentinel.MasterSet != "mymaster" || s.Sentinel.Password != "spw" || s.ForceSingleClient || len(s.InitAddress) != 2 || s.Sentinel.TopologyRefreshInterval == 0 {
		t.Errorf("sentinel option = %+v (addresses %v)", s.Sentinel, s.InitAddress)
	}
	if s2, _ := (Config{URL: "redis://10.0.0.1:26379", MasterSet: "m2"}).clientOption(); s2.Sentinel.MasterSet != "m2" {
		t.Errorf("MasterSet field ignored: %q", s2.Sentinel.MasterSet)
	}
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "redis://a:1,,b:2"}, "empty host"},
		{Config{URL: "redis://a,b:2"}, "want host:port"},
		{Config{URL: "redis://a:1,b"}, "redis URL"},
		{Config{URL: "redis://a:1,b:2/3"}, "database 0 only"},
		{Config{URL: "redis://a:1?master_set=m", Cluster: true}, "exclude each other"},
		{Config{URL: "redis://a:1?master_set=bad%20name"}, "master set"},
	} {
		err := tt.cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%q) = %v; want ErrInvalidConfig mentioning %q", tt.cfg.URL, err, tt.want)
		}
	}
	if got := (Config{URL: "redis://u:secret@a:1,b:2"}).Redacted(); strings.Contains(got, "secret") {
		t.Errorf("Redacted() = %q shows the password", got)
	}
}

func TestPartitionNames(t *testing.T) {
	if Partition("t", 0) != "t" || Partition("t", 7) != "t#7" {
		t.Errorf("Partition = %q, %q", Partition("t", 0), Partition("t", 7))
	}
	k := Keys{}
	if got := k.Topic(Partition("jobs", 3)); got != "myc:{jobs#3}" {
		t.Errorf("partition 3's stream = %q", got)
	}
	if got := k.DeadLetter(Partition("jobs", 3)); got != "myc:{jobs#3}:dlq" {
		t.Errorf("partition 3's dead letters = %q", got)
	}
	for name, want := range map[string]struct {
		topic string
		p     int
		ok    bool
	}{
		"t": {"t", 0, true}, "t#1": {"t", 1, true}, "t#1023": {"t", 1023, true},
		"t#0": {}, "t#01": {}, "t#-1": {}, "t#1024": {}, "t#x": {}, "#3": {}, "": {},
	} {
		topic, p, ok := ParsePartition(name)
		if ok != want.ok || (ok && (topic != want.topic || p != want.p)) {
			t.Errorf("ParsePartition(%q) = %q, %d, %v; want %q, %d, %v", name, topic, p, ok, want.topic, want.p, want.ok)
		}
	}
	if err := ValidateName("topic", "a#b"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("a topic with '#' passed validation: %v", err)
	}
}
