package producer

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/egos/mycelium/breaker"
	"github.com/egos/mycelium/bus"
)

// topic is what a producer keeps per topic: its stream key, breaker,
// responders check, cache state, control stream and partitions. A
// partition after the first is a topic too (parent set, idx its number),
// with its own stream key, breaker and cache state; responders, presence
// and control stream are its topic's.
type topic struct {
	name     string
	key      string
	presence string           // its workers' presence set
	br       *breaker.Breaker // nil when breakers are off (admission)
	resp     *responders
	cache    *topicCache // nil when the topic is not cached
	// parts is the topic's partition count and its partitions after the
	// first (see partition.go); parent is set on those partitions.
	parts  parts
	parent *topic
	ctl    string // the topic's control stream (cancel notices, wake-ups)
	idx    int    // its partition number (0 for a topic itself)
	bl     backlog
	// level is its priority level (0: the partition's own stream); a
	// partition keeps its levels above 0 in levels (see partition.go),
	// each a topic value of its own with its stream and delayed set.
	level   int
	levels  atomic.Pointer[[]*topic]
	delayed string // its delayed events' sorted set
}

// index returns t's partition number (0 for a topic itself).
func (t *topic) index() int { return t.idx }

// root returns the topic a partition belongs to (t itself for a topic).
func (t *topic) root() *topic {
	if t.parent != nil {
		return t.parent
	}
	return t
}

// topics is the registry of the topics a producer wrote to, each made and
// validated once (with its breaker, responders, cache state and partition
// watch) and kept until Close, which closes their breakers.
type topics struct {
	m     sync.Map // name -> *topic
	keys  bus.Keys
	cache map[string]CacheConfig
	adm   *admission
	parts *partitioner
}

// get returns the topic named name, creating (and validating) it once.
func (ts *topics) get(name string) (*topic, error) {
	if t, ok := ts.m.Load(name); ok {
		return t.(*topic), nil
	}
	if err := bus.ValidateName("topic", name); err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	t := &topic{name: name, key: ts.keys.Topic(name), presence: ts.keys.Workers(name), resp: newResponders(), ctl: ts.keys.Control(name), delayed: ts.keys.Delayed(name)}
	t.parts.count = ts.parts.watch.Topic(name)
	if cc, ok := ts.cache[name]; ok {
		t.cache = &topicCache{cfg: cc, meta: ts.keys.Meta(name)}
	}
	br, err := ts.adm.newBreaker(name)
	if err != nil {
		return nil, err
	}
	t.br = br
	if prev, loaded := ts.m.LoadOrStore(name, t); loaded {
		if t.br != nil {
			t.br.Close()
		}
		return prev.(*topic), nil
	}
	return t, nil
}

// breakerState returns the state of the breaker of the topic named name
// (its partition 0's), and false when there is none (breakers off, or no
// call to the topic yet).
func (ts *topics) breakerState(name string) (breaker.State, bool) {
	t, ok := ts.m.Load(name)
	if !ok || t.(*topic).br == nil {
		return breaker.Closed, false
	}
	return t.(*topic).br.State(), true
}

// closeBreakers releases every topic's and partition's breaker.
func (ts *topics) closeBreakers() {
	ts.m.Range(func(_, v any) bool {
		t := v.(*topic)
		if t.br != nil {
			t.br.Close()
		}
		if s := t.parts.subs.Load(); s != nil {
			for _, st := range *s {
				if st != nil && st.br != nil {
					st.br.Close()
				}
			}
		}
		return true
	})
}
