package consumer

import (
	"context"
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

// topology follows the topic's partitions: the count in its metadata,
// re-read every partWatch; partitions added are read from their first
// entry, partitions removed are read until drained, then forgotten (see
// forget). It publishes the partitions read now, and closes serving once
// the consumer joined every partition known at the start.
type topology struct {
	*env
	// parts are the partitions read now; joins counts the first
	// partitions still to join before serving closes.
	parts   atomic.Pointer[[]*part]
	joins   atomic.Int32
	serving chan struct{}
	served  sync.Once // closes serving
	// meta reads the topic's partition metadata (the type the producer
	// follows counts with), through the port.
	meta *watcher.Topic
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

// count returns how many partitions the consumer reads now.
func (t *topology) count() int {
	if ps := t.parts.Load(); ps != nil {
		return len(*ps)
	}
	return 1
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
	t.joins.Store(int32(m.Drain))
	w := watch{running: map[int]*part{}, start: start}
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
		m = nm
		t.apply(ctx, &w, m, false)
	}
}

// watch is what run keeps between passes: the partitions it started.
type watch struct {
	running map[int]*part
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
		if ctx.Err() == nil && !t.fail(err, "HMGET "+meta) && !redisx.IsConnErr(err) {
			t.log.Warn().Err(err).Str("key", meta).Msg("cannot read the partition count; keeping the last one")
		}
		return nm, false
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
func (t *topology) apply(ctx context.Context, w *watch, m redisx.PartitionMeta, initial bool) {
	for i := range m.Drain {
		if w.running[i] != nil {
			continue
		}
		from := "0" // a partition added while running: every entry
		if initial {
			from = t.cfg.StartID
		}
		pt := t.newPart(i, from)
		pctx, cancel := context.WithCancel(ctx)
		pt.cancel = cancel
		w.running[i] = pt
		w.wg.Go(func() { w.start(pctx, pt) })
		if !initial {
			t.log.Info().Str("topic", t.cfg.Topic).Int("partition", i).Msg("reading a new partition")
		}
	}
	for i, pt := range w.running {
		if i >= m.Drain {
			pt.cancel() // forgotten: drained, and nothing is written to it
			delete(w.running, i)
			t.log.Info().Str("topic", t.cfg.Topic).Int("partition", i).Msg("stopped reading a drained, removed partition")
		}
	}
	ps := make([]*part, 0, len(w.running))
	for i := range m.Drain {
		ps = append(ps, w.running[i])
	}
	t.parts.Store(&ps)
}

// newPart describes partition i, its group starting at start when created.
func (t *topology) newPart(i int, start string) *part {
	name := bus.Partition(t.cfg.Topic, i)
	return &part{idx: i, name: name, key: t.keys.Topic(name), dlqKey: t.keys.DeadLetter(name), start: start,
		delayedKey: t.keys.Delayed(name), retryKey: t.keys.Retry(name)}
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
	for drain > m.N {
		name := bus.Partition(t.cfg.Topic, drain-1)
		ok, err := t.port.Drained(ctx, t.keys.Topic(name), t.keys.DeadLetter(name), []string{t.keys.Delayed(name), t.keys.Retry(name)}, groups)
		if err != nil || !ok {
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
		keys = append(keys, t.keys.Topic(bus.Partition(t.cfg.Topic, i)))
	}
	if err := t.port.DeleteEach(ctx, keys...); err != nil {
		t.log.Warn().Err(err).Strs("streams", keys).Msg("could not delete forgotten partitions' streams")
	}
	t.log.Info().Str("topic", t.cfg.Topic).Int("from", m.Drain).Int("to", drain).Msg("removed partitions drained: forgotten")
	return true
}
