package consumer

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
	watcher "github.com/egos/mycelium/internal/topology"
)

// part is one partition of the consumer's topic: its stream, its dead
// letters, and the loops that read and reclaim it.
type part struct {
	idx    int
	level  int    // its priority level (0: the partition's own stream; docs/scheduling.md)
	name   string // bus.Partition(topic, idx)
	key    string // its stream (its level's)
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

// topology follows the topic's partitions: the count in its metadata,
// re-read every partWatch; partitions added are read from their first
// entry, partitions removed are read until drained, then forgotten (see
// forget). It publishes the partitions read now, and closes serving once
// the consumer joined every partition known at the start.
type topology struct {
	*env
	// parts are the partitions read now; joins counts the first
	// partitions still to join before serving closes.
	parts    atomic.Pointer[[]*part]
	schedule atomic.Pointer[schedule]
	joins    atomic.Int32
	serving  chan struct{}
	served   sync.Once // closes serving
	// meta reads the topic's partition metadata (the type the producer
	// follows counts with), through the port.
	meta *watcher.Topic
	// corrupt: the last refresh found the metadata malformed (said once;
	// run's goroutine only).
	corrupt bool
}

// newTopology returns the topology of e's topic.
func newTopology(e *env) *topology {
	t := &topology{env: e, serving: make(chan struct{})}
	read := func(ctx context.Context, topic string) (redisx.PartitionMeta, error) {
		return t.port.Partitions(ctx, t.keys.Meta(topic)) // t.port at the call: a test may replace it
	}
	// It reads with Read on its own schedule, never with Count, so the
	// watcher never starts a background read.
	refuse := func(func(context.Context)) bool { return false }
	t.meta = watcher.New(read, refuse, watcher.Config{}).Topic(e.cfg.Topic)
	return t
}

// serve closes serving (once).
func (t *topology) serve() { t.served.Do(func() { close(t.serving) }) }

// count returns how many streams the consumer reads now (partitions
// times priority levels).
func (t *topology) count() int {
	if ps := t.parts.Load(); ps != nil {
		return len(*ps)
	}
	return 1
}

// sched returns the topic's priority levels, their weights and strict
// mode as last read (one level before the first read).
func (t *topology) sched() (levels int, weights []int, strict bool) {
	if s := t.schedule.Load(); s != nil {
		return s.levels, s.weights, s.strict
	}
	return 1, nil, false
}

// schedule is the topic's priority setting the topology last applied.
type schedule struct {
	levels  int
	weights []int
	strict  bool
}

// current returns the partitions being read now (nil before run
// published them).
func (t *topology) current() []*part {
	if ps := t.parts.Load(); ps != nil {
		return *ps
	}
	return nil
}

// streams returns the streams of the partitions read now (the topic's own
// before run published them).
func (t *topology) streams() []string {
	ps := t.current()
	if len(ps) == 0 {
		return []string{t.key}
	}
	keys := make([]string, len(ps))
	for i, pt := range ps {
		keys[i] = pt.key
	}
	return keys
}

// joined notes that pt's group exists and the consumer joined it: once
// every partition known at the start has, serving closes.
func (t *topology) joined(*part) {
	if t.joins.Add(-1) <= 0 {
		t.serve()
	}
}

// forgotten reports whether pt is a partition the topic's metadata no
// longer lists (removed, drained and forgotten by some worker).
func (t *topology) forgotten(ctx context.Context, pt *part) bool {
	if pt.idx == 0 {
		return false
	}
	m, err := t.meta.Read(ctx)
	return err == nil && pt.idx >= m.Drain
}

// run follows the partitions until ctx ends, calling start (on a
// goroutine of its own) for each partition to read, with a ctx cancelled
// when the partition is forgotten or run ends. It returns once every start
// it called has.
func (t *topology) run(ctx context.Context, start func(context.Context, *part)) {
	m, ok := t.first(ctx)
	if !ok {
		return
	}
	t.joins.Store(int32(m.Drain * max(m.Levels, 1)))
	w := watch{running: map[partLevel]*part{}, start: start}
	t.apply(ctx, &w, m, true)
	tick := time.NewTicker(partWatch)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			w.wg.Wait()
			return
		case <-tick.C:
		}
		nm, ok := t.refresh(ctx)
		if !ok {
			continue
		}
		if nm.N != m.N || nm.Drain != m.Drain {
			t.log.Info().Str("topic", t.cfg.Topic).Int("partitions", nm.N).Int("draining", nm.Drain-nm.N).Msg("partition count changed")
		}
		if nm.Levels != m.Levels {
			t.log.Info().Str("topic", t.cfg.Topic).Int("levels", nm.Levels).Msg("priority levels changed")
		}
		m = nm
		t.apply(ctx, &w, m, false)
	}
}

// watch is what run keeps between passes: the partitions it started.
type watch struct {
	running map[partLevel]*part
	start   func(context.Context, *part)
	wg      sync.WaitGroup
}

// first reads the partition count until Redis answers; false when ctx
// ended or Redis refused for good.
func (t *topology) first(ctx context.Context) (redisx.PartitionMeta, bool) {
	out := redisx.Outage{Log: t.log, What: "partition count of " + t.cfg.Topic}
	meta := t.keys.Meta(t.cfg.Topic)
	for {
		m, err := t.meta.Read(ctx)
		if err == nil {
			out.OK()
			return m, true
		}
		if ctx.Err() != nil || t.fail(err, "HMGET "+meta) {
			return m, false
		}
		out.Failed(err)
		out.Backoff(ctx)
	}
}

// refresh re-reads the partition count, forgetting drained removed
// partitions first when some are draining; false when it could not read it
// (the last count stays).
func (t *topology) refresh(ctx context.Context) (redisx.PartitionMeta, bool) {
	meta := t.keys.Meta(t.cfg.Topic)
	nm, err := t.meta.Read(ctx)
	if err != nil {
		corrupt := errors.Is(err, redisx.ErrCorruptMeta)
		if ctx.Err() == nil && !t.fail(err, "HMGET "+meta) && !redisx.IsConnErr(err) && (!corrupt || !t.corrupt) {
			t.log.Warn().Err(err).Str("key", meta).Msg("cannot read the topic's partitions and priority levels; keeping the last ones (fix: bus-worker topic set-partitions or set-scheduling)")
		}
		t.corrupt = t.corrupt || corrupt // said once until it reads again
		return nm, false
	}
	if t.corrupt {
		t.corrupt = false
		t.log.Info().Str("key", meta).Msg("the topic's metadata reads again")
	}
	if nm.Draining() && t.forget(ctx, nm) {
		if nm2, err := t.meta.Read(ctx); err == nil {
			nm = nm2
		}
	}
	return nm, true
}

// apply starts the partitions of m not read yet (the first pass from
// Config.StartID, later ones from their first entry), stops the forgotten
// ones, and publishes the partitions read now.
//
// A topic with priority levels has a stream per partition and level
// (bus.Keys.Level): each is a part of its own (its group, reclaimer,
// delayed retries), read together by the reader in the levels' order.
// Levels are only ever added (redisx.SetScheduling).
func (t *topology) apply(ctx context.Context, w *watch, m redisx.PartitionMeta, initial bool) {
	levels := max(m.Levels, 1)
	for i := range m.Drain {
		for l := range levels {
			if w.running[partLevel{i, l}] != nil {
				continue
			}
			from := "0" // a partition or level added while running: every entry
			if initial {
				from = t.cfg.StartID
			}
			pt := t.newPart(i, l, from)
			pctx, cancel := context.WithCancel(ctx)
			pt.cancel = cancel
			w.running[partLevel{i, l}] = pt
			w.wg.Go(func() { w.start(pctx, pt) })
			if !initial {
				t.log.Info().Str("topic", t.cfg.Topic).Int("partition", i).Int("level", l).Msg("reading a new partition or priority level")
			}
		}
	}
	for k, pt := range w.running {
		if k.i >= m.Drain {
			pt.cancel() // forgotten: drained, and nothing is written to it
			delete(w.running, k)
			if k.l == 0 {
				t.log.Info().Str("topic", t.cfg.Topic).Int("partition", k.i).Msg("stopped reading a drained, removed partition")
			}
		}
	}
	ps := make([]*part, 0, len(w.running))
	for i := range m.Drain {
		for l := range levels {
			if pt := w.running[partLevel{i, l}]; pt != nil {
				ps = append(ps, pt)
			}
		}
	}
	weights := m.Weights
	if len(weights) != levels {
		weights = redisx.DefaultWeights(levels)
	}
	t.schedule.Store(&schedule{levels: levels, weights: weights, strict: m.Strict})
	t.parts.Store(&ps)
}

// partLevel names a part: partition i, level l.
type partLevel struct{ i, l int }

// newPart describes level l of partition i, its group starting at start
// when created.
func (t *topology) newPart(i, l int, start string) *part {
	name := bus.Partition(t.cfg.Topic, i)
	return &part{idx: i, level: l, name: name, key: t.keys.Level(name, l), dlqKey: t.keys.DeadLetter(name), start: start,
		delayedKey: t.keys.LevelDelayed(name, l), retryKey: t.keys.LevelRetry(name, l)}
}

// forget lowers the topic's drain bound over the removed partitions at its
// end that are drained for every group of partition 0 (nothing pending,
// nothing undelivered, no dead letters), once the count was lowered
// forgetGrace ago by Redis's clock. It deletes their streams, and reports
// whether it lowered the bound. Any worker of any group may do it; the
// metadata check makes concurrent attempts safe.
func (t *topology) forget(ctx context.Context, m redisx.PartitionMeta) bool {
	if !m.Lowered.IsZero() && time.Since(m.Lowered) < forgetGrace-time.Second {
		return false // not yet (by this machine's clock; Redis's decides)
	}
	gs, err := t.port.Groups(ctx, t.key)
	if err != nil {
		return false
	}
	groups := make([]string, len(gs))
	for i, g := range gs {
		groups[i] = g.Name
	}
	drain := m.Drain
	levels := max(m.Levels, 1)
	for drain > m.N {
		name := bus.Partition(t.cfg.Topic, drain-1)
		ok := true
		for l := 0; l < levels && ok; l++ {
			var err error
			ok, err = t.port.Drained(ctx, t.keys.Level(name, l), t.keys.DeadLetter(name), []string{t.keys.LevelDelayed(name, l), t.keys.LevelRetry(name, l)}, groups)
			ok = ok && err == nil
		}
		if !ok {
			break
		}
		drain--
	}
	if drain == m.Drain {
		return false
	}
	ok, err := t.port.ForgetPartitions(ctx, t.keys.Meta(t.cfg.Topic), m, drain, forgetGrace)
	if err != nil || !ok {
		return false
	}
	var keys []string
	for i := drain; i < m.Drain; i++ {
		for l := range levels {
			keys = append(keys, t.keys.Level(bus.Partition(t.cfg.Topic, i), l))
		}
	}
	if err := t.port.DeleteEach(ctx, keys...); err != nil {
		t.log.Warn().Err(err).Strs("streams", keys).Msg("could not delete forgotten partitions' streams")
	}
	t.log.Info().Str("topic", t.cfg.Topic).Int("from", m.Drain).Int("to", drain).Msg("removed partitions drained: forgotten")
	return true
}
