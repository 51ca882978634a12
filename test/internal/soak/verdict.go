package soak

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/egos/mycelium/internal/svgchart"
)

// Result is a soak's outcome: what it ran, what it saw, its verdicts.
type Result struct {
	Config  Config        `json:"config"`
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// CapacityMPS is the probe's closed-loop requests per second; the soak
	// sent Load of it as RequestRate + EventRate.
	CapacityMPS float64        `json:"capacity_per_s"`
	RequestRate float64        `json:"request_rate"`
	EventRate   float64        `json:"event_rate"`
	StreamCaps  map[string]int `json:"stream_caps"`
	// p50/p99 in ms of the requests answered in the first window after the
	// warm-up and in the last window (FirstN, LastN of them).
	P50First float64 `json:"p50_first_ms"`
	P99First float64 `json:"p99_first_ms"`
	P50Last  float64 `json:"p50_last_ms"`
	P99Last  float64 `json:"p99_last_ms"`
	FirstN   uint64  `json:"first_n"`
	LastN    uint64  `json:"last_n"`
	Requests Tally   `json:"requests"`
	Events   Tally   `json:"events"`
	// LateReplies: second replies the producer dropped (a re-executed
	// request answering again).
	LateReplies uint64            `json:"late_replies"`
	Errors      map[string]uint64 `json:"errors"`      // caller errors by kind
	Unexplained map[string]uint64 `json:"unexplained"` // ... outside every fault's shadow
	Poison      PoisonResult      `json:"poison"`
	Faults      []Fault           `json:"faults"`
	// DupBudget: the re-executions the faults can explain at most (what
	// the killed workers held, and every handler slot per Redis restart).
	DupBudget uint64    `json:"duplicate_budget"`
	Drift     []Drift   `json:"drift"`
	Verdicts  []Verdict `json:"verdicts"`
	Pass      bool      `json:"pass"`
	Samples   []Sample  `json:"-"` // in soak.jsonl, line by line
}

// PoisonResult is the poison entries sent and found in the dead letters.
type PoisonResult struct {
	Events     int      `json:"events"`    // events the backend always refuses
	Malformed  int      `json:"malformed"` // entries written without an envelope
	InDLQ      int      `json:"in_dlq"`
	Missing    []string `json:"missing,omitempty"`
	Deliveries uint64   `json:"deliveries"` // times the backend refused a poison event
}

// Drift compares one resource at the end with the end of the warm-up:
// the lowest value of the last n samples of each (n: half the warm-up's
// samples, at least 3). The floor, because what passes (a burst's extra
// connections, the objects in flight when a GC ran) is not a leak and a
// leak raises the floor; the same number of samples on both sides.
type Drift struct {
	What   string  `json:"what"`
	Ref    float64 `json:"ref"`
	End    float64 `json:"end"`
	Change float64 `json:"change"`
	// Allowed is a rise by this much or less that passes whatever its
	// ratio: a robust soak's allowance for a worker's backend connection
	// pool and for what a GC finds in flight (see Config.allowance); 0
	// otherwise.
	Allowed float64 `json:"allowed,omitempty"`
	OK      bool    `json:"ok"` // Change <= MaxDrift (or within Allowed): a fall is reported, not failed
}

// HeapInFlight is how far a process's live heap may rise in a robust soak
// whatever the ratio. The live heap is what the last GC marked, so it
// counts what was in flight at that instant (a read batch being decoded,
// a pipeline's buffers): an events worker's heap measured 3.4 MB or 4.3 MB
// from one sample to the next over whole 60-second runs, and when the few
// samples the last window floors happened all to land on 4.3 MB the short
// soak failed (+24%, CI on 2026-12-06) with no leak. A leak of 20 bytes a
// message passes this in 60 seconds (~95,000 messages); make soak (30
// minutes, no allowance) catches it.
const HeapInFlight = 2 << 20

// allowance is how far a resource may rise in a robust soak whatever the
// ratio: the live heap by HeapInFlight; a worker's goroutines and
// descriptors by its backend connection pool. Its HTTP backend keeps up to one
// idle connection per handler slot (a descriptor and two goroutines each),
// and how many it holds depends on the peak concurrency it saw: a worker
// replaced after a SIGKILL or a Redis restart takes a burst (what was left
// pending) that the one at the end of the warm-up never saw. Bounded by
// its slots, so not a leak; a 60-second run cannot tell a slow leak from a
// pool filling, and make soak (30 minutes) judges without it. The caller
// hosts the backend: each of those connections is one descriptor and one
// goroutine of its server there.
func (c *Config) allowance(role, res string) float64 {
	switch res {
	case "live heap":
		return HeapInFlight
	case "keys":
		// A topic's control stream and retry set appear with the first
		// notice or retry: a worker stopped by a SIGTERM fault hands back
		// what it read and never handled (a retry set entry and a wake
		// notice), and one soak went from 9 to 10 keys for good (+11%).
		return RedisKeys
	}
	evSlots := float64(max(1, c.Concurrency/4))
	var slots, perConn float64
	switch {
	case role == "ev":
		slots, perConn = evSlots, 2
	case strings.HasPrefix(role, "req-"):
		slots, perConn = float64(c.Concurrency), 2
	default: // the caller: every worker's connections, served
		slots, perConn = 2*float64(c.Concurrency)+evSlots, 1
	}
	switch res {
	case "goroutines":
		return perConn * slots
	case "descriptors":
		return slots
	}
	return 0
}

// Verdict is one pass criterion.
type Verdict = svgchart.Verdict

// MaxDrift is how far a resource may move from the end of the warm-up.
const MaxDrift = 0.10

// RedisKeys is how many keys a robust soak lets Redis gain (see
// allowance); make soak judges without it.
const RedisKeys = 3

// ReplacedRSS is how far a robust soak lets the RSS of a role rise when
// its process at the end is not the one measured at the end of the
// warm-up (replaced by an injected SIGTERM or SIGKILL): a fresh Go
// process's RSS grows over its first minute while its heap settles (in
// one 60-second run a replaced event worker went from 30.0 to 34.4 MB
// with a flat live heap of 4.2 MB, +10.3% against its predecessor's
// 30.4 MB). Its live heap, goroutines and descriptors are judged as any
// other's; make soak (30 minutes) judges without it.
const ReplacedRSS = 8 << 20

// MaxP99Ratio bounds the last window's p99 against the first's.
const MaxP99Ratio = 1.5

// judge computes the drift and the verdicts from the rest of r.
func (r *Result) judge() {
	robust := r.Config.Robust
	var allow func(role, res string) float64
	if robust {
		allow = r.Config.allowance
	}
	r.Drift = drift(r.Samples, r.Config.Warmup, r.Config.Sample, robust, allow)
	r.Verdicts = nil
	add := func(ok bool, format string, args ...any) {
		r.Verdicts = append(r.Verdicts, Verdict{OK: ok, Text: fmt.Sprintf(format, args...)})
	}
	// info adds a verdict that is reported, never failed.
	info := func(ok bool, format string, args ...any) {
		r.Verdicts = append(r.Verdicts, Verdict{OK: ok, Info: true, Text: fmt.Sprintf(format, args...)})
	}
	var bad []string
	for _, d := range r.Drift {
		if !d.OK {
			bad = append(bad, fmt.Sprintf("%s %+.1f%%", d.What, 100*d.Change))
		}
	}
	redisFigure := "Redis used_memory"
	if robust {
		redisFigure = "Redis's memory overhead (clients, buffers) and key count (the streams are not capped within the run)"
	}
	add(len(r.Drift) > 0 && len(bad) == 0, "no resource ends more than %.0f%% above its value at the end of the warm-up (%d figures: RSS, live heap, goroutines and descriptors of each process, %s; the floor of as many samples at each end)%s",
		100*MaxDrift, len(r.Drift), redisFigure, listed(" — out: ", bad))
	latency := add
	latencyNote := ""
	if robust {
		// Latency on a shared machine is the machine's: make soak judges it.
		latency, latencyNote = info, " (reported: a shared machine's load decides it; make soak judges it)"
	}
	latency(r.FirstN > 0 && r.LastN > 0 && r.P99Last <= MaxP99Ratio*r.P99First, "p99 of the last %v (%.1f ms, %d requests) at most %.1fx that of the first %v after warm-up (%.1f ms, %d requests): %.2fx%s",
		r.Config.Window, r.P99Last, r.LastN, MaxP99Ratio, r.Config.Window, r.P99First, r.FirstN, r.P99Last/math.Max(r.P99First, 1e-9), latencyNote)

	r.DupBudget = 0
	kills, restarts := 0, 0
	for _, f := range r.Faults {
		switch f.Kind {
		case FaultKill:
			kills++
			r.DupBudget += uint64(max(f.InFlight, int64(r.Config.Concurrency)))
		case FaultRedisRestart:
			restarts++
			r.DupBudget += uint64(2*r.Config.Concurrency + max(1, r.Config.Concurrency/4))
		}
	}
	for _, k := range []struct {
		name string
		t    Tally
	}{{"requests", r.Requests}, {"events", r.Events}} {
		t := k.t
		add(t.Issued > 0 && t.Lost == 0 && t.Unfinished == 0 && t.Stray == 0 && t.Answered+t.Failed == t.Issued,
			"%s: none lost: %d sent, %d answered, %d failed (all in fault shadows unless listed below), %d executed; lost %d, unfinished %d, stray executions %d",
			k.name, t.Issued, t.Answered, t.Failed, t.Executed, t.Lost, t.Unfinished, t.Stray)
	}
	dups := r.Requests.Duplicates + r.Events.Duplicates
	explained := r.Requests.Explained + r.Events.Explained
	add(dups == explained && dups <= r.DupBudget, "executed twice only where an injected kill explains it: %d re-executions (%d requests, %d events), %d of them begun just before a SIGKILL or the Redis restart; budget %d (what the killed workers held, every slot per Redis restart); %d late replies dropped by the producer",
		dups, r.Requests.Duplicates, r.Events.Duplicates, explained, r.DupBudget, r.LateReplies)
	judged, slow := map[string]uint64{}, map[string]uint64{}
	for k, n := range r.Unexplained {
		if robust && slowKind(k) {
			slow[k] = n
		} else {
			judged[k] = n
		}
	}
	add(sum(judged) == 0, "no caller error outside a fault's shadow (due from one timeout before a SIGKILL or Redis restart to %v after it ended)%s: %d errors in all %v, %d outside %v",
		r.Config.ClaimIdle*time.Duration(r.Config.MaxDeliveries)+5*time.Second, map[bool]string{true: " but a slow one", false: ""}[robust],
		sum(r.Errors), kinds(r.Errors), sum(judged), kinds(judged))
	if robust {
		info(sum(slow) == 0, "slow answers outside a fault's shadow (timeouts, and the breaker they open): %d, %v (reported: a shared machine's load decides them; make soak judges them)",
			sum(slow), kinds(slow))
	}
	sent := r.Poison.Events + r.Poison.Malformed
	add(sent > 0 && len(r.Poison.Missing) == 0, "every poison entry in the dead-letter streams: %d sent (%d failing events, %d malformed entries), %d found%s",
		sent, r.Poison.Events, r.Poison.Malformed, r.Poison.InDLQ, listed(" — missing: ", r.Poison.Missing))
	var unclean []string
	for _, f := range r.Faults {
		if f.Exit != "" && f.Exit != "ok" {
			unclean = append(unclean, f.Kind+" "+f.Role+": "+f.Exit)
		}
	}
	add(kills >= 1 && restarts == 1 && len(unclean) == 0, "faults injected: %d (%d SIGTERM restarts, %d SIGKILL, %d Redis restart); every SIGTERM ended in a clean exit%s",
		len(r.Faults), len(r.Faults)-kills-restarts, kills, restarts, listed(" — not: ", unclean))
	r.Pass = svgchart.Passed(r.Verdicts)
}

// slowKind: caller errors that say only that an answer came late (a
// timeout, or the breaker that timeouts open).
func slowKind(kind string) bool { return kind == "timeout" || kind == "breaker_open" }

// drift compares every (process role, resource) and Redis's used_memory
// (see Drift). Unreadable samples (a worker being replaced, Redis
// restarting) are skipped. A role's process may differ at the two ends (a
// restarted worker).
//
// robust: Redis's figures are its memory overhead and its key count (a
// robust soak does not cap the streams within the run, so used_memory grows
// with them).
//
// allow, when not nil, gives a rise that passes whatever its ratio (see
// Drift.Allowed).
func drift(samples []Sample, warmup, every time.Duration, robust bool, allow func(role, res string) float64) []Drift {
	type key struct{ role, res string }
	var order []key
	ref, end := map[key][]float64{}, map[key][]float64{}
	refPid, endPid := map[string]int{}, map[string]int{} // role -> its process at each end
	n := max(3, int(warmup/every)/2)
	refHi := (warmup + every/2).Seconds()
	refLo := refHi - float64(n)*every.Seconds()
	endFrom := 0.0
	if len(samples) >= n {
		endFrom = samples[len(samples)-n].T
	}
	put := func(s *Sample, k key, v float64) {
		if !slices.Contains(order, k) {
			order = append(order, k)
		}
		if s.T > refLo && s.T <= refHi {
			ref[k] = append(ref[k], v)
		}
		if s.T >= endFrom {
			end[k] = append(end[k], v)
		}
	}
	for i := range samples {
		s := &samples[i]
		for _, p := range s.Procs {
			if !p.OK {
				continue
			}
			put(s, key{p.Role, "RSS"}, float64(p.RSS))
			if s.T > refLo && s.T <= refHi {
				refPid[p.Role] = p.Pid
			}
			if s.T >= endFrom {
				endPid[p.Role] = p.Pid
			}
			put(s, key{p.Role, "live heap"}, float64(p.HeapLive))
			put(s, key{p.Role, "goroutines"}, float64(p.Goroutines))
			put(s, key{p.Role, "descriptors"}, float64(p.FDs))
		}
		switch {
		case s.Redis.OK && robust:
			put(s, key{"redis", "used_memory_overhead"}, float64(s.Redis.Overhead))
			put(s, key{"redis", "keys"}, float64(s.Redis.Keys))
		case s.Redis.OK:
			put(s, key{"redis", "used_memory"}, float64(s.Redis.UsedMemory))
		}
	}
	var out []Drift
	for _, k := range order {
		d := Drift{What: k.role + " " + k.res}
		if allow != nil {
			d.Allowed = allow(k.role, k.res)
			if k.res == "RSS" && refPid[k.role] != endPid[k.role] {
				d.Allowed = max(d.Allowed, ReplacedRSS)
			}
		}
		if len(ref[k]) == 0 || len(end[k]) == 0 {
			out = append(out, d) // not OK: nothing to compare
			continue
		}
		d.Ref, d.End = slices.Min(ref[k]), slices.Min(end[k])
		if d.Ref > 0 {
			d.Change = (d.End - d.Ref) / d.Ref
		}
		d.OK = d.Ref > 0 && (d.Change <= MaxDrift || d.End-d.Ref <= d.Allowed)
		out = append(out, d)
	}
	return out
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// kinds prints counts by kind in a stable order ("none" when empty).
func kinds(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	out := ""
	for i, k := range ks {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%s %d", k, m[k])
	}
	return out
}

func listed(prefix string, items []string) string {
	if len(items) == 0 {
		return ""
	}
	const most = 8
	out := prefix
	for i, it := range items {
		if i == most {
			out += fmt.Sprintf(", … %d more", len(items)-most)
			break
		}
		if i > 0 {
			out += ", "
		}
		out += it
	}
	return out
}
