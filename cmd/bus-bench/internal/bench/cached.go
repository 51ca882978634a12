package bench

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/producer"
)

// ---- cached: repeated reasoning requests through the response cache ------

// cachedScenario is a closed loop of Requests whose payloads are drawn from
// Distinct payloads by a Zipf law (a few prompts are asked often, most
// rarely), as repeated reasoning requests are. With the cache, the handler
// should run about once per distinct payload asked; --no-cache runs the
// same draw without it.
type cachedScenario struct {
	calls atomic.Int64 // handler calls in the measured part
	count atomic.Bool  // counting (after warm-up)
}

func (s *cachedScenario) handler(*env) consumer.Handler {
	return consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		if s.count.Load() {
			s.calls.Add(1)
		}
		return m.Payload, nil
	})
}

var errMismatch = errors.New("reply does not match its request byte for byte")

// sourced is one request's latency and where its answer came from.
type sourced struct {
	lat int64
	src producer.CacheSource
}

func (s *cachedScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	if err := warmup(ctx, e); err != nil {
		return nil, err
	}
	s.count.Store(true)
	pl := newPayloads(e.o.Payload, e.o.PayloadKind)
	r := newResult(e)
	lats := make([][]Point, e.o.Concurrency)
	srcs := make([][]sourced, e.o.Concurrency)
	asked := make([]map[uint64]struct{}, e.o.Concurrency) // per caller: no sharing, no slice of --distinct entries
	tl := &e.tl
	start := time.Now()
	cnt := newCounter(e.o, start)
	var wg sync.WaitGroup
	for g := range e.o.Concurrency {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(pl.run, uint64(g)))
			zipf := rand.NewZipf(rng, e.o.Zipf, 1, uint64(e.o.Distinct-1))
			buf := make([]byte, 0, e.o.Payload)
			seen := map[uint64]struct{}{}
			asked[g] = seen
			var info producer.CacheInfo
			for ctx.Err() == nil {
				seq, ok := cnt.take()
				if !ok {
					return
				}
				id := zipf.Uint64()
				seen[id] = struct{}{}
				buf = pl.fill(buf, id)
				t0 := time.Now()
				reply, err := e.p.Request(ctx, e.o.Topic, buf, producer.WithCacheInfo(&info))
				lat := time.Since(t0)
				if err == nil {
					if got, ok := pl.check(reply); !ok || got != id {
						err = errMismatch
					}
				}
				if err != nil {
					tl.failed(err)
					continue
				}
				tl.ok.Add(1)
				lats[g] = append(lats[g], Point{At: t0.Sub(start).Seconds(), Lat: int64(lat), Seq: seq})
				srcs[g] = append(srcs[g], sourced{int64(lat), info.Source})
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	s.count.Store(false)
	r.Cache = s.summary(e, asked, srcs)
	return finish(e, r, tl.ok.Load(), tl.errs.Load(), tl.firstErr(), lats)
}

// summary counts the run's answers by source and their latencies.
func (s *cachedScenario) summary(e *env, asked []map[uint64]struct{}, srcs [][]sourced) *CacheResult {
	c := &CacheResult{Enabled: !e.o.NoCache, Distinct: e.o.Distinct, Zipf: e.o.Zipf, HandlerCalls: s.calls.Load()}
	all := map[uint64]struct{}{}
	for _, m := range asked {
		for id := range m {
			all[id] = struct{}{}
		}
	}
	c.DistinctRequested = len(all)
	by := map[producer.CacheSource][]int64{}
	total := 0
	for _, g := range srcs {
		for _, x := range g {
			by[x.src] = append(by[x.src], x.lat)
			total++
		}
	}
	n := func(src producer.CacheSource) int64 { return int64(len(by[src])) }
	c.HitsLocal, c.HitsShared = n(producer.SourceLocal), n(producer.SourceShared)
	c.CoalescedLocal, c.CoalescedRemote = n(producer.SourceCoalescedLocal), n(producer.SourceCoalescedRemote)
	c.Misses = n(producer.SourceHandler) + n(producer.SourceNone)
	if total > 0 {
		c.HitRatioLocal = float64(c.HitsLocal) / float64(total)
		c.HitRatioShared = float64(c.HitsShared) / float64(total)
	}
	q := func(l []int64, p float64) float64 {
		if len(l) == 0 {
			return 0
		}
		return float64(pct(l, p)) / 1e3
	}
	for src, l := range by {
		slices.Sort(l)
		switch src {
		case producer.SourceLocal:
			c.LocalHitP50US, c.LocalHitP99US = q(l, 0.5), q(l, 0.99)
		case producer.SourceShared:
			c.SharedHitP50US, c.SharedHitP99US = q(l, 0.5), q(l, 0.99)
		}
	}
	misses := slices.Concat(by[producer.SourceHandler], by[producer.SourceNone])
	slices.Sort(misses)
	c.MissP50US, c.MissP99US = q(misses, 0.5), q(misses, 0.99)
	return c
}
