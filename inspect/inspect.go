package inspect

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/internal/redisx"
)

// Inspector reads and repairs the bus's streams through a bus.Client, under
// the client's key prefix. It is safe for concurrent use and holds no state
// of its own; it never closes the client.
type Inspector struct {
	c    *bus.Client
	port port // every command goes through it (port.go)
	keys bus.Keys
}

// New returns an Inspector of the bus c reaches.
func New(c *bus.Client) *Inspector { return &Inspector{c: c, port: redisx.PortOf(c), keys: c.Keys()} }

// Topic is one topic's stream at one moment.
type Topic struct {
	Name    string
	Length  int64  // entries in the stream
	FirstID string // oldest entry's id; "" when the stream is empty
	LastID  string // newest entry's id; "" when the stream is empty
	// FirstEntryAge and LastEntryAge are the ages of those entries by their
	// ids; 0 when the stream is empty.
	FirstEntryAge, LastEntryAge time.Duration
	DeadLetters                 int64 // entries in the topic's dead-letter stream
	// Delayed counts delayed events not yet due and entries waiting for a
	// delayed retry (docs/streams.md).
	Delayed int64
	Groups  []Group
	// Partitions is the topic's partition count and Draining the removed
	// partitions still read (see Partitions). For a partitioned topic the
	// figures above add up its partitions, each of which is in Parts (with
	// its Partition number); Parts is nil for a topic of one partition.
	Partitions, Draining int
	Partition            int
	Parts                []Topic
	// Levels is the topic's priority levels (0 or 1: none); then Parts
	// holds each partition's level streams apart (with their Level), and
	// ByLevel adds them up per level.
	Levels  int
	Level   int
	ByLevel []LevelFigures
	// Strict: the levels are served strictly in order (SetScheduling).
	Strict bool
	// Limits are the topic's fleet-wide limits and pause (SetLimits,
	// PauseTopic); zero when none.
	Limits Limits
	// Err is, in an Overview, why the topic could not be read (malformed
	// metadata, a key of the wrong type): its figures are then zero, and
	// the other topics are read all the same.
	Err string
}

// LevelFigures are one priority level's figures, over the topic's
// partitions.
type LevelFigures struct {
	Level   int   `json:"level"`
	Weight  int   `json:"weight"`
	Length  int64 `json:"length"`
	Pending int64 `json:"pending"` // over every group
	// Lag is the entries not yet delivered, over every group; -1 when
	// Redis cannot tell.
	Lag int64 `json:"lag"`
}

// Group is one consumer group of a topic.
type Group struct {
	Name            string
	Pending         int64  // entries delivered and not yet acknowledged
	OldestPendingID string // "" when none
	// OldestPendingAge is the oldest pending entry's age by its id; 0 when
	// none.
	OldestPendingAge time.Duration
	// Lag is the number of entries not yet delivered to the group; -1 when
	// Redis cannot tell (before 7.0, or after some deletions).
	Lag int64
	// Read is the entries delivered to the group since its stream began
	// (Redis's entries-read, over the partitions); -1 when Redis cannot
	// tell. Read - Pending grows by one per entry the group acknowledged,
	// Read + Lag by one per entry added: two readings make rates.
	Read            int64
	LastDeliveredID string
	Consumers       []Consumer
}

// Consumer is one member of a group.
type Consumer struct {
	Name    string
	Pending int64         // entries it holds
	Idle    time.Duration // since its last read or claim (Redis before 7.2: since its last read that returned entries)
	// LastBeat is how long ago it last announced itself in the topic's
	// presence set (a live worker does every few seconds, idle or not);
	// -1 when it is not there (gone, or a worker that does not announce).
	LastBeat time.Duration
}

// ReplyStream is one producer's reply stream.
type ReplyStream struct {
	ProducerID string
	Key        string
	Length     int64
	// TTL is how long the stream outlives its producer if nobody refreshes
	// it; negative when it has no expiry.
	TTL time.Duration
}

// Overview is every topic and reply stream under the prefix.
type Overview struct {
	Time         time.Time
	Topics       []Topic
	ReplyStreams []ReplyStream
}

// Topic reads one topic: its stream, dead-letter count, and each group with
// its pending summary and consumers. It costs one round trip plus one per
// group, each O(1) in the stream's length (XLEN, XRANGE/XREVRANGE COUNT 1,
// XINFO GROUPS, XPENDING summary, XINFO CONSUMERS), for each partition. A
// topic that does not exist reads as empty.
//
// A partitioned topic's figures add up its partitions (lengths, dead
// letters, pending and lag per group, pending per consumer; the oldest
// first and newest last entry); Parts holds each partition's own.
func (i *Inspector) Topic(ctx context.Context, name string) (Topic, error) {
	ps, err := i.partitions(ctx, name)
	if err != nil {
		return Topic{}, err
	}
	names := ps.names()
	var t Topic
	if len(names) == 1 && ps.Levels <= 1 {
		t, err = i.partTopic(ctx, name, name, 0)
		t.Partitions = 1
		if err != nil {
			return t, err
		}
	} else {
		t = Topic{Name: name, Partitions: ps.Count, Draining: ps.Draining}
		levels := max(ps.Levels, 1)
		for _, pn := range names {
			for l := range levels {
				pt, err := i.partTopic(ctx, name, pn, l)
				if err != nil {
					return t, err
				}
				t.Parts = append(t.Parts, pt)
			}
		}
		t.add(time.Now())
		if levels > 1 {
			t.Levels, t.Strict = levels, ps.Strict
			t.byLevel(ps.Weights)
		}
	}
	i.beats(ctx, &t)
	if t.Limits, err = i.port.GetLimits(ctx, i.keys.Meta(name)); err != nil {
		return t, fmt.Errorf("inspect: limits of %s: %w", name, redisx.Unavailable(err))
	}
	return t, nil
}

// beats fills in when each consumer of t last announced itself. A presence
// set it may not read (a user without ZRANGE) leaves them unknown (-1).
func (i *Inspector) beats(ctx context.Context, t *Topic) {
	seen, _ := i.port.Beats(ctx, i.keys.Workers(t.Name))
	now := time.Now()
	for g := range t.Groups {
		for k := range t.Groups[g].Consumers {
			c := &t.Groups[g].Consumers[k]
			c.LastBeat = -1
			if at, ok := seen[t.Groups[g].Name+" "+c.Name]; ok {
				c.LastBeat = max(now.Sub(at), 0)
			}
		}
	}
}

// add sums t.Parts into t.
func (t *Topic) add(now time.Time) {
	groups := map[string]int{}
	for _, p := range t.Parts {
		t.Length += p.Length
		t.DeadLetters += p.DeadLetters
		t.Delayed += p.Delayed
		if p.FirstID != "" && (t.FirstID == "" || redisx.CompareIDs(p.FirstID, t.FirstID) < 0) {
			t.FirstID = p.FirstID
		}
		if redisx.CompareIDs(p.LastID, t.LastID) > 0 {
			t.LastID = p.LastID
		}
		for _, g := range p.Groups {
			k, ok := groups[g.Name]
			if !ok {
				k = len(t.Groups)
				groups[g.Name] = k
				t.Groups = append(t.Groups, Group{Name: g.Name})
			}
			tg := &t.Groups[k]
			tg.Pending += g.Pending
			if tg.Read >= 0 {
				if g.Read < 0 {
					tg.Read = -1
				} else {
					tg.Read += g.Read
				}
			}
			if g.OldestPendingID != "" && (tg.OldestPendingID == "" || redisx.CompareIDs(g.OldestPendingID, tg.OldestPendingID) < 0) {
				tg.OldestPendingID = g.OldestPendingID
			}
			if tg.Lag >= 0 {
				if g.Lag < 0 {
					tg.Lag = -1
				} else {
					tg.Lag += g.Lag
				}
			}
			if redisx.CompareIDs(g.LastDeliveredID, tg.LastDeliveredID) > 0 {
				tg.LastDeliveredID = g.LastDeliveredID
			}
			for _, c := range g.Consumers {
				j := slices.IndexFunc(tg.Consumers, func(x Consumer) bool { return x.Name == c.Name })
				if j < 0 {
					tg.Consumers = append(tg.Consumers, c)
					continue
				}
				tg.Consumers[j].Pending += c.Pending
				tg.Consumers[j].Idle = min(tg.Consumers[j].Idle, c.Idle)
			}
		}
	}
	t.FirstEntryAge, t.LastEntryAge = age(t.FirstID, now), age(t.LastID, now)
	for k := range t.Groups {
		t.Groups[k].OldestPendingAge = age(t.Groups[k].OldestPendingID, now)
	}
}

// byLevel adds t.Parts up per priority level.
func (t *Topic) byLevel(weights []int) {
	t.ByLevel = make([]LevelFigures, t.Levels)
	for l := range t.ByLevel {
		t.ByLevel[l] = LevelFigures{Level: l, Weight: 1}
		if l < len(weights) {
			t.ByLevel[l].Weight = weights[l]
		}
	}
	for _, p := range t.Parts {
		f := &t.ByLevel[p.Level]
		f.Length += p.Length
		for _, g := range p.Groups {
			f.Pending += g.Pending
			if f.Lag >= 0 {
				if g.Lag < 0 {
					f.Lag = -1
				} else {
					f.Lag += g.Lag
				}
			}
		}
	}
}

// partTopic reads one partition (part, a partition name) of topic, at
// priority level (0: the partition's own stream; the dead letters, one
// stream per partition, are counted there).
func (i *Inspector) partTopic(ctx context.Context, topic, part string, level int) (Topic, error) {
	key := i.keys.Level(part, level)
	si, err := i.port.Info(ctx, key, i.keys.DeadLetter(part), i.keys.LevelDelayed(part, level), i.keys.LevelRetry(part, level))
	if err != nil {
		return Topic{}, fmt.Errorf("inspect: topic %s: %w", key, redisx.Unavailable(err))
	}
	if level > 0 {
		si.DeadLetters = 0
	}
	now := time.Now()
	_, pnum, _ := bus.ParsePartition(part)
	t := Topic{Name: topic, Partition: pnum, Level: level, Length: si.Length, FirstID: si.FirstID, LastID: si.LastID,
		FirstEntryAge: age(si.FirstID, now), LastEntryAge: age(si.LastID, now), DeadLetters: si.DeadLetters, Delayed: si.Delayed,
		Groups: make([]Group, 0, len(si.Groups))}
	for _, g := range si.Groups {
		p, cs, err := i.port.GroupDetail(ctx, key, g.Name)
		switch {
		case errors.Is(err, redisx.ErrNoGroup):
			continue // destroyed since XINFO GROUPS listed it
		case err != nil:
			return t, fmt.Errorf("inspect: topic %s group %s: %w", key, g.Name, redisx.Unavailable(err))
		}
		gr := Group{Name: g.Name, Pending: g.Pending, OldestPendingID: p.OldestID, OldestPendingAge: age(p.OldestID, now),
			Lag: g.Lag, Read: g.Read, LastDeliveredID: g.LastDeliveredID, Consumers: make([]Consumer, 0, len(cs))}
		for _, ci := range cs {
			gr.Consumers = append(gr.Consumers, Consumer{Name: ci.Name, Pending: ci.Pending, Idle: ci.Idle})
		}
		t.Groups = append(t.Groups, gr)
	}
	return t, nil
}

// Topics returns the names of every topic under the prefix that has a
// stream or dead letters, sorted. It walks the keyspace (SCAN): meant for
// operator tools, not for hot paths.
func (i *Inspector) Topics(ctx context.Context) ([]string, error) {
	topics, _, err := i.scan(ctx)
	return topics, err
}

// overviewParallel is how many topics Overview reads at once: their
// round trips overlap (the client pipelines them), so 1,000 topics take a
// fraction of a second instead of one round trip after another.
const overviewParallel = 16

// Overview reads every topic (see Topic) and reply stream under the prefix.
// It walks the keyspace once (SCAN), then reads the topics, several at a
// time.
func (i *Inspector) Overview(ctx context.Context) (*Overview, error) {
	topics, replies, err := i.scan(ctx)
	if err != nil {
		return nil, err
	}
	o := &Overview{Time: time.Now(), Topics: make([]Topic, len(topics))}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(overviewParallel)
	for k, name := range topics {
		g.Go(func() error {
			t, err := i.Topic(gctx, name)
			switch {
			case err == nil:
			case errors.Is(err, redisx.ErrCorruptMeta) || redisx.IsRedisReply(err):
				// What this topic's keys hold is wrong, not Redis: say so
				// for it and read the others.
				t = Topic{Name: name, Err: err.Error()}
			default:
				return err
			}
			o.Topics[k] = t
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if o.ReplyStreams, err = i.replyStreams(ctx, replies); err != nil {
		return nil, err
	}
	return o, nil
}

// ReplyStreams lists the producers' reply streams with their length and
// time to live. It walks the keyspace (SCAN).
func (i *Inspector) ReplyStreams(ctx context.Context) ([]ReplyStream, error) {
	_, replies, err := i.scan(ctx)
	if err != nil {
		return nil, err
	}
	return i.replyStreams(ctx, replies)
}

func (i *Inspector) replyStreams(ctx context.Context, keys []string) ([]ReplyStream, error) {
	sizes, err := i.port.Sizes(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("inspect: reply streams: %w", redisx.Unavailable(err))
	}
	out := make([]ReplyStream, 0, len(sizes))
	for _, s := range sizes {
		if s.TTL == -2 { // expired between the scan and the read
			continue
		}
		id, _ := i.keys.ParseReply(s.Key)
		out = append(out, ReplyStream{ProducerID: id, Key: s.Key, Length: s.Length, TTL: s.TTL})
	}
	return out, nil
}

// scan finds the bus's streams: topic names (from topic and dead-letter
// streams, sorted) and reply stream keys (sorted).
func (i *Inspector) scan(ctx context.Context) (topics, replies []string, err error) {
	keys, err := i.port.ScanStreams(ctx, i.keys.Pattern())
	if err != nil {
		return nil, nil, fmt.Errorf("inspect: %w", redisx.Unavailable(err))
	}
	seen := map[string]bool{}
	for _, k := range keys {
		if t, ok := i.keys.ParseTopic(k); ok {
			if t, _, ok := bus.ParsePartition(t); ok {
				seen[t] = true
			}
		} else if t, _, ok := i.keys.ParseLevel(k); ok {
			if t, _, ok := bus.ParsePartition(t); ok {
				seen[t] = true // a topic with priority levels, its level 0 empty
			}
		} else if t, ok := i.keys.ParseDeadLetter(k); ok {
			if t, _, ok := bus.ParsePartition(t); ok {
				seen[t] = true // a topic whose stream is gone may still have dead letters
			}
		} else if _, ok := i.keys.ParseReply(k); ok {
			replies = append(replies, k)
		}
	}
	for t := range seen {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	slices.Sort(replies)
	return topics, replies, nil
}

// Pending is one entry delivered to a group and not yet acknowledged.
type Pending struct {
	Partition  int // the topic's partition it is in (IDs are unique per partition)
	ID         string
	Consumer   string        // who holds it
	Idle       time.Duration // since it was last delivered or heartbeated
	Deliveries int64
}

// Pending lists up to count entries pending in group of topic, oldest
// first; consumer "" means every consumer's. Its cost grows with count.
func (i *Inspector) Pending(ctx context.Context, topic, group, consumer string, count int64) ([]Pending, error) {
	for _, n := range [][2]string{{"topic", topic}, {"group", group}} {
		if err := bus.ValidateName(n[0], n[1]); err != nil {
			return nil, fmt.Errorf("inspect: %w", err)
		}
	}
	if count <= 0 {
		return nil, fmt.Errorf("inspect: pending: %w: count must be positive", bus.ErrInvalidConfig)
	}
	ps, err := i.partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	var out []Pending
	for k, pn := range ps.names() {
		rows, err := i.port.PendingOf(ctx, i.keys.Topic(pn), group, "-", "+", count, consumer)
		if err != nil {
			return nil, fmt.Errorf("inspect: pending of %s/%s: %w", pn, group, redisx.Unavailable(err))
		}
		for _, r := range rows {
			out = append(out, Pending{Partition: k, ID: r.ID, Consumer: r.Consumer, Idle: r.Idle, Deliveries: r.Deliveries})
		}
	}
	// Oldest first across partitions, at most count.
	slices.SortStableFunc(out, func(a, b Pending) int { return redisx.CompareIDs(a.ID, b.ID) })
	if int64(len(out)) > count {
		out = out[:count]
	}
	return out, nil
}

// age is how old the stream entry id is at now; 0 for none.
func age(id string, now time.Time) time.Duration {
	t, ok := redisx.IDTime(id)
	if !ok {
		return 0
	}
	return max(now.Sub(t), 0)
}
