package suite

import (
	"fmt"
	"time"

	"github.com/egos/mycelium/cmd/bus-bench/internal/bench"
	"github.com/egos/mycelium/cmd/bus-bench/internal/report"
)

// ClusterCases are the partition and failover measurements (--suite
// cluster, against a Redis Cluster; docs/cluster.md): rpc and publish at
// 64 and 256 callers with 1, 3 and 12 partitions on the cluster and, with
// --compare-redis, on that standalone Redis (what partitioning costs on one
// server); then five coordinated failovers
// (CLUSTER FAILOVER) and one crash (SHUTDOWN NOSAVE NOW) of the master of
// the topic's partition 0 under load. The crash comes last: the rig loses
// that node. quick scales the runs down to check the suite itself.
func ClusterCases(quick, standalone bool) []Case {
	var cs []Case
	d := 5 * time.Second
	for _, sc := range []string{"rpc", "publish"} {
		for _, c := range []int{64, 256} {
			if standalone {
				for _, n := range []int{1, 3, 12} {
					cs = append(cs, Case{Name: fmt.Sprintf("%s-%d-standalone-%dp", sc, c, n), Scenario: sc, Concurrency: c, Duration: d, Payload: 1024, Partitions: n, Standalone: true})
				}
			}
			for _, n := range []int{1, 3, 12} {
				cs = append(cs, Case{Name: fmt.Sprintf("%s-%d-cluster-%dp", sc, c, n), Scenario: sc, Concurrency: c, Duration: d, Payload: 1024, Partitions: n})
			}
		}
	}
	for i := range 5 {
		cs = append(cs, Case{Name: fmt.Sprintf("failover-manual-%d", i+1), Scenario: "failover", Concurrency: 32, Duration: 12 * time.Second,
			Payload: 256, Partitions: 6, Failover: "manual", KillAfter: 4 * time.Second})
	}
	cs = append(cs, Case{Name: "failover-crash", Scenario: "failover", Concurrency: 32, Duration: 15 * time.Second,
		Payload: 256, Partitions: 6, Failover: "shutdown", KillAfter: 4 * time.Second})
	if quick {
		for i := range cs {
			c := &cs[i]
			if c.Scenario == "failover" {
				c.Duration, c.KillAfter = 10*time.Second, 3*time.Second
				continue
			}
			c.Duration /= 5
		}
	}
	return cs
}

// JudgeCluster checks the cluster suite's targets: partitioning (3
// partitions, the 2–4 per master docs/cluster.md advises) costs under 5% at
// 64 callers on one standalone Redis (rpc), every failover recovers within
// the run, and a coordinated failover loses no event Redis acknowledged.
// 12 partitions on one server are reported, not judged (one XACK per
// partition per write: docs/cluster.md).
func JudgeCluster(runs []report.Run) []report.Verdict {
	by := map[string]*bench.Result{}
	for _, r := range runs {
		by[r.Case] = r.Out.Result
	}
	var vs []report.Verdict
	if one, three := by["rpc-64-standalone-1p"], by["rpc-64-standalone-3p"]; one != nil && three != nil {
		x := three.ThroughputRPS / max(one.ThroughputRPS, 1e-9)
		more := ""
		if twelve := by["rpc-64-standalone-12p"]; twelve != nil {
			more = fmt.Sprintf("; 12 partitions %.0f req/s = %.3f (not judged)", twelve.ThroughputRPS, twelve.ThroughputRPS/max(one.ThroughputRPS, 1e-9))
		}
		vs = append(vs, report.Verdict{OK: x >= 0.95, Text: fmt.Sprintf("partitioning on one standalone Redis, rpc at 64 callers: 3 partitions %.0f req/s = %.3f of one partition's %.0f (target >= 0.95)%s",
			three.ThroughputRPS, x, one.ThroughputRPS, more)})
	}
	for _, r := range runs {
		f := r.Out.Result.Failover
		if f == nil {
			continue
		}
		ok := f.RecoveryMS >= 0 && (f.Mode != "manual" || f.Lost == 0)
		vs = append(vs, report.Verdict{OK: ok, Text: fmt.Sprintf("%s (%s of %s at %.1f s): recovery %.0f ms, %d of %d acknowledged events lost, %d duplicated (target: recovered%s)",
			r.Case, f.Mode, f.Target, f.AtS, f.RecoveryMS, f.Lost, f.EventsAcked, f.Duplicated, map[bool]string{true: ", none lost", false: ""}[f.Mode == "manual"])})
	}
	return vs
}
