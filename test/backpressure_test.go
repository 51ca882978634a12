package test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/consumer"
	"github.com/egos/mycelium/internal/redistest"
	"github.com/egos/mycelium/producer"
)

// TestBackpressureNeverLoses publishes into a stream capped at 2,000
// entries from two producers and 64 callers while the workers are held
// still: with Block the callers wait, with Reject they are refused with
// bus.ErrBacklogFull; then the workers go. Every accepted event is handled
// exactly once: none is trimmed unread (as 40k of 630k were, before
// backpressure, in bus-bench's publish scenario).
func TestBackpressureNeverLoses(t *testing.T) {
	for _, policy := range []producer.BackpressurePolicy{producer.Block, producer.Reject} {
		t.Run(policy.String(), func(t *testing.T) {
			srv := redistest.Start(t)
			c := srv.Client(t)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			const total, callers, maxLen = 20_000, 64, 2_000
			topic := "bp-" + policy.String()
			var (
				seen    = make([]atomic.Int32, total)
				handled atomic.Int64
				gate    = make(chan struct{})
			)
			h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
				select { // held until the producers have met the limit
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				seq := binary.BigEndian.Uint64(m.Payload)
				seen[seq].Add(1)
				handled.Add(1)
				return nil, nil
			})
			co := runConsumer(t, c, consumer.Config{Topic: topic, Group: "g", Concurrency: 16,
				Reclaim: consumer.ReclaimConfig{Interval: 100 * time.Millisecond}}, h)
			cfg := producer.Config{StreamMaxLen: maxLen, Backpressure: producer.Backpressure{Policy: policy}}
			ps := []*producer.Producer{newProducer(t, c, cfg), newProducer(t, c, cfg)}
			met := func() bool {
				for _, p := range ps {
					if s := p.Stats(); s.BacklogWaits > 0 || s.BacklogFull > 0 {
						return true
					}
				}
				return false
			}
			var (
				next, accepted, refused atomic.Int64
				wg                      sync.WaitGroup
				opened                  = make(chan struct{})
			)
			go func() { // opens the gate once a producer met the limit
				defer close(opened)
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for !met() && ctx.Err() == nil {
					<-tick.C
				}
				close(gate)
			}()
			for g := range callers {
				p := ps[g%2]
				wg.Go(func() {
					for {
						seq := next.Add(1) - 1
						if seq >= total {
							return
						}
						var b [8]byte
						binary.BigEndian.PutUint64(b[:], uint64(seq))
						_, err := p.Publish(ctx, topic, b[:])
						switch {
						case err == nil:
							accepted.Add(1)
							seen[seq].Add(100) // accepted: handled once makes 101
						case errors.Is(err, bus.ErrBacklogFull):
							var be *bus.BacklogError
							if !errors.As(err, &be) || be.Limit != maxLen*3/4 || be.Topic != topic {
								t.Errorf("refusal %v: want a *bus.BacklogError for %s, limit %d", err, topic, maxLen*3/4)
							}
							refused.Add(1)
						default:
							t.Errorf("publish %d: %v", seq, err)
							return
						}
					}
				})
			}
			wg.Wait()
			cancelGate := func() { // the gate stays shut if the limit was never met
				if !met() {
					cancel()
				}
			}
			cancelGate()
			<-opened
			drained := time.Now().Add(60 * time.Second)
			for handled.Load() < accepted.Load() && time.Now().Before(drained) {
				<-time.After(5 * time.Millisecond) // polling a counter: nothing to wait on
			}
			if h, a := handled.Load(), accepted.Load(); h < a {
				info, _ := c.Redis().Do(ctx, c.Redis().B().XinfoGroups().Key(bus.Keys{}.Topic(topic)).Build()).ToAny()
				n, _ := c.Redis().Do(ctx, c.Redis().B().Xlen().Key(bus.Keys{}.Topic(topic)).Build()).AsInt64()
				t.Fatalf("handled %d of %d accepted; met %v; stream length %d, groups %v; producers %+v / %+v; consumer %+v",
					h, a, met(), n, info, ps[0].Stats(), ps[1].Stats(), co.Stats())
			}
			if !met() {
				t.Fatalf("the producers never met the backlog limit (stats %+v, %+v): the test tested nothing", ps[0].Stats(), ps[1].Stats())
			}
			if policy == producer.Reject && refused.Load() == 0 || policy == producer.Block && refused.Load() != 0 {
				t.Fatalf("%s: %d refused", policy, refused.Load())
			}
			var lost, dup, stray int
			for i := range seen {
				switch v := seen[i].Load(); v {
				case 0, 101: // refused, or accepted and handled once
				case 100:
					lost++
				default:
					if v > 101 {
						dup++
					} else {
						stray++ // handled, never accepted
					}
				}
			}
			st := co.Stats()
			t.Logf("%s: accepted %d, refused %d, handled %d; producer stats %+v", policy, accepted.Load(), refused.Load(), handled.Load(), ps[0].Stats())
			if lost != 0 || dup != 0 || stray != 0 || st.DeletedPending != 0 || accepted.Load()+refused.Load() != total {
				t.Fatalf("lost %d, duplicated %d, stray %d, deleted pending %d, accepted+refused %d of %d", lost, dup, stray, st.DeletedPending, accepted.Load()+refused.Load(), total)
			}
		})
	}
}

// TestBackpressureDropOldestCountsAndRepairs: DropOldest writes past the
// cap (the old behaviour) and counts what the trim drops; once the worker
// has read everything, it puts the group's lag right (Redis 7 counts the
// trimmed entries as lag for ever otherwise), so a Block producer after it
// is not held back by a backlog that is not there.
func TestBackpressureDropOldestCountsAndRepairs(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const maxLen = 1_000
	topic := "bp-drop"
	gate := make(chan struct{})
	var handled atomic.Int64
	h := consumer.HandlerFunc(func(ctx context.Context, m *consumer.Message) ([]byte, error) {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		handled.Add(1)
		return nil, nil
	})
	co := runConsumer(t, c, consumer.Config{Topic: topic, Group: "g", Concurrency: 4,
		Reclaim: consumer.ReclaimConfig{Interval: 50 * time.Millisecond}}, h)
	drop := newProducer(t, c, producer.Config{StreamMaxLen: maxLen, Backpressure: producer.Backpressure{Policy: producer.DropOldest}})
	// Let the monitor measure a backlog first: the first write waits for it.
	for i := range 5_000 {
		if _, err := drop.Publish(ctx, topic, fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := drop.Stats().BacklogDropped; n == 0 || n > 5_000 {
		t.Fatalf("BacklogDropped = %d, want some of the ~4,000 trimmed", n)
	}
	close(gate)
	waitFor(t, 30*time.Second, "the group's lag put right", func() bool { return co.Stats().LagRepaired > 0 })
	groups, err := c.Redis().Do(ctx, c.Redis().B().XinfoGroups().Key(bus.Keys{}.Topic(topic)).Build()).ToArray()
	if err != nil || len(groups) != 1 {
		t.Fatal(groups, err)
	}
	m, _ := groups[0].AsMap()
	lagMsg := m["lag"]
	lag, err := lagMsg.AsInt64()
	if err != nil || lag != 0 {
		t.Fatalf("lag after the repair = %d, %v; want 0", lag, err)
	}
	// A Block producer now measures the real backlog (0), not the
	// trimmed entries.
	block := newProducer(t, c, producer.Config{StreamMaxLen: maxLen})
	before := handled.Load()
	for i := range 100 {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := block.Publish(pctx, topic, fmt.Appendf(nil, "b%d", i))
		cancel()
		if err != nil {
			t.Fatalf("Block publish after the repair: %v", err)
		}
	}
	waitFor(t, 30*time.Second, "the Block producer's events handled", func() bool { return handled.Load() >= before+100 })
	if s := block.Stats(); s.BacklogWaits != 0 {
		t.Fatalf("Block producer waited %d times on an empty backlog", s.BacklogWaits)
	}
}
