package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/producer"
)

// ---- quota: a fake model provider behind bus-worker processes ----
//
// The flow-control acceptance (docs/flow-control.md): a fake provider, an
// HTTP server that answers 429 (Retry-After: 1) above a quota of requests
// per second (a token bucket with a burst), above a number of concurrent
// calls, and above a token budget per minute (each call's cost drawn
// around the caller's estimate), counting each; --worker-procs
// `bus-worker serve --handler http://<provider>` processes serve the
// topic; events are published at --rate (open loop, above the quota). With
// --limits on, the topic's fleet-wide limits are set to the quota; with
// off, they are cleared. The result says how many calls the provider
// answered and refused, per second and against the quota.

// QuotaResult is the quota scenario's outcome.
type QuotaResult struct {
	Limits         bool    `json:"limits"` // the topic's limits were set to the quota
	WorkerProcs    int     `json:"worker_procs"`
	QuotaRate      float64 `json:"quota_rate_per_s"`
	QuotaBurst     int     `json:"quota_burst"`
	QuotaConc      int     `json:"quota_concurrency"`
	QuotaTokensMin float64 `json:"quota_tokens_per_min,omitempty"`
	Answered       int64   `json:"answered"` // 200s
	HTTP429        int64   `json:"http_429"` // refusals, all reasons
	Over429Rate    int64   `json:"429_rate"` // refused by the request rate
	Over429Conc    int64   `json:"429_concurrency"`
	Over429Tokens  int64   `json:"429_tokens"`
	MaxConcurrent  int64   `json:"max_concurrent"` // at the provider
	AnsweredPerS   float64 `json:"answered_per_s"`
	RateRatio      float64 `json:"rate_ratio"` // answered/s over the quota's rate
	TokensPerMin   float64 `json:"tokens_per_min,omitempty"`
	TokenRatio     float64 `json:"token_ratio,omitempty"` // tokens/min answered over the quota's
}

// provider is the fake model provider.
type provider struct {
	rate, burst     float64 // requests per second, bucket size
	conc            int64
	tokRate, tokCap float64 // tokens per second, bucket size (0: no token quota)
	latency         time.Duration

	mu              sync.Mutex
	reqs, toks      float64 // the buckets' contents
	last            time.Time
	inFlight, most  atomic.Int64
	answered        atomic.Int64
	overRate        atomic.Int64
	overConc        atomic.Int64
	overTok         atomic.Int64
	counting        atomic.Bool // the measured window
	srv             *http.Server
	addr            string
	answeredInCount atomic.Int64
	tokensInCount   atomic.Int64
}

// admit takes one request and cost tokens from the buckets, or says which
// quota refuses it.
func (pv *provider) admit(cost float64) string {
	pv.mu.Lock()
	defer pv.mu.Unlock()
	now := time.Now()
	dt := now.Sub(pv.last).Seconds()
	pv.last = now
	pv.reqs = min(pv.burst, pv.reqs+dt*pv.rate)
	if pv.tokRate > 0 {
		pv.toks = min(pv.tokCap, pv.toks+dt*pv.tokRate)
	}
	switch {
	case pv.reqs < 1:
		return "rate"
	case pv.tokRate > 0 && pv.toks < cost:
		return "tokens"
	}
	pv.reqs--
	if pv.tokRate > 0 {
		pv.toks -= cost
	}
	return ""
}

func (pv *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := pv.inFlight.Add(1)
	defer pv.inFlight.Add(-1)
	for m := pv.most.Load(); n > m && !pv.most.CompareAndSwap(m, n); m = pv.most.Load() {
	}
	est, _ := strconv.ParseFloat(r.Header.Get("X-Mycelium-Header-"+producer.CostHeader), 64)
	// The call's actual cost: its estimate, give or take half.
	cost := math.Round(est * (0.5 + rand.Float64()))
	why := ""
	if n > pv.conc {
		why = "concurrency"
	} else {
		why = pv.admit(cost)
	}
	if why != "" {
		if pv.counting.Load() {
			switch why {
			case "rate":
				pv.overRate.Add(1)
			case "tokens":
				pv.overTok.Add(1)
			default:
				pv.overConc.Add(1)
			}
		}
		w.Header().Set("Retry-After", "1")
		http.Error(w, "rate limit exceeded ("+why+")", http.StatusTooManyRequests)
		return
	}
	time.Sleep(pv.latency) // the model thinking
	if pv.counting.Load() {
		pv.answeredInCount.Add(1)
		pv.tokensInCount.Add(int64(cost))
	}
	pv.answered.Add(1)
	w.Header().Set("X-Mycelium-Cost", strconv.FormatInt(int64(cost), 10))
	_, _ = w.Write([]byte("ok"))
}

type quotaScenario struct{}

func (*quotaScenario) handler(*env) consumer.Handler { return echo } // unused: external workers

func (*quotaScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	o := e.o
	pv := &provider{rate: o.QuotaRate, burst: float64(o.QuotaBurst), conc: int64(o.QuotaConcurrency),
		tokRate: o.QuotaTokensPerMin / 60, latency: o.ProviderLatency, last: time.Now()}
	pv.reqs = pv.burst
	if pv.tokRate > 0 {
		pv.tokCap = pv.tokRate // one second's worth
		pv.toks = pv.tokCap
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	pv.addr = ln.Addr().String()
	pv.srv = &http.Server{Handler: pv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = pv.srv.Serve(ln) }()
	defer pv.srv.Close()

	l := inspect.Limits{}
	if o.Limits {
		// The limits the operator would set for this provider: its quotas,
		// the bursts a little under its own (calls granted together reach
		// it a little apart).
		l = inspect.Limits{Rate: int64(o.QuotaRate), RateInterval: time.Second, Burst: int64(max(1, o.QuotaBurst/2)),
			Concurrency: int64(o.QuotaConcurrency)}
		if o.QuotaTokensPerMin > 0 {
			l.Tokens, l.TokensInterval = int64(o.QuotaTokensPerMin), time.Minute
			l.TokensBurst = int64(max(1, pv.tokCap/4)) // and room for costs above their estimates
		}
	}
	if err := e.insp.ClearLimits(ctx, o.Topic); err != nil {
		return nil, err
	}
	if l.Set() {
		if err := e.insp.SetLimits(ctx, o.Topic, l); err != nil {
			return nil, err
		}
	}
	stop, err := startWorkerProcs(ctx, o, "http://"+pv.addr+"/v1")
	if err != nil {
		return nil, err
	}
	defer stop()

	r := newResult(e)
	tl := &e.tl
	start := time.Now()
	warm := min(o.Duration/10, 5*time.Second)
	end := start.Add(o.Duration)
	costs := rand.New(rand.NewPCG(1, 2))
	tick := time.NewTicker(time.Duration(float64(time.Second) / o.Rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	sem := make(chan struct{}, o.Concurrency)
	counted := false
	var countStart time.Time
	for now := time.Now(); now.Before(end) && ctx.Err() == nil; now = <-tick.C {
		if !counted && now.Sub(start) >= warm {
			counted, countStart = true, now
			pv.counting.Store(true)
		}
		var opts []producer.PublishOption
		if o.QuotaTokensPerMin > 0 {
			// Estimates drawn around --cost-mean (exponential: most calls
			// small, a few large, as prompts are).
			opts = append(opts, producer.Cost(int64(math.Max(1, math.Round(costs.ExpFloat64()*o.CostMean)))))
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			pctx, cancel := context.WithTimeout(ctx, o.Timeout)
			defer cancel()
			if _, err := e.p.Publish(pctx, o.Topic, []byte("prompt"), opts...); err != nil {
				tl.failed(err)
				return
			}
			tl.ok.Add(1)
		})
	}
	pv.counting.Store(false)
	window := time.Since(countStart).Seconds()
	wg.Wait()
	q := &QuotaResult{Limits: o.Limits, WorkerProcs: o.WorkerProcs, QuotaRate: o.QuotaRate, QuotaBurst: o.QuotaBurst, QuotaConc: o.QuotaConcurrency,
		QuotaTokensMin: o.QuotaTokensPerMin, Answered: pv.answeredInCount.Load(),
		Over429Rate: pv.overRate.Load(), Over429Conc: pv.overConc.Load(), Over429Tokens: pv.overTok.Load(), MaxConcurrent: pv.most.Load()}
	q.HTTP429 = q.Over429Rate + q.Over429Conc + q.Over429Tokens
	if window > 0 {
		q.AnsweredPerS = float64(q.Answered) / window
		q.RateRatio = q.AnsweredPerS / o.QuotaRate
		if o.QuotaTokensPerMin > 0 {
			q.TokensPerMin = float64(pv.tokensInCount.Load()) / window * 60
			q.TokenRatio = q.TokensPerMin / o.QuotaTokensPerMin
		}
	}
	r.Seconds = window
	r.Quota = q
	_ = e.insp.ClearLimits(context.WithoutCancel(ctx), o.Topic)
	// ok: the provider's answers in the window; errors: publishes that
	// failed (the 429s are the measure, in quota, not the bus's errors).
	return finish(e, r, q.Answered, tl.errs.Load(), tl.firstErr(), nil)
}

// startWorkerProcs starts o.WorkerProcs `bus-worker serve` processes on
// o.Topic with handler target, and waits until each is ready; stop
// interrupts them and waits.
func startWorkerProcs(ctx context.Context, o *Options, target string) (stop func(), err error) {
	bin := o.WorkerBin
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		bin = filepath.Join(filepath.Dir(self), "bus-worker")
	}
	var cmds []*exec.Cmd
	stop = func() {
		for _, c := range cmds {
			_ = c.Process.Signal(os.Interrupt)
		}
		for _, c := range cmds {
			done := make(chan struct{})
			go func() { _ = c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = c.Process.Kill()
				<-done
			}
		}
	}
	for i := range o.WorkerProcs {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			stop()
			return nil, err
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		c := exec.CommandContext(ctx, bin, "serve", "--redis", o.Redis, "--prefix", o.Prefix, "--topic", o.Topic, "--group", o.Group,
			"--concurrency", strconv.Itoa(o.WorkerSlots), "--handler", target, "--http-addr", addr,
			"--name", fmt.Sprintf("quota-%d-%d", os.Getpid(), i), "--max-deliveries", "1000",
			// Stopped once the window is measured: calls still waiting out
			// a 429's Retry-After stay pending (the case's topic is deleted
			// next) instead of holding the run for seconds.
			"--shutdown-timeout", "200ms")
		if o.PauseOn429 {
			c.Args = append(c.Args, "--http-pause-on-429")
		}
		c.Stdout, c.Stderr = nil, nil
		if err := c.Start(); err != nil {
			stop()
			return nil, fmt.Errorf("%w: start %s (--worker-bin): %w", ErrUsage, bin, err)
		}
		cmds = append(cmds, c)
		if err := waitReady(ctx, addr); err != nil {
			stop()
			return nil, err
		}
	}
	return stop, nil
}

// waitReady polls a bus-worker's /readyz until it answers 200 (at most 30 s).
func waitReady(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("a bus-worker process was not ready within 30 s")
		case <-time.After(10 * time.Millisecond): // polling a child's port: nothing to wait on
		}
	}
}
