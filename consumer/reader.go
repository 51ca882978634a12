package consumer

import (
	"cmp"
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// timedWait bounds a wait for new entries of a reader under a topic's
// limits (it holds no permit while it waits: see readOne): an entry added
// between its empty read and the wait is read at most this late.
const timedWait = 250 * time.Millisecond

// fairBlock bounds a blocking read of one partition when handler slots are
// fewer than partitions: the read holds a slot, so it returns soon to let
// another partition's loop have it.
const fairBlock = 50 * time.Millisecond

// reader reads new entries (XREADGROUP ">") and hands them to the router,
// never more than it holds handler slots for. One type serves both modes:
// on a single server (standalone, or Sentinel's master) one multi-stream
// read covers every partition (readAll); on a cluster each partition is
// read apart (readPartition), its streams living in different slots.
type reader struct {
	*env
	topo    *topology
	members *membership
	route   *router
	rot     atomic.Uint64 // where a limited read of fewer permits than partitions starts (readEach)
}

// readPartition reads pt's entries while ctx lives, never more than free
// slots.
//
// With one partition, a read takes one slot (waiting for it) and any others
// free right now, and blocks for up to Block. With several, each holds a
// fair share: a read that does not block takes up to Concurrency/partitions
// entries, and only when it finds none does the loop block, holding one
// slot (and for at most fairBlock when slots are fewer than partitions), so
// an idle partition never sits on slots that another partition's entries
// wait for.
func (r *reader) readPartition(ctx context.Context, pt *part, p *pipe) {
	out := redisx.Outage{Log: r.log, What: "read loop " + pt.key}
	var rd redisx.ReadDeadline
	defer rd.Stop()
	ready, first := false, true
	for ctx.Err() == nil {
		if levels, _, _ := r.topo.sched(); levels > 1 {
			// The topic has priority levels now (they are never removed):
			// this partition's levels are read together, in their order.
			r.readAll(ctx, p, pt.idx)
			return
		}
		if !ready {
			if err := r.members.join(ctx, pt); err != nil {
				if r.fail(err, "creating or joining the group on "+pt.key) {
					return
				}
				out.Failed(err)
				out.Backoff(ctx)
				continue
			}
			ready = true
			if first {
				first = false
				r.topo.joined(pt)
			}
		}
		entries, held, g, err := r.readOne(ctx, pt, p, &rd)
		if err != nil {
			r.lim.filled(g)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, bus.ErrNoGroup) {
				if r.topo.forgotten(ctx, pt) {
					return // another worker forgot this drained partition: do not recreate it
				}
				r.log.Warn().Str("stream", pt.key).Str("group", r.cfg.Group).Msg("group missing (Redis restarted or flushed?); recreating it")
				ready = false
				continue
			}
			if r.fail(err, "XREADGROUP "+pt.key) {
				return
			}
			out.Failed(err)
			out.Backoff(ctx)
			continue
		}
		out.OK()
		if len(entries) > 0 {
			r.stats.reads.Add(1)
		}
		ok := len(entries) == 0 || r.lim.holdWhilePaused(ctx)
		ok = ok && r.deliver(ctx, pt, entries, &held, p)
		r.lim.filled(g) // after deliver: its entries are in flight
		if !ok {
			return
		}
		r.handOver(len(entries))
	}
}

// readOne makes one read of pt (see readPartition) and returns its
// entries and how many of them hold a slot (the others wait for one: some
// of the read's slots were lent while it blocked). Slots it does not use
// go back to the pool.
//
// It reads no more than the topic's limits grant (limiter.take); the
// caller passes the grant to limiter.filled once the entries are routed
// (in flight): the permits they do not use go back then.
func (r *reader) readOne(ctx context.Context, pt *part, p *pipe, rd *redisx.ReadDeadline) ([]redisx.Entry, int, grant, error) {
	if !p.slots.take(ctx) {
		return nil, 0, grant{}, ctx.Err()
	}
	nparts := r.topo.count()
	limit := min(r.cfg.held(), maxReadBatch)
	if nparts > 1 {
		limit = max(1, min(limit, (r.cfg.held()+nparts-1)/nparts))
	}
	n := p.slots.more(1, limit)
	g := r.permits(ctx, p, n)
	if g.n == 0 {
		return nil, 0, grant{}, ctx.Err()
	}
	n = g.n
	var entries []redisx.Entry
	var err error
	if g.now() {
		// Permits of a rate or token budget are spent when granted, and
		// leases held by a waiting read keep other workers (and this one's
		// reclaimer) from entries: read what is there now; when nothing
		// is, give them back and wait for an entry holding none.
		entries, err = r.port.ReadGroupNow(ctx, pt.key, r.cfg.Group, r.cfg.Name, int64(n))
		if err == nil && len(entries) == 0 {
			p.slots.give(n)
			r.lim.filled(g)
			_, err = r.port.WaitNew(rd.For(ctx, timedWait), []string{pt.key}, timedWait)
			return nil, 0, grant{}, err
		}
	} else if nparts > 1 {
		entries, err = r.port.ReadGroupNow(ctx, pt.key, r.cfg.Group, r.cfg.Name, int64(n))
		if err == nil && len(entries) == 0 {
			p.slots.give(n - 1)
			n = 1
			block := r.cfg.Block
			if nparts > r.cfg.held() {
				block = min(block, fairBlock)
			}
			entries, err = r.port.ReadGroup(rd.For(ctx, block), pt.key, r.cfg.Group, r.cfg.Name, ">", 1, block)
		}
	} else {
		// Its slots are on loan while it blocks (see slotLoan).
		lent := p.slots.loan.offer(n)
		entries, err = r.port.ReadGroup(rd.For(ctx, r.cfg.Block), pt.key, r.cfg.Group, r.cfg.Name, ">", int64(n), r.cfg.Block)
		if lent {
			n -= p.slots.loan.withdraw(n)
		}
	}
	if len(entries) < n {
		p.slots.give(n - len(entries))
	}
	g.got = len(entries)
	return entries, n, g, err
}

// deliver routes entries read from pt: the first *held with the slots the
// read held, the others each once it has one. It reports false when ctx
// ended first (the rest stay pending: reclaimed after ClaimIdle).
func (r *reader) deliver(ctx context.Context, pt *part, entries []redisx.Entry, held *int, p *pipe) bool {
	now := time.Now()
	for k := range entries {
		if *held == 0 {
			if !p.slots.claim(ctx) {
				return false
			}
			now = time.Now()
		} else {
			*held--
		}
		r.route.route(pt, &entries[k], now, 1, p)
	}
	return true
}

// readAll reads every partition being read with one XREADGROUP over all
// their streams, while ctx lives: on a single server a multi-stream read
// costs one round trip, however many partitions a topic has.
//
// It holds n free slots (one, waited for, then any others free now) and
// asks each stream for up to max(1, n/partitions) entries, so no partition
// starves; a read that returns more entries than slots (n below the
// partition count) waits for slots before routing the extra ones, which
// stay pending meanwhile (at most one per partition).
//
// only >= 0 reads that partition's streams alone (its priority levels, on
// a cluster: they share its slot).
func (r *reader) readAll(ctx context.Context, p *pipe, only int) {
	out := redisx.Outage{Log: r.log, What: "read loop " + r.key}
	var rd redisx.ReadDeadline
	defer rd.Stop()
	g := groups{joined: map[*part]bool{}, announced: map[*part]bool{}}
	var ls levelSched
	for ctx.Err() == nil {
		ps := r.topo.current()
		if only >= 0 {
			ps = partsOf(ps, only)
		}
		if len(ps) == 0 {
			sleepCtx(ctx, 10*time.Millisecond) // the topology has not published the partitions yet
			continue
		}
		if !r.joinAll(ctx, ps, &g, &out) {
			if r.fatal() != nil {
				return
			}
			continue
		}
		read, keys := g.read(ps)
		if len(read) == 0 {
			continue
		}
		res, held, gr, err := r.readEach(ctx, read, keys, p, &rd, &ls)
		if err != nil {
			r.lim.filled(gr)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, bus.ErrNoGroup) {
				r.log.Warn().Strs("streams", keys).Str("group", r.cfg.Group).Msg("group missing (Redis restarted or flushed, or a partition forgotten?); recreating it")
				clear(g.joined)
				g.recreate = true
				continue
			}
			if r.fail(err, "XREADGROUP "+strings.Join(keys, " ")) {
				return
			}
			out.Failed(err)
			out.Backoff(ctx)
			continue
		}
		out.OK()
		ok := gr.got == 0 || r.lim.holdWhilePaused(ctx)
		for i, es := range res {
			if !ok {
				break
			}
			if ok = r.deliver(ctx, read[i], es, &held, p); !ok {
				break
			}
		}
		r.lim.filled(gr) // after deliver: its entries are in flight
		if !ok {
			return
		}
		r.handOver(entriesIn(res))
	}
}

// groups is readAll's record of the partitions whose group it joined.
type groups struct {
	joined    map[*part]bool // group created and joined since the last NOGROUP
	announced map[*part]bool // counted for Serving
	recreate  bool           // a NOGROUP: skip forgotten partitions when joining again
	parts     []*part        // read's buffers, reused
	keys      []string
}

// read returns the partitions of ps whose group is joined, and their
// streams (valid until the next call).
func (g *groups) read(ps []*part) ([]*part, []string) {
	g.parts, g.keys = g.parts[:0], g.keys[:0]
	for _, pt := range ps {
		if g.joined[pt] {
			g.parts = append(g.parts, pt)
			g.keys = append(g.keys, pt.key)
		}
	}
	return g.parts, g.keys
}

// joinAll joins the group on every partition of ps not joined yet; false
// when one failed (it backed off, or the failure stopped Run).
func (r *reader) joinAll(ctx context.Context, ps []*part, g *groups, out *redisx.Outage) bool {
	for _, pt := range ps {
		if g.joined[pt] {
			continue
		}
		if g.recreate && r.topo.forgotten(ctx, pt) {
			continue // forgotten by a worker: the topology drops it
		}
		if err := r.members.join(ctx, pt); err != nil {
			if !r.fail(err, "creating or joining the group on "+pt.key) {
				out.Failed(err)
				out.Backoff(ctx)
			}
			return false
		}
		g.joined[pt] = true
		if !g.announced[pt] {
			g.announced[pt] = true
			r.topo.joined(pt)
		}
	}
	g.recreate = false
	return true
}

// readEach makes one read of the streams of read (see readAll) and returns
// the entries of each and how many hold a slot.
func (r *reader) readEach(ctx context.Context, read []*part, keys []string, p *pipe, rd *redisx.ReadDeadline, ls *levelSched) ([][]redisx.Entry, int, grant, error) {
	if !p.slots.take(ctx) {
		return nil, 0, grant{}, ctx.Err()
	}
	n := p.slots.more(1, min(r.cfg.held(), maxReadBatch))
	g := r.permits(ctx, p, n)
	if g.n == 0 {
		return nil, 0, grant{}, ctx.Err()
	}
	n = g.n
	all := len(read)
	var sel []int
	if (g.leased || g.timed) && n < len(read) {
		// Fewer permits than partitions: XREADGROUP's COUNT is per
		// stream, so reading them all could bring more entries than
		// permits (handlers past the limit). Read n of them, in turn.
		read, keys, sel = r.subset(read, keys, n)
	}
	res, n, g, err := r.readSome(ctx, read, keys, p, rd, ls, n, g)
	if sel != nil && res != nil {
		full := make([][]redisx.Entry, all)
		for k, i := range sel {
			full[i] = res[k]
		}
		res = full
	}
	return res, n, g, err
}

// subset returns n of read (and their keys) starting at the reader's turn,
// and their indexes in read.
func (r *reader) subset(read []*part, keys []string, n int) ([]*part, []string, []int) {
	off := int(r.rot.Add(1) % uint64(len(read)))
	ps, ks, idx := make([]*part, n), make([]string, n), make([]int, n)
	for k := range n {
		i := (off + k) % len(read)
		ps[k], ks[k], idx[k] = read[i], keys[i], i
	}
	return ps, ks, idx
}

// readSome is readEach's read of read's streams holding n slots and g.
func (r *reader) readSome(ctx context.Context, read []*part, keys []string, p *pipe, rd *redisx.ReadDeadline, ls *levelSched, n int, g grant) ([][]redisx.Entry, int, grant, error) {
	per := max(1, n/len(read))
	var res [][]redisx.Entry
	var err error
	if levels, _, _ := r.topo.sched(); levels > 1 {
		// Priority levels: the first level (in the order of their passes,
		// see levelSched) that has entries now is read; only when none has
		// does the read wait, on every level.
		res, err = r.readLevels(ctx, read, n, ls)
		if got := entriesIn(res); err != nil || got > 0 {
			if got < n {
				p.slots.give(n - got)
			}
			if got > 0 {
				r.stats.reads.Add(1)
			}
			g.got = got
			return res, n, g, err
		}
	}
	if g.now() {
		// As readOne: permits are used at once (BLOCK 1 ms), given back
		// when nothing came, and the wait for entries holds none.
		res, err = r.port.ReadGroupAll(rd.For(ctx, time.Millisecond), keys, r.cfg.Group, r.cfg.Name, int64(per), time.Millisecond)
		if err == nil && entriesIn(res) == 0 {
			p.slots.give(n)
			r.lim.filled(g)
			_, err = r.port.WaitNew(rd.For(ctx, timedWait), keys, timedWait)
			return nil, 0, grant{}, err
		}
	} else {
		// Its slots are on loan while it blocks (see slotLoan): what comes
		// back beyond the slots left waits for one (deliver).
		lent := p.slots.loan.offer(n)
		res, err = r.port.ReadGroupAll(rd.For(ctx, r.cfg.Block), keys, r.cfg.Group, r.cfg.Name, int64(per), r.cfg.Block)
		if lent {
			n -= p.slots.loan.withdraw(n)
		}
	}
	got := entriesIn(res)
	if got < n {
		p.slots.give(n - got)
	}
	if got > 0 {
		r.stats.reads.Add(1)
		if levels, weights, _ := r.topo.sched(); levels > 1 {
			// A wait on every level: what came is counted by level.
			for i, es := range res {
				if l := read[i].level; len(es) > 0 && l < len(r.stats.levelReads) {
					r.stats.levelReads[l].Add(uint64(len(es)))
					ls.read(l, len(es), weights, nil)
				}
			}
		}
	}
	g.got = got
	return res, n, g, err
}

// readLevels reads, without blocking, up to n entries of the first level
// in order that has any, from its streams among read (a fair share of n
// each); the result is by stream of read.
func (r *reader) readLevels(ctx context.Context, read []*part, n int, ls *levelSched) ([][]redisx.Entry, error) {
	levels, weights, strict := r.topo.sched()
	order := ls.next(levels, strict)
	res := make([][]redisx.Entry, len(read))
	idx := make([]int, 0, len(read))
	keys := make([]string, 0, len(read))
	for k, l := range order {
		idx, keys = idx[:0], keys[:0]
		for i, pt := range read {
			if pt.level == l {
				idx = append(idx, i)
				keys = append(keys, pt.key)
			}
		}
		if len(keys) == 0 {
			continue
		}
		got, err := r.port.ReadGroupAllNow(ctx, keys, r.cfg.Group, r.cfg.Name, int64(max(1, n/len(keys))))
		if err != nil {
			return nil, err
		}
		total := 0
		for j, es := range got {
			res[idx[j]] = es
			total += len(es)
		}
		if total > 0 {
			r.stats.levelReads[min(l, len(r.stats.levelReads)-1)].Add(uint64(total))
			ls.read(l, total, weights, order[:k])
			return res, nil
		}
	}
	ls.idle()
	return res, nil
}

// levelSched orders a reader's priority levels (stride scheduling): each
// level has a pass, raised by 1/weight for each entry of it read; a read
// tries the levels by ascending pass (strict mode: in level order) and
// takes the first that has entries. With every level backlogged each gets
// its weight's share of the entries read; a level found empty is raised to
// the pass of the level read then, so an idle level banks no credit, and
// a request arriving on it is read first at the next read.
type levelSched struct {
	pass  []float64
	order []int
}

// next returns the order in which the next read tries the levels.
func (s *levelSched) next(levels int, strict bool) []int {
	if len(s.pass) != levels {
		s.pass = make([]float64, levels)
		s.order = make([]int, levels)
	}
	for i := range s.order {
		s.order[i] = i
	}
	if !strict {
		slices.SortStableFunc(s.order, func(a, b int) int { return cmp.Compare(s.pass[a], s.pass[b]) })
	}
	return s.order
}

// idle notes that every level was found empty: none banks credit.
func (s *levelSched) idle() {
	top := slices.Max(s.pass)
	for i := range s.pass {
		s.pass[i] = top
	}
}

// read notes that the read took n entries of level l, having found the
// levels tried before it (tried) empty.
func (s *levelSched) read(l, n int, weights []int, tried []int) {
	if l >= len(s.pass) {
		return
	}
	for _, e := range tried {
		s.pass[e] = max(s.pass[e], s.pass[l])
	}
	w := 1
	if l < len(weights) {
		w = max(weights[l], 1)
	}
	s.pass[l] += float64(n) / float64(w)
}

// partsOf returns the parts of ps in partition i.
func partsOf(ps []*part, i int) []*part {
	var out []*part
	for _, pt := range ps {
		if pt.idx == i {
			out = append(out, pt)
		}
	}
	return out
}

// entriesIn counts the entries of a multi-stream read.
func entriesIn(res [][]redisx.Entry) int {
	n := 0
	for _, es := range res {
		n += len(es)
	}
	return n
}

// permits asks the topic's limits for up to n permits for a read holding n
// slots, and keeps as many slots as it got; none: it gives the slots back
// and waits for permits holding none (see limiter.try), then returns
// grant{} for the caller to read again.
func (r *reader) permits(ctx context.Context, p *pipe, n int) grant {
	if r.cfg.Prefetch > 0 && r.lim.active.Load() {
		// A limited topic: read only what a handler may start now (at
		// least one), as without Prefetch: entries read ahead would hold
		// leases and spent permits while they wait.
		if want := max(1, min(n, r.cfg.Concurrency-int(r.inFlight.Load()))); want < n {
			p.slots.give(n - want)
			n = want
		}
	}
	g, wait := r.lim.try(ctx, n)
	if g.n == 0 {
		p.slots.give(n)
		r.lim.sleep(ctx, wait)
		return grant{}
	}
	if g.n < n {
		p.slots.give(n - g.n)
	}
	return g
}

// handOver lets the worker that a read of one entry readied run before the
// reader's next read, when that entry is the only one held (one caller).
// The worker waits in its P's run queue otherwise while the reader sends
// its next XREADGROUP (a write, ~25 µs on the 2-vCPU VMs) and behind the
// client's goroutines that write it: 40 µs per request at one caller (go
// tool trace -pprof=sched of bus-bench; docs/performance.md, "One
// caller"). With more held, the next entries are likely on their way and
// the reader goes straight back to reading (yielding there cost 7% of p50
// at five callers).
func (r *reader) handOver(n int) {
	if n == 1 && r.inFlight.Load() <= 1 {
		runtime.Gosched()
	}
}
