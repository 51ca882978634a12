package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/producer"
)

// ---- priority and tenants: scheduling (docs/scheduling.md) ----
//
// priority: the topic gets --priorities levels (weighted, or --strict);
// --flood events are queued at the least urgent level, then requests are
// sent at level 0 at --rate for --duration: their queue wait (from the
// producer's encoding to a handler's pick-up) is the measure. With
// --all-levels every level is flooded instead, and the result gives each
// level's share of the entries handled during --duration against its
// weight's.
//
// tenants: the topic gets --partitions (16) and, with --fairness on,
// --fair-shards (2) per tenant; tenant A floods --flood events, tenants B
// to E send requests at --rate each for --duration: their queue wait,
// with fairness on and off.

// SchedResult is what a priority or tenants run measured.
type SchedResult struct {
	Levels  int   `json:"levels,omitempty"`
	Strict  bool  `json:"strict,omitempty"`
	Weights []int `json:"weights,omitempty"`
	// Flood: events queued at the least urgent level (priority), or by
	// tenant A (tenants), before the measured requests; FloodLeft: of
	// them, still queued when the run ended (0: the flood drained before
	// the end, and the later requests met no backlog).
	Flood     int   `json:"flood"`
	FloodLeft int64 `json:"flood_left"`
	// Queue wait of the measured requests (level 0, or tenants B to E):
	// from their encoding to a handler's pick-up.
	QueueWaitP50US int64 `json:"queue_wait_p50_us"`
	QueueWaitP99US int64 `json:"queue_wait_p99_us"`
	QueueWaitMaxUS int64 `json:"queue_wait_max_us"`
	HandlerUS      int64 `json:"handler_us,omitempty"` // the handler's time (--handler sleep:D)
	// AllLevels (priority): every level flooded; HandledByLevel counts the
	// entries handled during the measured run by level, Shares their
	// shares and WeightShares the weights'.
	AllLevels      bool      `json:"all_levels,omitempty"`
	HandledByLevel []int64   `json:"handled_by_level,omitempty"`
	Shares         []float64 `json:"shares,omitempty"`
	WeightShares   []float64 `json:"weight_shares,omitempty"`
	// Tenants: fairness on (shards per tenant) or off, the partitions,
	// and each trickling tenant's queue wait.
	Fairness   string         `json:"fairness,omitempty"`
	Shards     int            `json:"shards,omitempty"`
	Partitions int            `json:"partitions,omitempty"`
	Tenants    []TenantResult `json:"tenants,omitempty"`
}

// TenantResult is one trickling tenant's queue wait.
type TenantResult struct {
	Tenant         string `json:"tenant"`
	Requests       int    `json:"requests"`
	QueueWaitP50US int64  `json:"queue_wait_p50_us"`
	QueueWaitP99US int64  `json:"queue_wait_p99_us"`
}

// schedScenario runs priority and tenants (tenants: true).
type schedScenario struct {
	tenants bool

	mu      sync.Mutex
	waits   map[string][]int64 // queue waits of the measured requests, by tenant ("" for priority)
	counted atomic.Bool        // the measured window
	byLevel [bus.MaxPriorities]atomic.Int64
	flood   atomic.Int64 // flood events handled
}

// ownWork: the scenario's handler does the --handler work itself, after
// it took the pick-up time.
func (*schedScenario) ownWork() {}

func (s *schedScenario) handler(e *env) consumer.Handler {
	s.waits = map[string][]int64{}
	return consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		wait := time.Since(m.Sent)
		level, _ := strconv.Atoi(m.Headers[bus.PriorityHeader])
		if s.counted.Load() && level >= 0 && level < len(s.byLevel) {
			s.byLevel[level].Add(1)
		}
		if m.Request {
			s.mu.Lock()
			t := m.Headers[bus.TenantHeader]
			s.waits[t] = append(s.waits[t], int64(wait))
			s.mu.Unlock()
		} else {
			s.flood.Add(1)
		}
		if e.o.Work != nil {
			if err := e.o.Work.Wait(ctx); err != nil {
				return nil, err
			}
		}
		return m.Payload, nil
	})
}

// schedule sets the topic's scheduling before the workers start: a fresh
// topic (levels are never lowered, and an earlier run's backlog would
// count).
func schedule(ctx context.Context, e *env) error {
	o := e.o
	if err := e.insp.DeleteTopic(ctx, o.Topic); err != nil {
		return err
	}
	parts := max(o.Partitions, 1)
	if _, err := e.insp.CreateTopic(ctx, o.Topic, parts); err != nil {
		return err
	}
	s := inspect.Scheduling{Levels: max(o.Priorities, 1), Strict: o.PriorityStrict}
	if o.Scenario == "tenants" && o.Fairness == "on" {
		s.Shards = o.FairShards
	}
	_, err := e.insp.SetScheduling(ctx, o.Topic, s)
	return err
}

func (s *schedScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	o := e.o
	r := newResult(e)
	sr := &SchedResult{Flood: o.Flood}
	if o.Work != nil {
		sr.HandlerUS = o.Work.D.Microseconds()
	}
	pt, err := e.insp.Partitions(ctx, o.Topic)
	if err != nil {
		return nil, err
	}
	floodOpts := []producer.PublishOption{producer.Priority(pt.Levels - 1)}
	levels := []int{pt.Levels - 1}
	if s.tenants {
		floodOpts = []producer.PublishOption{producer.Tenant("A")}
		sr.Fairness, sr.Shards, sr.Partitions = o.Fairness, pt.Shards, pt.Count
	} else {
		sr.Levels, sr.Strict, sr.Weights = pt.Levels, pt.Strict, pt.Weights
		if o.AllLevels {
			sr.AllLevels = true
			levels = levels[:0]
			for l := range pt.Levels {
				levels = append(levels, l)
			}
		}
	}
	// The flood, published by --concurrency callers.
	payload := make([]byte, o.Payload)
	for _, l := range levels {
		opts := floodOpts
		if !s.tenants {
			opts = []producer.PublishOption{producer.Priority(l)}
		}
		if err := floodTopic(ctx, e, o.Flood, payload, opts); err != nil {
			return nil, err
		}
	}
	e.markMeasured()
	s.counted.Store(true)
	start := time.Now()
	var sent, ok atomic.Int64
	var lat []Point
	var latMu sync.Mutex
	callers := []string{""}
	if s.tenants {
		callers = []string{"B", "C", "D", "E"}
	}
	if !sr.AllLevels {
		var wg sync.WaitGroup
		for _, tenant := range callers {
			wg.Go(func() {
				every := time.Duration(float64(time.Second) / o.Rate)
				tick := time.NewTicker(every)
				defer tick.Stop()
				var inner sync.WaitGroup
				defer inner.Wait()
				for time.Since(start) < o.Duration && ctx.Err() == nil {
					select {
					case <-tick.C:
					case <-ctx.Done():
						return
					}
					inner.Go(func() {
						opts := []producer.RequestOption{producer.Priority(0)}
						if tenant != "" {
							opts = []producer.RequestOption{producer.Tenant(tenant)}
						}
						sent.Add(1)
						t0 := time.Now()
						rctx, cancel := context.WithTimeout(ctx, o.Timeout)
						defer cancel()
						if _, err := e.p.Request(rctx, o.Topic, payload, opts...); err != nil {
							e.tl.failed(err)
							return
						}
						ok.Add(1)
						latMu.Lock()
						lat = append(lat, Point{At: t0.Sub(start).Seconds(), Lat: int64(time.Since(t0))})
						latMu.Unlock()
					})
				}
			})
		}
		wg.Wait()
	} else {
		t := time.NewTimer(o.Duration)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	s.counted.Store(false)
	r.Seconds = time.Since(start).Seconds()
	if tp, err := e.insp.Topic(ctx, o.Topic); err == nil {
		for _, g := range tp.Groups {
			if g.Name == o.Group && g.Lag > 0 {
				sr.FloodLeft = g.Lag
			}
		}
	}
	if sr.AllLevels {
		var total int64
		for l := range sr.Levels {
			n := s.byLevel[l].Load()
			sr.HandledByLevel = append(sr.HandledByLevel, n)
			total += n
		}
		wsum := 0
		for _, w := range sr.Weights {
			wsum += w
		}
		for l := range sr.Levels {
			sr.Shares = append(sr.Shares, round3(float64(sr.HandledByLevel[l])/float64(max(total, 1))))
			sr.WeightShares = append(sr.WeightShares, round3(float64(sr.Weights[l])/float64(wsum)))
		}
		r.Requests, r.OK = int(total), int(total)
		r.ThroughputRPS = float64(total) / r.Seconds
		r.Sched = sr
		return &Outcome{Result: r}, nil
	}
	s.mu.Lock()
	var all []int64
	for _, tenant := range callers {
		w := slices.Clone(s.waits[tenant])
		all = append(all, w...)
		if s.tenants {
			slices.Sort(w)
			tr := TenantResult{Tenant: tenant, Requests: len(w)}
			if len(w) > 0 {
				tr.QueueWaitP50US, tr.QueueWaitP99US = pct(w, 0.5)/1000, pct(w, 0.99)/1000
			}
			sr.Tenants = append(sr.Tenants, tr)
		}
	}
	s.mu.Unlock()
	if len(all) > 0 {
		slices.Sort(all)
		sr.QueueWaitP50US, sr.QueueWaitP99US, sr.QueueWaitMaxUS = pct(all, 0.5)/1000, pct(all, 0.99)/1000, all[len(all)-1]/1000
	}
	r.Sched = sr
	r.Requests = int(sent.Load())
	errs := e.tl.errs.Load()
	return finish(e, r, ok.Load(), errs, e.tl.firstErr(), [][]Point{lat})
}

// floodTopic publishes n events with opts, from --concurrency callers.
func floodTopic(ctx context.Context, e *env, n int, payload []byte, opts []producer.PublishOption) error {
	var next atomic.Int64
	var first firstError
	var wg sync.WaitGroup
	for range min(e.o.Concurrency, n) {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				pctx, cancel := context.WithTimeout(ctx, e.o.Timeout)
				_, err := e.p.Publish(pctx, e.o.Topic, payload, opts...)
				cancel()
				if err != nil {
					first.set(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := first.get(); err != nil {
		return fmt.Errorf("the flood: %w", err)
	}
	if ctx.Err() != nil {
		return errors.New("the flood: interrupted")
	}
	return nil
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }
