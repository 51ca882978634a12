package topology

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// DefaultRefresh is how old a count may be before it is read again (in
// the background). While Redis answers, a worker forgets a removed
// partition only well after every producer stopped writing to it (the
// consumer's forgetGrace, 15 s, against about this plus a round trip), so
// no entry lands in a partition nobody reads.
const DefaultRefresh = time.Second

// DefaultTimeout bounds one background read.
const DefaultTimeout = 2 * time.Second

// Reader reads one topic's partition metadata: redisx.Partitions on the
// topic's metadata key (bus.Keys.Meta). It is the one Redis operation a
// Watcher needs, given as a function so that a test can make it fail.
type Reader func(ctx context.Context, topic string) (redisx.PartitionMeta, error)

// Spawner runs fn on a goroutine that its owner tracks and stops, with a
// ctx cancelled when the owner stops; it reports false, without running
// fn, once the owner no longer starts any.
type Spawner func(fn func(ctx context.Context)) bool

// Config tunes a Watcher.
type Config struct {
	// Refresh is how old a count may be before a call triggers a
	// background read. Zero means DefaultRefresh.
	Refresh time.Duration
	// Timeout bounds a background read. Zero means DefaultTimeout.
	Timeout time.Duration
	// RefreshFailed, when set, is called (on the background goroutine)
	// with a background read's error; the last count stays in use.
	RefreshFailed func(topic string, err error)
}

// Watcher follows the partition metadata of the topics it is asked about.
// It is safe for concurrent use. It holds no goroutine between calls.
type Watcher struct {
	read   Reader
	spawn  Spawner
	cfg    Config
	topics sync.Map // name -> *Topic
}

// New returns a Watcher reading with read and running background reads
// with spawn.
func New(read Reader, spawn Spawner, cfg Config) *Watcher {
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	return &Watcher{read: read, spawn: spawn, cfg: cfg}
}

// Topic returns the handle of the topic named name, the same for every
// call with that name. It reads nothing.
func (w *Watcher) Topic(name string) *Topic {
	if t, ok := w.topics.Load(name); ok {
		return t.(*Topic)
	}
	t, _ := w.topics.LoadOrStore(name, &Topic{w: w, name: name})
	return t.(*Topic)
}

// Topic is one topic's partition metadata as its Watcher follows it.
type Topic struct {
	w          *Watcher
	name       string
	view       atomic.Pointer[view]
	refreshing atomic.Bool
	mu         sync.Mutex // serialises the first, synchronous read
}

// view is a reading of the metadata.
type view struct {
	meta redisx.PartitionMeta
	read int64 // unix nanoseconds
}

// Count returns the topic's partition count (producers write to
// partitions 0 to Count-1). The first call reads it from Redis, bounded by
// ctx (concurrent first calls share one read); later calls return the
// last count read, and when it is Config.Refresh old at now (unix
// nanoseconds) start one background read of it. While Redis answers, a
// count is thus never older than about Refresh plus a round trip; while
// it does not (its node failing over, say), the last one is used: a
// worker forgets a removed partition only through that same metadata, so
// it cannot do so meanwhile either. The error is the read's, or ctx's when
// ctx ended first.
func (t *Topic) Count(ctx context.Context, now int64) (int, error) {
	if v := t.view.Load(); v != nil {
		if now-v.read >= int64(t.w.cfg.Refresh) {
			t.refresh()
		}
		return v.meta.N, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if v := t.view.Load(); v != nil {
		return v.meta.N, nil // another caller read it meanwhile
	}
	// The caller's deadline must not reach rueidis: on an idle connection a
	// command with a deadline runs synchronously and, when the deadline
	// passes, closes the connection, and every caller then waits for a
	// reconnection (seen with Redis paused: 2 s calls with 300 ms
	// deadlines). A ctx that is only cancelled abandons the wait instead.
	rctx, cancel := redisx.Detach(ctx)
	defer cancel()
	m, err := t.load(rctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	return m.N, nil
}

// Read reads the topic's metadata now, bounded by ctx (not by its
// deadline, as in Count), keeps it as the reading Count and Meta return,
// and returns it: for an owner that reads on its own schedule and acts on
// each reading (the consumer's topology, which starts and forgets
// partitions).
func (t *Topic) Read(ctx context.Context) (redisx.PartitionMeta, error) {
	rctx, cancel := redisx.Detach(ctx)
	defer cancel()
	m, err := t.load(rctx)
	if err != nil && ctx.Err() != nil {
		return m, ctx.Err()
	}
	return m, err
}

// Meta returns the metadata last read, and false before any read
// succeeded.
func (t *Topic) Meta() (redisx.PartitionMeta, bool) {
	if v := t.view.Load(); v != nil {
		return v.meta, true
	}
	return redisx.PartitionMeta{}, false
}

// refresh reads the metadata on a background goroutine, one read at a
// time per topic.
func (t *Topic) refresh() {
	if !t.refreshing.CompareAndSwap(false, true) {
		return
	}
	if !t.w.spawn(func(ctx context.Context) {
		defer t.refreshing.Store(false)
		ctx, cancel := context.WithTimeout(ctx, t.w.cfg.Timeout)
		defer cancel()
		// Not under t.mu: a first read takes it on a call's path, and a
		// slow Redis must not hold that call (the view is atomic; the
		// refreshing flag keeps refreshes one at a time).
		if _, err := t.load(ctx); err != nil && t.w.cfg.RefreshFailed != nil {
			t.w.cfg.RefreshFailed(t.name, err)
		}
	}) {
		t.refreshing.Store(false) // the owner stopped
	}
}

// load reads the metadata and keeps it as the topic's view.
func (t *Topic) load(ctx context.Context) (redisx.PartitionMeta, error) {
	m, err := t.w.read(ctx, t.name)
	if err != nil {
		return m, err
	}
	t.view.Store(&view{meta: m, read: time.Now().UnixNano()})
	return m, nil
}
