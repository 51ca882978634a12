package soak

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
)

func TestConfigFor(t *testing.T) {
	for _, d := range []time.Duration{time.Minute, 2 * time.Minute, 10 * time.Minute, 30 * time.Minute, 2 * time.Hour} {
		c := ConfigFor(d)
		if err := c.Validate(); err != nil {
			t.Errorf("ConfigFor(%v): %v", d, err)
		}
		plan := c.plan()
		kinds := map[string]int{}
		for i, p := range plan {
			kinds[p.kind]++
			if p.at <= 0 || p.at >= d {
				t.Errorf("%v: fault %s at %v outside the run", d, p.kind, p.at)
			}
			if i > 0 && p.at-plan[i-1].at < 5*time.Second {
				t.Errorf("%v: faults %v apart", d, p.at-plan[i-1].at)
			}
			if p.kind != FaultRestart && (p.at < c.Warmup+c.Window || p.at > d-c.Window) {
				t.Errorf("%v: %s at %v inside a compared window", d, p.kind, p.at)
			}
		}
		if kinds[FaultRedisRestart] != 1 || kinds[FaultKill] != 1 || kinds[FaultRestart] < 2 {
			t.Errorf("%v: plan %v", d, kinds)
		}
	}
	if c := ConfigFor(30 * time.Second); c.Validate() == nil {
		t.Error("a 30s soak validated")
	}
}

func TestLedger(t *testing.T) {
	start := time.Now()
	at := func(s float64) time.Time { return start.Add(time.Duration(s * float64(time.Second))) }
	tl := &timeline{start: start, handlerMax: 15 * time.Millisecond, timeout: 8 * time.Second, grace: 11 * time.Second}
	i := tl.begin(Fault{Kind: FaultKill, At: 10})
	tl.finish(i, 10.5, "")
	l := newLedger(start, 4, tl.explainsDuplicate) // 1024 slots
	// 1: answered once. 2: executed twice, first just before the kill
	// (explained). 3: executed twice long before it (not). 4: an acked
	// event never executed (lost). 5: failed, executed. 6: never finished.
	for id := uint64(1); id <= 6; id++ {
		l.Issue(id, at(1))
	}
	l.Executed(1, at(2))
	l.Done(1, true)
	l.Executed(2, at(9.995))
	l.Executed(2, at(12.5))
	l.Done(2, true)
	l.Executed(3, at(3))
	l.Executed(3, at(4))
	l.Done(3, true)
	l.Done(4, true)
	l.Executed(5, at(6))
	l.Done(5, false)
	l.Executed(99, at(6)) // never issued
	got := l.Finalize()
	want := Tally{Issued: 6, Answered: 4, Failed: 1, Executed: 4, Duplicates: 2, Explained: 1, Lost: 1, FailedExecuted: 1, Unfinished: 1, Stray: 1}
	if got != want {
		t.Fatalf("tally\n got %+v\nwant %+v", got, want)
	}
	// Reusing a slot settles its old message (the ring wraps at 1024).
	l2 := newLedger(start, 1, nil)
	l2.Issue(1, at(0))
	l2.Executed(1, at(0))
	l2.Done(1, true)
	l2.Issue(1025, at(1))
	l2.Executed(1, at(2)) // its slot holds 1025 now: a stray execution
	if s := l2.Snapshot(); s.Answered != 1 || s.Executed != 1 || s.Stray != 1 {
		t.Fatalf("after wrap: %+v", s)
	}
}

func TestTimelineShadows(t *testing.T) {
	tl := &timeline{handlerMax: 15 * time.Millisecond, timeout: 8 * time.Second, grace: 11 * time.Second}
	i := tl.begin(Fault{Kind: FaultRedisRestart, At: 100})
	if !tl.explainsError(int64(150 * time.Second)) {
		t.Error("an error while the restart is in progress is in its shadow")
	}
	tl.finish(i, 101, "ok")
	tl.begin(Fault{Kind: FaultRestart, At: 200, End: 201})
	for _, c := range []struct {
		due  float64
		want bool
	}{{91, false}, {92.5, true}, {101, true}, {111.9, true}, {112.5, false}, {200.5, false}} {
		if got := tl.explainsError(int64(c.due * 1e9)); got != c.want {
			t.Errorf("error due at %vs explained = %v, want %v", c.due, got, c.want)
		}
	}
}

func TestDriftAndVerdicts(t *testing.T) {
	cfg := ConfigFor(time.Minute)
	var samples []Sample
	for ts := 2.0; ts <= 60; ts += 2 {
		heap := uint64(10 << 20)
		if ts > 40 {
			heap = 13 << 20 // +30%, 3 MiB: a leak past HeapInFlight
		}
		samples = append(samples, Sample{T: ts, ReqPS: 100, P50MS: 12, P99MS: 20, Procs: []ProcSample{
			{Role: "caller", OK: true, RSS: 50 << 20, HeapLive: heap, Goroutines: 1100, FDs: 40},
			{Role: "req-1", OK: ts != 30, RSS: 30 << 20, HeapLive: 5 << 20, Goroutines: 90, FDs: 20},
		}, Redis: RedisSample{OK: true, UsedMemory: 100 << 20, Overhead: 3 << 20, Keys: 12}})
	}
	res := &Result{Config: cfg, Samples: samples, FirstN: 100, LastN: 100, P99First: 20, P99Last: 25,
		Requests: Tally{Issued: 10, Answered: 10, Executed: 10}, Events: Tally{Issued: 5, Answered: 5, Executed: 5},
		Poison: PoisonResult{Events: 2, Malformed: 2, InDLQ: 4},
		Faults: []Fault{{Kind: FaultKill, At: 40, End: 41}, {Kind: FaultRedisRestart, At: 36, End: 37, Exit: "ok"}, {Kind: FaultRestart, At: 30, End: 31, Exit: "ok"}}}
	res.judge()
	if res.Pass {
		t.Fatal("a 30% (3 MiB) heap rise passed")
	}
	var out []string
	for _, d := range res.Drift {
		if !d.OK {
			out = append(out, d.What)
		}
	}
	if strings.Join(out, ",") != "caller live heap" {
		t.Fatalf("drift out: %v (%+v)", out, res.Drift)
	}
	for _, v := range res.Verdicts[1:] {
		if !v.OK {
			t.Errorf("verdict failed: %s", v.Text)
		}
	}
	// A worker replaced during the run (another pid at the end): its RSS
	// rising 15% over its predecessor's passes in a robust soak, not in a
	// long one; the same rise of the same process fails either way.
	for _, replaced := range []bool{true, false} {
		var ss []Sample
		for ts := 2.0; ts <= 60; ts += 2 {
			pid, rss := 10, uint64(30<<20)
			if ts > 30 {
				rss = 35328 << 10 // +15%, 4.5 MiB
				if replaced {
					pid = 11
				}
			}
			ss = append(ss, Sample{T: ts, Procs: []ProcSample{{Role: "ev", Pid: pid, OK: true, RSS: rss, HeapLive: 4 << 20, Goroutines: 40, FDs: 20}}})
		}
		for _, robust := range []bool{true, false} {
			var allow func(role, res string) float64
			if robust {
				allow = cfg.allowance
			}
			for _, d := range drift(ss, cfg.Warmup, cfg.Sample, robust, allow) {
				if d.What == "ev RSS" && d.OK != (replaced && robust) {
					t.Errorf("replaced %v, robust %v: ev RSS +%.0f%% judged OK=%v", replaced, robust, 100*d.Change, d.OK)
				}
			}
		}
	}
	// The report draws every figure from these samples.
	path := filepath.Join(t.TempDir(), "report.html")
	if err := WriteReport(path, res); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if figs, svgs := strings.Count(string(b), "<figure id="), strings.Count(string(b), "<svg"); figs < 10 || svgs != figs-1 {
		// errors: none in this run, so its figure says so without an SVG
		t.Fatalf("%d figures, %d SVGs", figs, svgs)
	}
	if !strings.Contains(string(b), "FAIL") {
		t.Fatal("the report does not say FAIL")
	}
}

// TestProcResources reads this process's resources from /proc.
func TestProcResources(t *testing.T) {
	runtime.GC() // the live heap is what the last GC marked: none ran yet in a fresh test binary
	s := selfSample()
	if !s.OK || s.RSS < 1<<20 || s.FDs < 3 || s.HeapLive == 0 || s.Goroutines < 1 {
		t.Fatalf("self sample %+v", s)
	}
	if _, _, err := procResources(1 << 30); err == nil {
		t.Fatal("no error for a missing process")
	}
	_ = redistest.RequireEnv
}

func TestReadSamples(t *testing.T) {
	path := filepath.Join(t.TempDir(), "soak.jsonl")
	body := `{"kind":"sample","t_s":2,"phase":"warmup","procs":[{"role":"caller","pid":1,"rss_bytes":5,"ok":true}],"redis":{"ok":true,"used_memory":7}}
{"kind":"sample","t_s":4,"phase":"soak","procs":null,"redis":{"ok":false},"errors":{"timeout":3}}
{"kind":"result","pass":true}
`
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readSamples(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Procs[0].RSS != 5 || got[0].Redis.UsedMemory != 7 || got[1].Errors["timeout"] != 3 || got[1].Phase != "soak" {
		t.Fatalf("read %+v", got)
	}
	if err := os.WriteFile(path, []byte(`{"kind":"sample","t_s":`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSamples(path); err == nil {
		t.Fatal("no error for a cut line")
	}
}

// TestRobustVerdicts: the soak make test runs judges what load on a shared
// machine cannot decide. A p99 five times the first window's and timeouts
// outside every fault's shadow are reported, not failed; streams that grow
// through the run (uncapped) do not count as Redis memory; a wrong reply, a
// loss, a missing poison entry and a leak still fail it.
func TestRobustVerdicts(t *testing.T) {
	cfg := ConfigFor(time.Minute)
	if !cfg.Robust {
		t.Fatal("the 60 s soak is not robust")
	}
	if long := ConfigFor(30 * time.Minute); long.Robust {
		t.Fatal("the 30 minute soak is robust: it must judge latency")
	}
	samples := func(leak bool) []Sample {
		var out []Sample
		for ts := 2.0; ts <= 60; ts += 2 {
			streams := int64(ts * float64(1<<20)) // grows 1 MiB every second: never trimmed
			overhead, keys := int64(4<<20), int64(12)
			if leak && ts > 40 {
				keys = 20 // eight keys that should not be there (past the RedisKeys a topic may gain)
			}
			out = append(out, Sample{T: ts, Procs: []ProcSample{{Role: "caller", OK: true, RSS: 50 << 20, HeapLive: 10 << 20, Goroutines: 1100, FDs: 40}},
				Redis: RedisSample{OK: true, UsedMemory: streams + overhead, Overhead: overhead, Keys: keys}})
		}
		return out
	}
	base := func() *Result {
		return &Result{Config: cfg, Samples: samples(false), FirstN: 100, LastN: 100, P99First: 20, P99Last: 100,
			Requests: Tally{Issued: 10, Answered: 8, Failed: 2, Executed: 10}, Events: Tally{Issued: 5, Answered: 5, Executed: 5},
			Errors: map[string]uint64{"timeout": 2}, Unexplained: map[string]uint64{"timeout": 1, "breaker_open": 1},
			Poison: PoisonResult{Events: 2, Malformed: 2, InDLQ: 4},
			Faults: []Fault{{Kind: FaultKill, At: 40, End: 41}, {Kind: FaultRedisRestart, At: 36, End: 37, Exit: "ok"}, {Kind: FaultRestart, At: 30, End: 31, Exit: "ok"}}}
	}
	res := base()
	res.judge()
	if !res.Pass {
		t.Fatalf("robust soak with slow answers failed: %+v", res.Verdicts)
	}
	infos := 0
	for _, v := range res.Verdicts {
		if v.Info {
			infos++
			if v.OK {
				t.Errorf("INFO verdict %q says OK; it measured a miss", v.Text)
			}
		}
	}
	if infos != 2 {
		t.Errorf("%d INFO verdicts, want 2 (p99 and slow answers): %+v", infos, res.Verdicts)
	}
	for name, spoil := range map[string]func(r *Result){
		"wrong reply": func(r *Result) { r.Unexplained["wrong_reply"] = 1 },
		"unavailable": func(r *Result) { r.Unexplained["unavailable"] = 1 },
		"lost event":  func(r *Result) { r.Events.Lost = 1 },
		"missing poison": func(r *Result) {
			r.Poison.InDLQ, r.Poison.Missing = 3, []string{"p:3 (entry 1-0 trimmed before it was dead-lettered)"}
		},
		"redis leak":       func(r *Result) { r.Samples = samples(true) },
		"unexplained dup":  func(r *Result) { r.Requests.Duplicates = 1 },
		"unclean shutdown": func(r *Result) { r.Faults[2].Exit = "exit status 1" },
	} {
		r := base()
		spoil(r)
		r.judge()
		if r.Pass {
			t.Errorf("%s: the robust soak passed", name)
		}
	}
	// A worker's pool of backend connections filled by a burst: within its
	// slots in a robust soak; a rise past them fails it.
	pool := func(extra int) *Result {
		r := base()
		for i := range r.Samples {
			g, fds := 120, 45
			if r.Samples[i].T > 40 {
				g, fds = g+2*extra, fds+extra
			}
			r.Samples[i].Procs = append(r.Samples[i].Procs, ProcSample{Role: "req-2", OK: true, RSS: 30 << 20, HeapLive: 4 << 20, Goroutines: g, FDs: fds})
		}
		return r
	}
	filled := pool(cfg.Concurrency)
	filled.judge()
	if !filled.Pass {
		t.Errorf("a worker's backend pool filling within its %d slots failed the robust soak: %+v", cfg.Concurrency, filled.Drift)
	}
	leaking := pool(cfg.Concurrency + 10)
	leaking.judge()
	if leaking.Pass {
		t.Error("a worker's goroutines rising past its slots' pool passed the robust soak")
	}
	// A live heap that a GC finds with or without a read batch in flight
	// (3.4 or 4.3 MB from one sample to the next, the last samples all
	// high): within HeapInFlight in a robust soak; a steady rise past it
	// fails it.
	heap := func(high func(t float64) uint64) *Result {
		r := base()
		for i := range r.Samples {
			t := r.Samples[i].T
			r.Samples[i].Procs = append(r.Samples[i].Procs, ProcSample{Role: "ev", OK: true, RSS: 30 << 20, HeapLive: high(t), Goroutines: 40, FDs: 20})
		}
		return r
	}
	bimodal := heap(func(t float64) uint64 {
		if t > 50 || int(t)%4 == 0 {
			return 4300 << 10
		}
		return 3400 << 10
	})
	bimodal.judge()
	if !bimodal.Pass {
		t.Errorf("a live heap with a read batch in flight at the last GCs failed the robust soak: %+v", bimodal.Drift)
	}
	rising := heap(func(t float64) uint64 { return 3400<<10 + uint64(t*float64(60<<10)) })
	rising.judge()
	if rising.Pass {
		t.Error("a live heap rising 60 KiB a second passed the robust soak")
	}
	// The long soak judges what the robust one reports.
	long := base()
	long.Config = ConfigFor(30 * time.Minute)
	long.judge()
	if long.Pass {
		t.Error("the 30 minute soak passed a p99 five times the first window's and timeouts outside every shadow")
	}
}

// TestWhereIsPoison: a poison entry missing from the dead letters is
// explained: trimmed unread, still pending, or never delivered.
func TestWhereIsPoison(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	r := &run{c: c, ins: inspect.New(c), caps: map[string]int{EvTopic: 3}}
	if _, err := r.ins.CreateTopic(ctx, EvTopic, 1); err != nil {
		t.Fatal(err)
	}
	rc := c.Redis()
	key := c.Keys().Topic(EvTopic)
	add := func() string {
		id, err := rc.Do(ctx, rc.B().Xadd().Key(key).Id("*").FieldValue().FieldValue("soak", "x").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	trimmed, pending, waiting := add(), add(), add()
	if err := rc.Do(ctx, rc.B().XgroupCreate().Key(key).Group("g").Id("0").Mkstream().Build()).Error(); err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
		t.Fatal(err)
	}
	// Deliver the first two, then trim the first away.
	if err := rc.Do(ctx, rc.B().Xreadgroup().Group("g", "c").Count(2).Streams().Key(key).Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(ctx, rc.B().Xtrim().Key(key).Maxlen().Threshold("2").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{trimmed: "trimmed before it was dead-lettered", pending: "delivered and not finished", waiting: "not delivered"} {
		if got := r.whereIs(ctx, EvTopic, id); !strings.Contains(got, want) {
			t.Errorf("whereIs(%s) = %q, want it to say %q", id, got, want)
		}
	}
}

// TestMakeTestRunsTheSoakLast: the soak make test runs comes after the
// secure and Python runs, so a soak failure never hides theirs.
func TestMakeTestRunsTheSoakLast(t *testing.T) {
	b, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	_, recipe, ok := strings.Cut(string(b), "\ntest: ")
	if !ok {
		t.Fatal("no test target in the Makefile")
	}
	recipe, _, _ = strings.Cut(recipe, "\n\n")
	lines := strings.Split(strings.TrimSpace(recipe), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, "soak-short") || strings.Count(recipe, "soak-short") != 1 {
		t.Fatalf("make test's last step is %q; want soak-short, once, after test-secure and test-python", last)
	}
	for _, step := range []string{"test-secure", "test-python"} {
		if !strings.Contains(recipe, step) {
			t.Errorf("make test does not run %s", step)
		}
	}
}
