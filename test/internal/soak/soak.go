package soak

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/metrics"
	"github.com/egos/mycelium/producer"
)

// Topics of the soak.
const (
	ReqTopic = "soak-req"
	EvTopic  = "soak-ev"
)

// callers is the fixed pool of goroutines that send the paced load: fixed,
// so the caller's goroutine count measures the bus, not the load.
const callers = 1024

// Config shapes a soak run.
type Config struct {
	Duration time.Duration // the soak, after the capacity probe
	Warmup   time.Duration // resources are compared from its end
	Window   time.Duration // the first (after warm-up) and last windows whose p99 are compared
	Sample   time.Duration // how often it records
	ProbeFor time.Duration // the capacity probe
	// Load is the fraction of the probed capacity the soak sends, in
	// messages per second; EventShare events per request.
	Load, EventShare float64
	ClaimIdle        time.Duration // the workers' --claim-idle
	Timeout          time.Duration // each request's and publish's deadline
	RestartEvery     time.Duration // a worker replaced (SIGTERM) this often
	PoisonEvery      time.Duration // a poison entry this often
	Concurrency      int           // handler slots per request worker
	// The backend's work: uniform in HandlerMean ± HandlerJitter.
	HandlerMean, HandlerJitter time.Duration
	MaxDeliveries              int
	Out                        string // soak.jsonl, report.html and the worker logs go here
	// Robust is the soak make test runs on a shared machine: it judges
	// only what load on the machine cannot decide (nothing lost or done
	// twice unexplained, every poison entry dead-lettered, no error but a
	// slow one, memory) and reports latency and timeouts. Its streams are
	// capped above everything the run writes, so that workers slowed down
	// by the machine never find unread entries trimmed; Redis's memory is
	// then judged by what is not stream data (its memory overhead: clients
	// and their buffers; and its number of keys), since the streams grow
	// through the run.
	Robust bool
}

// ConfigFor is the soak of duration d: 30 minutes samples every 10 s,
// warms up 3 minutes and compares 5-minute windows; a short soak (under
// 10 minutes, e.g. make test's 60 s) scales these down, sends less (a
// third of the capacity: a shared machine's capacity moves under it) and
// is Robust.
func ConfigFor(d time.Duration) Config {
	c := Config{Duration: d, Load: 0.5, EventShare: 0.25, Concurrency: 32, MaxDeliveries: 3,
		HandlerMean: 10 * time.Millisecond, HandlerJitter: 5 * time.Millisecond,
		Window: min(5*time.Minute, d/6), Warmup: min(3*time.Minute, d/3)}
	if d >= 10*time.Minute {
		c.Sample, c.ClaimIdle, c.Timeout, c.RestartEvery, c.PoisonEvery, c.ProbeFor = 10*time.Second, 5*time.Second, 15*time.Second, 4*time.Minute, 10*time.Second, 15*time.Second
	} else {
		c.Sample, c.ClaimIdle, c.Timeout, c.RestartEvery, c.PoisonEvery, c.ProbeFor = 2*time.Second, 2*time.Second, 8*time.Second, d/5, 2*time.Second, 4*time.Second
		c.Robust, c.Load = true, 1.0/3
	}
	return c
}

// Validate refuses a soak too short to have a warm-up and two windows.
func (c *Config) Validate() error {
	if c.Duration < time.Minute {
		return fmt.Errorf("soak: duration %v: want at least 1m", c.Duration)
	}
	if c.Warmup+2*c.Window > c.Duration || c.Sample <= 0 || c.Window < 3*c.Sample {
		return fmt.Errorf("soak: warm-up %v + 2 windows of %v do not fit in %v, or samples every %v are too coarse", c.Warmup, c.Window, c.Duration, c.Sample)
	}
	return nil
}

// Sample is one line of soak.jsonl: everything recorded at one moment.
type Sample struct {
	T      float64           `json:"t_s"` // seconds since the soak started
	Phase  string            `json:"phase"`
	Procs  []ProcSample      `json:"procs"`
	Redis  RedisSample       `json:"redis"`
	ReqPS  float64           `json:"requests_per_s"` // replies received in the interval
	EvPS   float64           `json:"events_per_s"`   // publishes acknowledged in the interval
	P50MS  float64           `json:"p50_ms"`         // of the requests answered in the interval, from when they were due
	P99MS  float64           `json:"p99_ms"`
	Errors map[string]uint64 `json:"errors,omitempty"` // caller errors in the interval, by kind
	Faults []string          `json:"faults,omitempty"` // injected in the interval
}

// RedisSample is what Redis looked like at one moment.
type RedisSample struct {
	OK         bool  `json:"ok"` // false while it restarts
	UsedMemory int64 `json:"used_memory"`
	// Overhead is used_memory_overhead: what is not data (clients and
	// their buffers, the keyspace's tables, the AOF buffer).
	Overhead     int64            `json:"used_memory_overhead"`
	Keys         int64            `json:"keys"` // DBSIZE
	Clients      int64            `json:"connected_clients"`
	Streams      map[string]int64 `json:"stream_len"` // by topic
	Pending      map[string]int64 `json:"pending"`    // by topic
	ReplyStreams int              `json:"reply_streams"`
	DeadLetters  map[string]int64 `json:"dead_letters"` // by topic
}

// run is one soak in progress.
type run struct {
	cfg   Config
	start time.Time
	srv   *redistest.Server
	c     *bus.Client
	ins   *inspect.Inspector
	roles []*role
	tl    *timeline
	req   *ledger
	ev    *ledger

	pReq, pEv *producer.Producer
	caps      map[string]int // the topics' stream caps
	jobs      chan job

	hist             metrics.Histogram // answered requests, from due time
	reqOK, evOK      atomic.Uint64
	reqSeq, evSeq    atomic.Uint64
	lastExec         atomic.Int64 // unix ns of the backend's last execution
	errMu            sync.Mutex
	errInterval      map[string]uint64
	errTotal         map[string]uint64
	errUnexplained   map[string]uint64
	poisonMu         sync.Mutex
	poisonSent       map[string]string // "p:<n>" events and "m:<n>" malformed entries -> stream entry id
	poisonDeliveries atomic.Uint64
	filler           []byte
}

type job struct {
	event bool
	id    uint64
	due   time.Time
}

// Run runs a soak and returns its result (with its verdicts). Setup
// failures fail tb; the soak's own failures are in the result.
func Run(ctx context.Context, tb testing.TB, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, errInterval: map[string]uint64{}, errTotal: map[string]uint64{}, errUnexplained: map[string]uint64{},
		poisonSent: map[string]string{}, filler: bytes.Repeat([]byte("mycelium soak "), 80)}
	r.srv = redistest.Start(tb, "--appendonly", "yes", "--appendfsync", "everysec")
	var err error
	if r.c, err = bus.Connect(ctx, bus.Config{URL: r.srv.URL, ClientName: "soak"}); err != nil {
		return nil, err
	}
	defer r.c.Close()
	r.ins = inspect.New(r.c)
	for _, t := range []string{ReqTopic, EvTopic} {
		if _, err := r.ins.CreateTopic(ctx, t, 1); err != nil {
			return nil, fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	backend := httptest.NewServer(http.HandlerFunc(r.backend))
	defer backend.Close()

	bin := redistest.Binary(tb, "bus-worker")
	common := []string{"--redis", r.srv.URL, "--handler", backend.URL, "--claim-idle", cfg.ClaimIdle.String(),
		"--max-deliveries", strconv.Itoa(cfg.MaxDeliveries)}
	r.roles = []*role{
		{name: "req-1", args: append([]string{"--topic", ReqTopic, "--concurrency", strconv.Itoa(cfg.Concurrency)}, common...)},
		{name: "req-2", args: append([]string{"--topic", ReqTopic, "--concurrency", strconv.Itoa(cfg.Concurrency)}, common...)},
		// A quarter of the slots: events arrive at a quarter of the
		// request rate, and a pool it fills often reaches its size (of
		// backend connections, of goroutines) within the warm-up.
		{name: "ev", args: append([]string{"--topic", EvTopic, "--concurrency", strconv.Itoa(max(1, cfg.Concurrency/4))}, common...)},
	}
	for _, ro := range r.roles {
		ro.bin, ro.dir = bin, cfg.Out
		p, err := ro.start(ctx)
		if err != nil {
			return nil, err
		}
		ro.swap(p)
	}
	defer func() {
		for _, ro := range r.roles {
			if p := ro.current(); p != nil {
				_ = p.terminate(time.Minute)
			}
		}
	}()

	capacity, err := r.probe(ctx)
	if err != nil {
		return nil, err
	}
	msgRate := cfg.Load * capacity
	reqRate := msgRate / (1 + cfg.EventShare)
	evRate := reqRate * cfg.EventShare
	// Streams capped at what half the warm-up brings (or the default
	// cap), so Redis's memory reaches its plateau within the warm-up; a
	// robust soak's at twice what the whole run writes, so nothing is
	// trimmed however far behind a loaded machine leaves the workers.
	capOf := func(rate float64) int {
		if cfg.Robust {
			return max(int(producer.DefaultStreamMaxLen), int(2*rate*(cfg.Duration+cfg.ProbeFor).Seconds()))
		}
		return max(1000, min(int(producer.DefaultStreamMaxLen), int(rate*cfg.Warmup.Seconds()/2)))
	}
	r.caps = map[string]int{ReqTopic: capOf(reqRate), EvTopic: capOf(evRate)}
	if r.pReq, err = producer.New(r.c, producer.Config{StreamMaxLen: int64(r.caps[ReqTopic])}); err != nil {
		return nil, err
	}
	if r.pEv, err = producer.New(r.c, producer.Config{StreamMaxLen: int64(r.caps[EvTopic])}); err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.pReq.Close(cctx)
		_ = r.pEv.Close(cctx)
	}()

	r.start = time.Now()
	r.tl = &timeline{start: r.start, handlerMax: cfg.HandlerMean + cfg.HandlerJitter, timeout: cfg.Timeout,
		grace: cfg.ClaimIdle*time.Duration(cfg.MaxDeliveries) + 5*time.Second}
	// The ring holds two minutes of traffic (and at least three request
	// timeouts): far more than any message takes to settle.
	horizon := max(2*time.Minute, 3*cfg.Timeout).Seconds()
	r.req = newLedger(r.start, int(reqRate*horizon), r.tl.explainsDuplicate)
	r.ev = newLedger(r.start, int(evRate*horizon), r.tl.explainsDuplicate)

	res := &Result{Config: cfg, CapacityMPS: capacity, RequestRate: reqRate, EventRate: evRate,
		StreamCaps: r.caps, Started: r.start}
	jl, err := os.Create(filepath.Join(cfg.Out, "soak.jsonl"))
	if err != nil {
		return nil, err
	}
	defer jl.Close()
	enc := json.NewEncoder(jl)

	r.jobs = make(chan job)
	var callersWG sync.WaitGroup
	for range callers {
		callersWG.Go(r.caller)
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var loadWG sync.WaitGroup
	loadWG.Go(func() { r.pace(loadCtx, reqRate, false) })
	loadWG.Go(func() { r.pace(loadCtx, evRate, true) })
	loadWG.Go(func() { r.poison(loadCtx) })
	faultCtx, stopFaults := context.WithCancel(ctx)
	var faultWG sync.WaitGroup
	faultErr := make(chan error, 1)
	faultWG.Go(func() {
		if err := r.injectFaults(faultCtx); err != nil {
			faultErr <- err
		}
	})
	// stopAll ends the faults, then the load, then the callers (each
	// finishing its message): on every path out of here.
	stopAll := sync.OnceFunc(func() {
		stopFaults()
		faultWG.Wait()
		stopLoad()
		loadWG.Wait()
		close(r.jobs)
		callersWG.Wait()
	})
	defer stopAll()

	// Record every Sample until the end.
	var first, last metrics.HistogramSnapshot
	prev := r.hist.Snapshot()
	var prevReq, prevEv uint64
	tick := time.NewTicker(cfg.Sample)
	end := r.start.Add(cfg.Duration)
	for stop := false; !stop; {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-faultErr:
			return nil, err
		case now := <-tick.C:
			t := now.Sub(r.start)
			// The load's figures first, at the tick: reading Redis may
			// take a while (up to 2 s while it restarts).
			cur := r.hist.Snapshot()
			rq, ev := r.reqOK.Load(), r.evOK.Load()
			delta := cur
			delta.Sub(&prev)
			prev = cur
			s := r.sample(ctx, t)
			s.P50MS, s.P99MS = ms(delta.Quantile(0.5)), ms(delta.Quantile(0.99))
			s.ReqPS, s.EvPS = float64(rq-prevReq)/cfg.Sample.Seconds(), float64(ev-prevEv)/cfg.Sample.Seconds()
			prevReq, prevEv = rq, ev
			switch from := t - cfg.Sample; {
			case from >= cfg.Warmup-cfg.Sample/2 && t <= cfg.Warmup+cfg.Window+cfg.Sample/2:
				first.Merge(&delta)
			case from >= cfg.Duration-cfg.Window-cfg.Sample/2:
				last.Merge(&delta)
			}
			s.Phase = "soak"
			if t <= cfg.Warmup+cfg.Sample/2 {
				s.Phase = "warmup"
			}
			for _, f := range r.tl.all() {
				if f.At > (t-cfg.Sample).Seconds() && f.At <= t.Seconds() {
					s.Faults = append(s.Faults, f.Kind+" "+f.Role)
				}
			}
			if err := enc.Encode(struct {
				Kind string `json:"kind"`
				Sample
			}{"sample", s}); err != nil {
				return nil, err
			}
			stop = !now.Before(end.Add(-cfg.Sample / 2))
		}
	}
	tick.Stop()
	stopAll()
	res.Elapsed = time.Since(r.start)
	r.settle(ctx)

	res.P50First, res.P99First = ms(first.Quantile(0.5)), ms(first.Quantile(0.99))
	res.P50Last, res.P99Last = ms(last.Quantile(0.5)), ms(last.Quantile(0.99))
	res.FirstN, res.LastN = first.Count, last.Count
	res.Requests, res.Events = r.req.Finalize(), r.ev.Finalize()
	res.LateReplies = r.pReq.Stats().Late
	res.Faults = r.tl.all()
	r.errMu.Lock()
	res.Errors, res.Unexplained = r.errTotal, r.errUnexplained
	r.errMu.Unlock()
	if err := r.checkPoison(ctx, res); err != nil {
		return nil, err
	}
	// The samples come back from the file: kept in memory, they would
	// grow the heap the soak judges (by ~2 KB a sample).
	if res.Samples, err = readSamples(jl.Name()); err != nil {
		return nil, err
	}
	res.judge()
	if err := enc.Encode(struct {
		Kind string `json:"kind"`
		*Result
	}{"result", res}); err != nil {
		return nil, err
	}
	return res, WriteReport(filepath.Join(cfg.Out, "report.html"), res)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// probe measures capacity: closed-loop requests from as many callers as
// the workers have handler slots, twice over, for ProbeFor (its first
// second not counted), on a producer of its own.
func (r *run) probe(ctx context.Context) (float64, error) {
	p, err := producer.New(r.c, producer.Config{})
	if err != nil {
		return 0, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Close(cctx)
	}()
	var n, fails atomic.Int64
	var counting atomic.Bool
	var first atomic.Pointer[error]
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ProbeFor)
	defer cancel()
	var wg sync.WaitGroup
	for range 4 * r.cfg.Concurrency {
		wg.Go(func() {
			for pctx.Err() == nil {
				// Each request has its own deadline, not the probe's end:
				// one cut by the probe's end would fail in the handler
				// (its deadline passed) and its remote error could reach
				// the caller before the caller's own timer fired (a
				// loaded machine fires timers late): a failure that is
				// none.
				rctx, c := context.WithTimeout(ctx, r.cfg.Timeout)
				_, err := p.Request(rctx, ReqTopic, []byte("probe"))
				c()
				switch {
				case err == nil && counting.Load():
					n.Add(1)
				case err != nil && ctx.Err() == nil:
					fails.Add(1)
					first.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	time.Sleep(time.Second) // the ramp: connections and goroutines warming up
	counting.Store(true)
	began := time.Now()
	<-pctx.Done()
	elapsed := time.Since(began)
	counting.Store(false)
	answered := n.Load()
	wg.Wait()
	n.Store(answered)
	if fails.Load() > 0 || n.Load() == 0 {
		why := ""
		if e := first.Load(); e != nil {
			why = "; the first: " + (*e).Error()
		}
		return 0, fmt.Errorf("capacity probe: %d answered, %d failed%s", n.Load(), fails.Load(), why)
	}
	return float64(n.Load()) / elapsed.Seconds(), nil
}

// pace schedules messages at rate per second (open loop): each is due at
// its time whether or not the callers keep up, and its latency counts from
// then.
func (r *run) pace(ctx context.Context, rate float64, event bool) {
	every := time.Duration(float64(time.Second) / rate)
	next := r.start
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		for now := time.Now(); !next.After(now); next = next.Add(every) {
			j := job{event: event, due: next}
			if event {
				j.id = r.evSeq.Add(1)
				r.ev.Issue(j.id, next)
			} else {
				j.id = r.reqSeq.Add(1)
				r.req.Issue(j.id, next)
			}
			select {
			case r.jobs <- j:
			case <-ctx.Done():
				// Never sent: its slot says so when it is settled.
				r.ledgerOf(event).Done(j.id, false)
				r.countError("not_sent", next, true)
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (r *run) ledgerOf(event bool) *ledger {
	if event {
		return r.ev
	}
	return r.req
}

// caller sends jobs until the channel closes.
func (r *run) caller() {
	buf := make([]byte, 0, 2048)
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	for j := range r.jobs {
		kind := byte('r')
		if j.event {
			kind = 'e'
		}
		buf = append(buf[:0], kind, ':')
		buf = strconv.AppendUint(buf, j.id, 10)
		buf = append(buf, ':')
		buf = append(buf, r.filler[:256+rnd.IntN(len(r.filler)-256)]...)
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
		var err error
		if j.event {
			_, err = r.pEv.Publish(ctx, EvTopic, buf)
		} else {
			var reply []byte
			reply, err = r.pReq.Request(ctx, ReqTopic, buf)
			if err == nil && string(reply) != "ok:"+strconv.FormatUint(j.id, 10) {
				err = fmt.Errorf("%w: %q for request %d", errWrongReply, reply, j.id)
			}
		}
		cancel()
		r.ledgerOf(j.event).Done(j.id, err == nil)
		switch {
		case err != nil:
			r.countError(errKind(err), j.due, false)
		case j.event:
			r.evOK.Add(1)
		default:
			r.reqOK.Add(1)
			r.hist.Record(time.Since(j.due))
		}
	}
}

var errWrongReply = errors.New("wrong reply")

// errKind names an error for the counts by kind.
func errKind(err error) string {
	var re *bus.RemoteError
	switch {
	case errors.Is(err, errWrongReply):
		return "wrong_reply"
	case errors.As(err, &re):
		return "remote_" + string(re.Code)
	case errors.Is(err, bus.ErrBreakerOpen):
		return "breaker_open"
	case errors.Is(err, bus.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, bus.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, bus.ErrNoResponders):
		return "no_responders"
	default:
		return "other"
	}
}

// countError counts one caller error; one outside every disruptive fault's
// shadow is unexplained (fatal for the soak) unless forgiven.
func (r *run) countError(kind string, due time.Time, forgiven bool) {
	explained := forgiven || (kind != "wrong_reply" && r.tl.explainsError(int64(due.Sub(r.start))))
	r.errMu.Lock()
	r.errInterval[kind]++
	r.errTotal[kind]++
	if !explained {
		r.errUnexplained[kind]++
	}
	r.errMu.Unlock()
}

// backend is the workers' HTTP backend: it records each execution, works
// HandlerMean ± HandlerJitter, and answers requests with "ok:<id>"; poison
// events it refuses with a 500, every time.
func (r *run) backend(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		return
	}
	now := time.Now()
	r.lastExec.Store(now.UnixNano())
	if string(body) == "probe" {
		if r.work(req.Context()) {
			_, _ = w.Write(body)
		}
		return
	}
	if len(body) < 4 || body[1] != ':' {
		http.Error(w, "not a soak message", http.StatusBadRequest)
		return
	}
	if body[0] == 'p' {
		r.poisonDeliveries.Add(1)
		http.Error(w, "poison", http.StatusInternalServerError)
		return
	}
	idText, _, _ := bytes.Cut(body[2:], []byte(":"))
	id, err := strconv.ParseUint(string(idText), 10, 64)
	if err != nil {
		http.Error(w, "bad id", http.StatusBadRequest)
		return
	}
	switch body[0] {
	case 'r':
		r.req.Executed(id, now)
	case 'e':
		r.ev.Executed(id, now)
	default:
		http.Error(w, "unknown kind", http.StatusBadRequest)
		return
	}
	if !r.work(req.Context()) {
		return
	}
	if body[0] == 'r' {
		_, _ = w.Write(append([]byte("ok:"), idText...))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// work takes HandlerMean ± HandlerJitter, or until ctx ends (false).
func (r *run) work(ctx context.Context) bool {
	t := time.NewTimer(r.cfg.HandlerMean - r.cfg.HandlerJitter + rand.N(2*r.cfg.HandlerJitter+1))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// poison sends a poison entry every PoisonEvery, alternating an event its
// handler always fails (dead-lettered after MaxDeliveries) and a malformed
// entry written straight onto the request stream (dead-lettered at once).
func (r *run) poison(ctx context.Context) {
	tick := time.NewTicker(r.cfg.PoisonEvery)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		wctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		var key, id string
		var err error
		if n%2 == 1 {
			key = "p:" + strconv.Itoa(n)
			id, err = r.pEv.Publish(wctx, EvTopic, []byte(key+":poison"))
		} else {
			key = "m:" + strconv.Itoa(n)
			rc := r.c.Redis()
			id, err = rc.Do(wctx, rc.B().Xadd().Key(r.c.Keys().Topic(ReqTopic)).Id("*").FieldValue().FieldValue("soak", key).Build()).ToString()
		}
		cancel()
		if err == nil {
			r.poisonMu.Lock()
			r.poisonSent[key] = id
			r.poisonMu.Unlock()
		}
	}
}

// settle waits until nothing is pending or undelivered on either topic
// and the backend has been idle for a second: the last retries and dead
// letters have happened. It gives up after ClaimIdle × (MaxDeliveries+2) +
// 10 s without progress (the backend idle and the backlog not shrinking),
// and after 3 minutes in all: a loaded machine may have left the workers
// a backlog to finish.
func (r *run) settle(ctx context.Context) {
	quiet := r.cfg.ClaimIdle*time.Duration(r.cfg.MaxDeliveries+2) + 10*time.Second
	began, progressed := time.Now(), time.Now()
	least := int64(-1)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Since(progressed) < quiet && time.Since(began) < 3*time.Minute {
		idle := time.Since(time.Unix(0, r.lastExec.Load())) > time.Second
		left := int64(0) // pending, undelivered and delayed entries
		for _, t := range []string{ReqTopic, EvTopic} {
			tp, err := r.ins.Topic(ctx, t)
			if err != nil {
				left++
				continue
			}
			left += tp.Delayed
			for _, g := range tp.Groups {
				left += g.Pending + max(g.Lag, 0)
			}
		}
		if idle && left == 0 {
			return
		}
		if !idle || least < 0 || left < least {
			progressed = time.Now()
		}
		if least < 0 || left < least {
			least = left
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// checkPoison looks for every poison entry sent in the dead-letter streams,
// and says for each one missing what became of it.
func (r *run) checkPoison(ctx context.Context, res *Result) error {
	found := map[string]bool{}
	for _, t := range []string{ReqTopic, EvTopic} {
		dls, err := r.ins.DeadLetters(ctx, t, 0)
		if err != nil {
			return err
		}
		for _, d := range dls {
			if d.Envelope != nil {
				if k, _, ok := bytes.Cut(d.Envelope.Payload, []byte(":poison")); ok {
					found[string(k)] = true
				}
			}
			for _, v := range d.Fields {
				found[v] = true
			}
		}
	}
	r.poisonMu.Lock()
	defer r.poisonMu.Unlock()
	for k, id := range r.poisonSent {
		if k[0] == 'p' {
			res.Poison.Events++
		} else {
			res.Poison.Malformed++
		}
		if found[k] {
			res.Poison.InDLQ++
			continue
		}
		topic := ReqTopic
		if k[0] == 'p' {
			topic = EvTopic
		}
		res.Poison.Missing = append(res.Poison.Missing, k+" ("+r.whereIs(ctx, topic, id)+")")
	}
	slices.Sort(res.Poison.Missing)
	res.Poison.Deliveries = r.poisonDeliveries.Load()
	return nil
}

// whereIs says what became of the entry id of topic that is not in the
// dead letters: still in the stream (pending, or never delivered), trimmed
// away unread (older than the stream's first entry), or deleted.
func (r *run) whereIs(ctx context.Context, topic, id string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc := r.c.Redis()
	key := r.c.Keys().Topic(topic)
	entries, err := rc.Do(ctx, rc.B().Xrange().Key(key).Start(id).End(id).Build()).ToArray()
	if err != nil {
		return "unknown: " + err.Error()
	}
	tp, err := r.ins.Topic(ctx, topic)
	if err != nil {
		return "unknown: " + err.Error()
	}
	if len(entries) > 0 {
		for _, g := range tp.Groups {
			p, err := rc.Do(ctx, rc.B().Xpending().Key(key).Group(g.Name).Start(id).End(id).Count(1).Build()).ToArray()
			if err == nil && len(p) == 1 {
				return "entry " + id + " still in the stream, delivered and not finished (group " + g.Name + ")"
			}
		}
		return "entry " + id + " still in the stream, not delivered or acknowledged without a dead letter"
	}
	if tp.FirstID == "" || redisx.CompareIDs(id, tp.FirstID) < 0 {
		return fmt.Sprintf("entry %s trimmed before it was dead-lettered: the stream's first entry is %q, its cap %d", id, tp.FirstID, r.caps[topic])
	}
	return "entry " + id + " deleted from the stream, not in the dead letters"
}

// sample records the processes, Redis and the caller errors now.
func (r *run) sample(ctx context.Context, t time.Duration) Sample {
	s := Sample{T: t.Seconds()}
	r.errMu.Lock()
	if len(r.errInterval) > 0 {
		s.Errors, r.errInterval = r.errInterval, map[string]uint64{}
	}
	r.errMu.Unlock()
	s.Procs = []ProcSample{selfSample()}
	for _, ro := range r.roles {
		if p := ro.current(); p != nil {
			s.Procs = append(s.Procs, p.sample(ro.name))
		}
	}
	s.Redis = r.redisSample(ctx)
	return s
}

func (r *run) redisSample(ctx context.Context) RedisSample {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s := RedisSample{Streams: map[string]int64{}, Pending: map[string]int64{}, DeadLetters: map[string]int64{}}
	rc := r.c.Redis()
	info, err := rc.Do(ctx, rc.B().Info().Section("memory", "clients").Build()).ToString()
	if err != nil {
		return s
	}
	for line := range strings.Lines(info) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "used_memory":
			s.UsedMemory, _ = strconv.ParseInt(v, 10, 64)
		case "used_memory_overhead":
			s.Overhead, _ = strconv.ParseInt(v, 10, 64)
		case "connected_clients":
			s.Clients, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	for _, name := range []string{ReqTopic, EvTopic} {
		tp, err := r.ins.Topic(ctx, name)
		if err != nil {
			return s
		}
		s.Streams[name], s.DeadLetters[name] = tp.Length, tp.DeadLetters
		for _, g := range tp.Groups {
			s.Pending[name] += g.Pending
		}
	}
	rs, err := r.ins.ReplyStreams(ctx)
	if err != nil {
		return s
	}
	if s.Keys, err = rc.Do(ctx, rc.B().Dbsize().Build()).AsInt64(); err != nil {
		return s
	}
	s.ReplyStreams = len(rs)
	s.OK = s.UsedMemory > 0
	return s
}

// planned is one fault of the schedule.
type planned struct {
	at   time.Duration
	kind string
	role int // index in run.roles
}

// plan is the fault schedule: a worker replaced every RestartEvery (the
// event worker, then each request worker, in turn; none in the second half
// of the warm-up, whose end is the reference a fresh process would not
// have reached yet), one Redis restart and one SIGKILL of a request worker
// between the end of the first window and the start of the last (at 30%
// and 60% of that stretch), and no two faults within 5 s of each other.
func (c *Config) plan() []planned {
	mid0, mid1 := c.Warmup+c.Window, c.Duration-c.Window
	ps := []planned{
		{at: mid0 + (mid1-mid0)*3/10, kind: FaultRedisRestart, role: -1},
		{at: mid0 + (mid1-mid0)*6/10, kind: FaultKill, role: 1},
	}
	order := []int{2, 0, 1}
	k := 0
	for t := c.RestartEvery; t < c.Duration-c.Sample; t += c.RestartEvery {
		clash := t > c.Warmup/2 && t <= c.Warmup
		for _, p := range ps[:2] {
			if d := t - p.at; d > -5*time.Second && d < 5*time.Second {
				clash = true
			}
		}
		if !clash {
			ps = append(ps, planned{at: t, kind: FaultRestart, role: order[k%len(order)]})
			k++
		}
	}
	slices.SortFunc(ps, func(a, b planned) int { return cmp.Compare(a.at, b.at) })
	return ps
}

// injectFaults carries out the schedule until ctx ends.
func (r *run) injectFaults(ctx context.Context) error {
	for _, p := range r.cfg.plan() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(r.start.Add(p.at))):
		}
		var err error
		switch p.kind {
		case FaultRedisRestart:
			err = r.restartRedis()
		default:
			err = r.replace(ctx, r.roles[p.role], p.kind == FaultKill)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p.kind, err)
		}
	}
	return nil
}

func (r *run) since() float64 { return time.Since(r.start).Seconds() }

// replace starts a new process for ro and stops the old one: SIGTERM after
// the new one is ready (a rolling restart), or SIGKILL and then the new one.
func (r *run) replace(ctx context.Context, ro *role, kill bool) error {
	old := ro.current()
	st, _ := old.ReadStats()
	if kill {
		i := r.tl.begin(Fault{Kind: FaultKill, Role: ro.name, At: r.since(), InFlight: st.InFlight})
		old.kill()
		p, err := ro.start(ctx)
		if err != nil {
			return err
		}
		ro.swap(p)
		r.tl.finish(i, r.since(), "")
		return nil
	}
	p, err := ro.start(ctx)
	if err != nil {
		return err
	}
	ro.swap(p)
	i := r.tl.begin(Fault{Kind: FaultRestart, Role: ro.name, At: r.since(), InFlight: st.InFlight})
	exit := "ok"
	if err := old.terminate(time.Minute); err != nil {
		exit = err.Error()
	}
	r.tl.finish(i, r.since(), exit)
	return nil
}

// restartRedis sends redis-server SIGTERM (it writes its AOF and exits)
// and starts it again on the same port and files.
func (r *run) restartRedis() error {
	i := r.tl.begin(Fault{Kind: FaultRedisRestart, At: r.since()})
	exit := "ok"
	if err := r.srv.Shutdown(); err != nil {
		exit = err.Error()
	}
	if err := r.srv.Relaunch(); err != nil {
		return err
	}
	r.tl.finish(i, r.since(), exit)
	return nil
}

// readSamples reads the sample lines of a soak.jsonl.
func readSamples(path string) ([]Sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Sample
	dec := json.NewDecoder(f)
	for {
		var line struct {
			Kind string `json:"kind"`
			Sample
		}
		if err := dec.Decode(&line); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if line.Kind == "sample" {
			out = append(out, line.Sample)
		}
	}
}
