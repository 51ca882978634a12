package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redisx"
	"github.com/egos/mycelium/producer"
)

// ---- failover: a master failed over under load ---------------------------
//
// Closed-loop requests (--concurrency) and a stream of events (one every
// 2 ms) run for --duration on a Redis Cluster; at --kill-after the master
// holding the topic's partition 0 is failed over (--failover manual: its
// replica takes over with CLUSTER FAILOVER, nothing lost by design;
// shutdown: SHUTDOWN NOSAVE NOW, as a crash, and the replica is promoted
// after cluster-node-timeout). A probe requests partition 0 every 20 ms:
// the recovery is the time from the failover to the probe's first answer.
// At the end every event Redis acknowledged is checked: handled once, never
// (lost), or more than once (duplicated). No peer publishes these numbers.

type failoverScenario struct {
	pl      *payloads
	mu      sync.Mutex
	handled map[uint64]int // event sequence -> deliveries
}

// eventBit marks an event's sequence (requests use the low ones).
const eventBit = 1 << 62

func (s *failoverScenario) handler(e *env) consumer.Handler {
	s.pl = newPayloads(e.o.Payload, e.o.PayloadKind)
	s.handled = map[uint64]int{}
	return consumer.HandlerFunc(func(_ context.Context, m *consumer.Message) ([]byte, error) {
		if m.Request {
			return m.Payload, nil
		}
		if seq, ok := s.pl.check(m.Payload); ok {
			s.mu.Lock()
			s.handled[seq]++
			s.mu.Unlock()
		}
		return nil, nil
	})
}

func (s *failoverScenario) run(ctx context.Context, e *env) (*Outcome, error) {
	if e.bc.Mode() != "cluster" {
		return nil, fmt.Errorf("%w: --scenario failover needs a Redis Cluster (a URL of several hosts, or --cluster), not %s", ErrUsage, e.bc.Mode())
	}
	if err := warmup(ctx, e); err != nil {
		return nil, err
	}
	n := e.o.Partitions
	if n == 0 {
		ps, err := e.insp.Partitions(ctx, e.o.Topic)
		if err != nil {
			return nil, err
		}
		n = ps.Count
	}
	key0 := ""
	for i := 0; key0 == ""; i++ {
		if k := fmt.Sprintf("probe%d", i); producer.PartitionOf(k, n) == 0 {
			key0 = k
		}
	}
	r := newResult(e)
	fr := &FailoverResult{Mode: e.o.Failover}
	lats := make([][]Point, e.o.Concurrency+1)
	tl := &e.tl
	start := time.Now()
	cnt := newCounter(e.o, start)
	rctx, stop := context.WithDeadline(ctx, start.Add(e.o.Duration))
	defer stop()
	var wg sync.WaitGroup
	for g := range e.o.Concurrency {
		wg.Go(func() {
			buf := make([]byte, 0, e.o.Payload)
			for rctx.Err() == nil {
				seq, ok := cnt.take()
				if !ok {
					return
				}
				buf = s.pl.fill(buf, seq)
				t0 := time.Now()
				if err := e.checkedRequest(rctx, buf, seq); err != nil {
					if rctx.Err() == nil {
						tl.failed(err)
						time.Sleep(10 * time.Millisecond) // a caller backs off
					}
					continue
				}
				tl.ok.Add(1)
				lats[g] = append(lats[g], Point{At: t0.Sub(start).Seconds(), Lat: int64(time.Since(t0)), Seq: seq})
			}
		})
	}
	// Events, acknowledged ones remembered.
	var acked sync.Map
	var nacked atomic.Int64
	wg.Go(func() {
		buf := make([]byte, 0, e.o.Payload)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for seq := uint64(eventBit); rctx.Err() == nil; seq++ {
			select {
			case <-t.C:
			case <-rctx.Done():
				return
			}
			buf = s.pl.fill(buf, seq)
			pctx, cancel := context.WithTimeout(rctx, e.o.Timeout)
			if _, err := e.p.Publish(pctx, e.o.Topic, buf); err == nil {
				acked.Store(seq, true)
				nacked.Add(1)
			}
			cancel()
		}
	})
	// The probe of partition 0, and the failover.
	var failedAt, firstOK atomic.Int64
	var probeErrs atomic.Int64
	wg.Go(func() {
		buf := make([]byte, 0, e.o.Payload)
		for seq := uint64(eventBit >> 1); rctx.Err() == nil; seq++ {
			buf = s.pl.fill(buf, seq)
			began := time.Now().UnixNano()
			_, err := e.p.Request(rctx, e.o.Topic, buf, producer.PartitionKey(key0))
			f := failedAt.Load()
			switch {
			case f == 0 || began < f:
			case err != nil:
				probeErrs.Add(1)
			case firstOK.Load() == 0:
				firstOK.Store(time.Now().UnixNano())
			}
			select {
			case <-rctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	failErr := make(chan error, 1)
	wg.Go(func() {
		select {
		case <-rctx.Done():
			failErr <- fmt.Errorf("the run ended before --kill-after")
			return
		case <-time.After(e.o.KillAfter):
		}
		target, err := failover(rctx, e, e.o.Failover)
		fr.Target = target
		failedAt.Store(time.Now().UnixNano())
		failErr <- err
	})
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	if err := <-failErr; err != nil {
		return nil, fmt.Errorf("failover: %w", err)
	}
	fr.AtS = time.Duration(failedAt.Load() - start.UnixNano()).Seconds()
	if f := firstOK.Load(); f != 0 {
		fr.RecoveryMS = float64(time.Duration(f-failedAt.Load()).Microseconds()) / 1000
	} else {
		fr.RecoveryMS = -1 // never within the run
	}
	fr.ProbeErrors = int(probeErrs.Load())
	// Let the workers finish what Redis kept (reclaim included).
	fr.EventsAcked = nacked.Load()
	deadline := time.Now().Add(max(e.o.Timeout, 10*time.Second))
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if s.countEvents(&acked, fr); fr.Lost == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.countEvents(&acked, fr)
	r.Failover = fr
	return finish(e, r, tl.ok.Load(), tl.errs.Load(), tl.firstErr(), lats)
}

// countEvents fills fr's handled, lost and duplicated counts.
func (s *failoverScenario) countEvents(acked *sync.Map, fr *FailoverResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fr.EventsHandled, fr.Lost, fr.Duplicated = 0, 0, 0
	acked.Range(func(k, _ any) bool {
		switch n := s.handled[k.(uint64)]; {
		case n == 0:
			fr.Lost++
		case n > 1:
			fr.Duplicated++
		}
		return true
	})
	for _, n := range s.handled {
		if n > 0 {
			fr.EventsHandled++
		}
	}
}

// failover fails over the master of the topic's partition 0 and returns
// its address. The cluster's view is read again for up to 10 s while the
// master has no live replica (one may be resyncing after a heavy run).
func failover(ctx context.Context, e *env, mode string) (string, error) {
	slot, err := e.insp.KeySlot(ctx, e.bc.Keys().Topic(bus.Partition(e.o.Topic, 0)))
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		nodes, err := e.insp.ClusterNodes(ctx)
		if err != nil {
			return "", err
		}
		var master string
		for _, n := range nodes {
			if n.Master && n.Serves(slot) {
				master = n.Addr
			}
		}
		if master != "" && mode == "shutdown" {
			return master, onNode(ctx, e.bc, master, "shutdown", redisx.ShutdownNode)
		}
		for _, n := range nodes {
			if master != "" && !n.Master && n.MasterAddr == master && !strings.Contains(n.Flags, "fail") {
				return master, onNode(ctx, e.bc, n.Addr, "failover to", redisx.FailoverTo)
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			var view []string
			for _, n := range nodes {
				view = append(view, fmt.Sprintf("%s %s master=%s", n.Addr, n.Flags, n.MasterAddr))
			}
			return master, fmt.Errorf("no live replica of the master of slot %d (%q); nodes: %s", slot, master, strings.Join(view, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// onNode runs a drill (redisx.FailoverTo: the replica at addr takes over,
// coordinated; redisx.ShutdownNode: the node at addr stops at once, as a
// crash would) on a client of that node alone. Drills live here, not in
// package inspect: operators have no business crashing nodes.
func onNode(ctx context.Context, c *bus.Client, addr, what string, drill func(context.Context, rueidis.Client) error) error {
	n, err := c.Node(ctx, addr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, addr, err)
	}
	defer n.Close()
	if err := drill(ctx, n.Redis()); err != nil {
		return fmt.Errorf("%s %s: %w", what, addr, err)
	}
	return nil
}
