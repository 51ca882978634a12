package consumer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// part is one partition of the consumer's topic: its stream, its dead
// letters, and the loops that read and reclaim it.
type part struct {
	idx    int
	name   string // bus.Partition(topic, idx)
	key    string // its stream
	dlqKey string // its dead-letter stream
	// its delayed events and delayed retries (delay.go)
	delayedKey, retryKey string
	start                string // where its group starts when created
	cancel               context.CancelFunc
}

// Partitions: how often a consumer re-reads its topic's partition count,
// and how long after a count was lowered a removed, drained partition may
// be forgotten (well over the producers' refresh of about a second, so no producer
// still writes to it).
const (
	partWatch   = 2 * time.Second
	forgetGrace = 15 * time.Second
)

// partCount returns how many partitions the consumer reads now.
func (c *Consumer) partCount() int {
	if ps := c.parts.Load(); ps != nil {
		return len(*ps)
	}
	return 1
}

// joinedPart notes that pt's group exists and the consumer joined it: once
// every partition known at the start has, Serving closes.
func (c *Consumer) joinedPart(*part) {
	if c.joins.Add(-1) <= 0 {
		c.served.Do(func() { close(c.serving) })
	}
}

// forgotten reports whether pt is a partition the topic's metadata no
// longer lists (removed, drained and forgotten by some worker).
func (c *Consumer) forgotten(ctx context.Context, pt *part) bool {
	if pt.idx == 0 {
		return false
	}
	m, err := redisx.Partitions(ctx, c.c.Redis(), c.keys.Meta(c.cfg.Topic))
	return err == nil && pt.idx >= m.Drain
}

// runPartitions reads every partition of the topic until ctx ends: one read
// loop and one reclaimer per partition, all sharing the handler slots. It
// follows the partition count in the topic's metadata (re-read every
// partWatch): partitions added are read from their first entry; partitions
// removed are read until drained, then forgotten (see forget). It returns
// once every loop it started has.
func (c *Consumer) runPartitions(ctx context.Context, slots chan struct{}, jobs chan<- *job, a *acker) {
	out := redisx.Outage{Log: c.log, What: "partition count of " + c.cfg.Topic}
	meta := c.keys.Meta(c.cfg.Topic)
	var m redisx.PartitionMeta
	for {
		var err error
		if m, err = redisx.Partitions(ctx, c.c.Redis(), meta); err == nil {
			out.OK()
			break
		}
		if ctx.Err() != nil || c.fail(err, "HMGET "+meta) {
			return
		}
		out.Failed(err)
		out.Backoff(ctx)
	}
	c.joins.Store(int32(m.Drain))
	var wg sync.WaitGroup
	// One read of every partition on a single server; a read per
	// partition on a cluster (their streams live in different slots).
	perPartition := c.c.Mode() == "cluster"
	if !perPartition {
		wg.Go(func() { c.readAll(ctx, slots, jobs, a) })
	}
	running := map[int]*part{}
	initial := true
	apply := func() {
		for i := range m.Drain {
			if running[i] != nil {
				continue
			}
			start := "0" // a partition added while running: every entry
			if initial {
				start = c.cfg.StartID
			}
			name := bus.Partition(c.cfg.Topic, i)
			pctx, cancel := context.WithCancel(ctx)
			pt := &part{idx: i, name: name, key: c.keys.Topic(name), dlqKey: c.keys.DeadLetter(name), start: start,
				delayedKey: c.keys.Delayed(name), retryKey: c.keys.Retry(name),
				cancel: cancel}
			running[i] = pt
			wg.Add(1)
			go func() {
				defer wg.Done()
				var rw sync.WaitGroup
				rw.Go(func() { c.reclaimLoop(pctx, pt, slots, jobs, a) })
				if perPartition {
					c.readLoop(pctx, pt, slots, jobs, a)
				}
				rw.Wait()
			}()
			if !initial {
				c.log.Info().Str("topic", c.cfg.Topic).Int("partition", i).Msg("reading a new partition")
			}
		}
		for i, pt := range running {
			if i >= m.Drain {
				pt.cancel() // forgotten: drained, and nothing is written to it
				delete(running, i)
				c.log.Info().Str("topic", c.cfg.Topic).Int("partition", i).Msg("stopped reading a drained, removed partition")
			}
		}
		ps := make([]*part, 0, len(running))
		for i := range m.Drain {
			ps = append(ps, running[i])
		}
		c.parts.Store(&ps)
		initial = false
	}
	apply()
	t := time.NewTicker(partWatch)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
		}
		nm, err := redisx.Partitions(ctx, c.c.Redis(), meta)
		if err != nil {
			if ctx.Err() == nil && !c.fail(err, "HMGET "+meta) && !redisx.IsConnErr(err) {
				c.log.Warn().Err(err).Str("key", meta).Msg("cannot read the partition count; keeping the last one")
			}
			continue
		}
		if nm.Draining() {
			if forgot := c.forget(ctx, nm); forgot {
				if nm2, err := redisx.Partitions(ctx, c.c.Redis(), meta); err == nil {
					nm = nm2
				}
			}
		}
		if nm.N != m.N || nm.Drain != m.Drain {
			c.log.Info().Str("topic", c.cfg.Topic).Int("partitions", nm.N).Int("draining", nm.Drain-nm.N).Msg("partition count changed")
		}
		m = nm
		apply()
	}
}

// forget lowers the topic's drain bound over the removed partitions at its
// end that are drained for every group of partition 0 (nothing pending,
// nothing undelivered, no dead letters), once the count was lowered
// forgetGrace ago by Redis's clock. It deletes their streams, and reports
// whether it lowered the bound. Any worker of any group may do it; the
// metadata check makes concurrent attempts safe.
func (c *Consumer) forget(ctx context.Context, m redisx.PartitionMeta) bool {
	if !m.Lowered.IsZero() && time.Since(m.Lowered) < forgetGrace-time.Second {
		return false // not yet (by this machine's clock; Redis's decides)
	}
	rc := c.c.Redis()
	gs, err := redisx.Groups(ctx, rc, c.key)
	if err != nil {
		return false
	}
	groups := make([]string, len(gs))
	for i, g := range gs {
		groups[i] = g.Name
	}
	drain := m.Drain
	for drain > m.N {
		name := bus.Partition(c.cfg.Topic, drain-1)
		ok, err := redisx.Drained(ctx, rc, c.keys.Topic(name), c.keys.DeadLetter(name), []string{c.keys.Delayed(name), c.keys.Retry(name)}, groups)
		if err != nil || !ok {
			break
		}
		drain--
	}
	if drain == m.Drain {
		return false
	}
	ok, err := redisx.ForgetPartitions(ctx, rc, c.keys.Meta(c.cfg.Topic), m, drain, forgetGrace)
	if err != nil || !ok {
		return false
	}
	var keys []string
	for i := drain; i < m.Drain; i++ {
		keys = append(keys, c.keys.Topic(bus.Partition(c.cfg.Topic, i)))
	}
	if err := redisx.DeleteEach(ctx, rc, keys...); err != nil {
		c.log.Warn().Err(err).Strs("streams", keys).Msg("could not delete forgotten partitions' streams")
	}
	c.log.Info().Str("topic", c.cfg.Topic).Int("from", m.Drain).Int("to", drain).Msg("removed partitions drained: forgotten")
	return true
}

// readAll reads every partition being read (c.parts) with one XREADGROUP
// over all their streams, while ctx lives: on a single server (standalone
// or Sentinel's master) a multi-stream read costs one round trip, however
// many partitions a topic has. (A cluster reads each partition apart: its
// streams live in different slots; see readLoop.)
//
// It holds n free slots (one, waited for, then any others free now) and
// asks each stream for up to max(1, n/partitions) entries, so no partition
// starves; a read that returns more entries than slots (n below the
// partition count) waits for slots before routing the extra ones, which
// stay pending meanwhile (at most one per partition).
func (c *Consumer) readAll(ctx context.Context, slots chan struct{}, jobs chan<- *job, a *acker) {
	out := redisx.Outage{Log: c.log, What: "read loop " + c.key}
	var rd redisx.ReadDeadline
	defer rd.Stop()
	joined := map[*part]bool{}    // group created and joined since the last NOGROUP
	announced := map[*part]bool{} // counted for Serving
	recreate := false
	var keys []string
	var read []*part // the partitions of keys
	for ctx.Err() == nil {
		ps := c.readParts()
		if len(ps) == 0 {
			select { // runPartitions has not published the partitions yet
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		failed := false
		for _, pt := range ps {
			if joined[pt] {
				continue
			}
			if recreate && c.forgotten(ctx, pt) {
				continue // forgotten by a worker: runPartitions drops it
			}
			if err := c.createGroup(ctx, pt); err != nil {
				if c.fail(err, "creating or joining the group on "+pt.key) {
					return
				}
				out.Failed(err)
				out.Backoff(ctx)
				failed = true
				break
			}
			joined[pt] = true
			if !announced[pt] {
				announced[pt] = true
				c.joinedPart(pt)
			}
		}
		if failed {
			continue
		}
		recreate = false
		keys, read = keys[:0], read[:0]
		for _, pt := range ps {
			if joined[pt] {
				keys = append(keys, pt.key)
				read = append(read, pt)
			}
		}
		if len(keys) == 0 {
			continue
		}
		n := 0
		select {
		case <-slots:
			n = 1
		case <-ctx.Done():
			return
		}
	more:
		for n < c.cfg.Concurrency && n < maxReadBatch {
			select {
			case <-slots:
				n++
			default:
				break more
			}
		}
		per := max(1, n/len(keys))
		// Its slots are on loan while it blocks (see slotLoan): what
		// comes back beyond the slots left waits for one below.
		lent := c.loan.offer(n)
		res, err := redisx.ReadGroupAll(rd.For(ctx, c.cfg.Block), c.c.Redis(), keys, c.cfg.Group, c.cfg.Name, int64(per), c.cfg.Block)
		if lent {
			n -= c.loan.withdraw(n)
		}
		got := 0
		for _, es := range res {
			got += len(es)
		}
		for i := got; i < n; i++ {
			slots <- struct{}{}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, bus.ErrNoGroup) {
				c.log.Warn().Strs("streams", keys).Str("group", c.cfg.Group).Msg("group missing (Redis restarted or flushed, or a partition forgotten?); recreating it")
				clear(joined)
				recreate = true
				continue
			}
			if c.fail(err, "XREADGROUP "+strings.Join(keys, " ")) {
				return
			}
			out.Failed(err)
			out.Backoff(ctx)
			continue
		}
		out.OK()
		if got > 0 {
			c.stats.reads.Add(1)
		}
		now := time.Now()
		held := n
		for i, es := range res {
			for k := range es {
				if held == 0 { // more entries than slots: wait for one
					if !c.takeSlot(ctx, slots) {
						return // the rest stay pending: reclaimed after ClaimIdle
					}
					now = time.Now()
				} else {
					held--
				}
				c.route(read[i], &es[k], now, 1, jobs, a)
			}
		}
	}
}

// readParts returns the partitions being read now.
func (c *Consumer) readParts() []*part {
	if ps := c.parts.Load(); ps != nil {
		return *ps
	}
	return nil
}
