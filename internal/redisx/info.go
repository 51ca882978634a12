package redisx

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// StreamInfo summarises one topic stream for operators (bus-worker stats,
// /metrics). Reading it costs O(1) in the stream's length.
type StreamInfo struct {
	Key         string
	Length      int64
	FirstID     string // oldest entry's id; "" when the stream is empty or missing
	LastID      string // newest entry's id; "" when the stream is empty or missing
	Groups      []GroupInfo
	DeadLetters int64 // length of the dead-letter stream given to Info
	Delayed     int64 // members of the sorted sets given to Info (delayed events and retries)
}

// Info reads key's length, first and last entry ids and consumer groups,
// and the length of its dead-letter stream dlq (same hash slot), in one
// round trip. A missing stream has zero length and no groups. The keys must
// be streams or missing. sets (sorted sets in the same slot: delayed events
// and retries) are counted into Delayed.
func Info(ctx context.Context, c rueidis.Client, key, dlq string, sets ...string) (StreamInfo, error) {
	cmds := rueidis.Commands{
		c.B().Xlen().Key(key).Build(),
		c.B().Xrange().Key(key).Start("-").End("+").Count(1).Build(),
		c.B().Xrevrange().Key(key).End("+").Start("-").Count(1).Build(),
		c.B().XinfoGroups().Key(key).Build(),
		c.B().Xlen().Key(dlq).Build(),
	}
	for _, k := range sets {
		cmds = append(cmds, c.B().Zcard().Key(k).Build())
	}
	res := c.DoMulti(ctx, cmds...)
	si := StreamInfo{Key: key}
	var err error
	for i, k := range sets {
		n, err := res[5+i].AsInt64()
		if err != nil {
			return si, fmt.Errorf("redis: ZCARD %s: %w", k, err)
		}
		si.Delayed += n
	}
	if si.DeadLetters, err = res[4].AsInt64(); err != nil {
		return si, fmt.Errorf("redis: XLEN %s: %w", dlq, err)
	}
	if si.Length, err = res[0].AsInt64(); err != nil {
		return si, fmt.Errorf("redis: XLEN %s: %w", key, err)
	}
	if si.FirstID, err = firstID(res[1]); err != nil {
		return si, fmt.Errorf("redis: XRANGE %s: %w", key, err)
	}
	if si.LastID, err = firstID(res[2]); err != nil {
		return si, fmt.Errorf("redis: XREVRANGE %s: %w", key, err)
	}
	if si.Groups, err = parseGroups(res[3]); err != nil {
		return si, fmt.Errorf("redis: XINFO GROUPS %s: %w", key, err)
	}
	return si, nil
}

// firstID returns the id of the first entry of an XRANGE reply.
func firstID(r rueidis.RedisResult) (string, error) {
	items, err := r.ToArray()
	if err != nil || len(items) == 0 {
		return "", err
	}
	pair, err := items[0].ToArray()
	if err != nil || len(pair) == 0 {
		return "", fmt.Errorf("malformed entry")
	}
	return pair[0].ToString()
}

// GroupInfo is one consumer group of a stream, from XINFO GROUPS.
type GroupInfo struct {
	Name            string
	Consumers       int64
	Pending         int64
	LastDeliveredID string
	// Lag is the number of entries not yet delivered to the group; -1 when
	// Redis cannot tell (or is older than 7.0).
	Lag int64
	// Read is the group's entries-read counter (entries delivered to it
	// since the stream began, Redis 7.0+); -1 when Redis does not say.
	Read int64
}

// Groups returns the consumer groups of the stream key; a missing stream
// has none.
func Groups(ctx context.Context, c rueidis.Client, key string) ([]GroupInfo, error) {
	return parseGroups(c.Do(ctx, c.B().XinfoGroups().Key(key).Build()))
}

func parseGroups(res rueidis.RedisResult) ([]GroupInfo, error) {
	groups, err := res.ToArray()
	if err != nil {
		if isNoSuchKey(err) {
			return nil, nil
		}
		return nil, err
	}
	out := make([]GroupInfo, 0, len(groups))
	for i := range groups {
		m, err := groups[i].AsMap()
		if err != nil {
			return nil, fmt.Errorf("redis: XINFO GROUPS reply: %w", err)
		}
		g := GroupInfo{Lag: -1, Read: -1}
		for k, v := range m {
			switch k {
			case "name":
				g.Name, _ = v.ToString()
			case "consumers":
				g.Consumers, _ = v.AsInt64()
			case "pending":
				g.Pending, _ = v.AsInt64()
			case "last-delivered-id":
				g.LastDeliveredID, _ = v.ToString()
			case "lag":
				if n, err := v.AsInt64(); err == nil {
					g.Lag = n
				}
			case "entries-read":
				if n, err := v.AsInt64(); err == nil && n >= 0 {
					g.Read = n
				}
			}
		}
		out = append(out, g)
	}
	return out, nil
}

// GroupExists reports whether group exists on the stream key. A missing
// stream is reported as false, not as an error.
func GroupExists(ctx context.Context, c rueidis.Client, key, group string) (bool, error) {
	groups, err := Groups(ctx, c, key)
	if err != nil {
		return false, err
	}
	for _, g := range groups {
		if g.Name == group {
			return true, nil
		}
	}
	return false, nil
}

// PendingTotals summarises a group's pending entries (XPENDING summary form).
type PendingTotals struct {
	Count    int64
	OldestID string           // smallest pending id; "" when none
	ByOwner  map[string]int64 // consumer name -> pending entries
}

// GroupDetail reads the summary of group's pending entries and its consumers
// in one round trip. Its cost grows with the number of consumers, not of
// entries.
func GroupDetail(ctx context.Context, c rueidis.Client, key, group string) (PendingTotals, []ConsumerInfo, error) {
	res := c.DoMulti(ctx,
		c.B().Xpending().Key(key).Group(group).Build(),
		c.B().XinfoConsumers().Key(key).Group(group).Build(),
	)
	p, err := parsePendingSummary(res[0], key, group)
	if err != nil {
		return p, nil, err
	}
	cs, err := parseConsumers(res[1], key, group)
	return p, cs, err
}

func parsePendingSummary(res rueidis.RedisResult, key, group string) (PendingTotals, error) {
	arr, err := res.ToArray()
	if err != nil {
		return PendingTotals{}, groupErr(err, key, group)
	}
	if len(arr) < 4 {
		return PendingTotals{}, fmt.Errorf("redis: XPENDING %s %s: reply of %d elements", key, group, len(arr))
	}
	p := PendingTotals{ByOwner: map[string]int64{}}
	p.Count, _ = arr[0].AsInt64()
	if !arr[1].IsNil() {
		p.OldestID, _ = arr[1].ToString()
	}
	owners, _ := arr[3].ToArray()
	for i := range owners {
		kv, err := owners[i].ToArray()
		if err != nil || len(kv) != 2 {
			continue
		}
		name, _ := kv[0].ToString()
		n, err := kv[1].AsInt64()
		if err != nil { // RESP2 servers send the count as a string
			s, _ := kv[1].ToString()
			_, _ = fmt.Sscan(strings.TrimSpace(s), &n)
		}
		p.ByOwner[name] = n
	}
	return p, nil
}

// ScanStreams returns the keys of every stream matching pattern (SCAN MATCH
// pattern TYPE stream, 1000 keys per step). It walks the whole keyspace:
// meant for operator tools, not for hot paths or scrapes.
//
// On Redis Cluster it scans every master.
func ScanStreams(ctx context.Context, c rueidis.Client, pattern string) ([]string, error) {
	var out []string
	err := EachMaster(ctx, c, func(_ string, n rueidis.Client) error {
		cursor := uint64(0)
		for {
			e, err := n.Do(ctx, n.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Type("stream").Build()).AsScanEntry()
			if err != nil {
				return fmt.Errorf("redis: SCAN %s: %w", pattern, err)
			}
			out = append(out, e.Elements...)
			if e.Cursor == 0 {
				return nil
			}
			cursor = e.Cursor
		}
	})
	return out, err
}

// StreamSize is the length and time to live of one stream.
type StreamSize struct {
	Key    string
	Length int64
	TTL    time.Duration // -1: no expiry; -2: the key is gone
}

// Sizes reads the length and TTL of each stream key in one round trip.
func Sizes(ctx context.Context, c rueidis.Client, keys []string) ([]StreamSize, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	cmds := make(rueidis.Commands, 0, 2*len(keys))
	for _, k := range keys {
		cmds = append(cmds, c.B().Xlen().Key(k).Build(), c.B().Pttl().Key(k).Build())
	}
	res := c.DoMulti(ctx, cmds...)
	out := make([]StreamSize, len(keys))
	for i, k := range keys {
		n, err := res[2*i].AsInt64()
		if err != nil {
			return nil, fmt.Errorf("redis: XLEN %s: %w", k, err)
		}
		ttl, err := res[2*i+1].AsInt64()
		if err != nil {
			return nil, fmt.Errorf("redis: PTTL %s: %w", k, err)
		}
		if ttl >= 0 {
			ttl *= int64(time.Millisecond)
		}
		out[i] = StreamSize{Key: k, Length: n, TTL: time.Duration(ttl)}
	}
	return out, nil
}

// Responders reports whether a worker serves a topic: one in the presence
// set (see Beat) seen within window of now. When the set does not exist
// (workers that do not announce themselves, or none ever did), a consumer
// group on the stream with at least one consumer counts instead. One round
// trip, two when the set is missing.
//
// A member announced further ahead than MaxClockSkew is not counted: a
// score from the future (a member someone planted with ZADD … 9e15) would
// count as live for ever; Beat removes such members.
func Responders(ctx context.Context, c rueidis.Client, stream, presence string, now time.Time, window time.Duration) (bool, error) {
	res := c.DoMulti(ctx,
		c.B().Zcount().Key(presence).Min("("+strconv.FormatInt(now.Add(-window).UnixMilli(), 10)).
			Max(strconv.FormatInt(now.Add(MaxClockSkew).UnixMilli(), 10)).Build(),
		c.B().Zcard().Key(presence).Build(),
	)
	live, err := res[0].AsInt64()
	if err != nil {
		return false, err
	}
	members, err := res[1].AsInt64()
	switch {
	case err != nil:
		return false, err
	case live > 0:
		return true, nil
	case members > 0: // announced, all gone quiet
		return false, nil
	}
	groups, err := Groups(ctx, c, stream)
	if err != nil {
		return false, err
	}
	for _, g := range groups {
		if g.Consumers > 0 {
			return true, nil
		}
	}
	return false, nil
}

// Beats reads a topic's presence set: when each member last announced
// itself (see Beat), by member ("<group> <consumer>").
func Beats(ctx context.Context, c rueidis.Client, presence string) (map[string]time.Time, error) {
	vals, err := c.Do(ctx, c.B().Zrange().Key(presence).Min("0").Max("-1").Withscores().Build()).AsZScores()
	if err != nil {
		return nil, err
	}
	out := make(map[string]time.Time, len(vals))
	for _, v := range vals {
		out[v.Member] = time.UnixMilli(int64(v.Score))
	}
	return out, nil
}

// Beat records in the presence set that member serves the topic, at now,
// and drops members silent for longer than prune (dead workers), in one
// round trip.
func Beat(ctx context.Context, c rueidis.Client, presence, member string, now time.Time, prune time.Duration) error {
	return doAll(ctx, c, beatCmds(c, presence, member, now, prune)...)
}

// Join makes consumer a member of group on the stream (XGROUP
// CREATECONSUMER: a blocking read that returns nothing does not, so a new
// idle worker would be invisible) and beats (see Beat), in one round trip.
func Join(ctx context.Context, c rueidis.Client, stream, group, consumer, presence, member string, now time.Time, prune time.Duration) error {
	cmds := append([]rueidis.Completed{c.B().XgroupCreateconsumer().Key(stream).Group(group).Consumer(consumer).Build()},
		beatCmds(c, presence, member, now, prune)...)
	if err := doAll(ctx, c, cmds...); err != nil {
		return groupErr(err, stream, group)
	}
	return nil
}

func beatCmds(c rueidis.Client, presence, member string, now time.Time, prune time.Duration) []rueidis.Completed {
	return []rueidis.Completed{
		c.B().Zadd().Key(presence).ScoreMember().ScoreMember(float64(now.UnixMilli()), member).Build(),
		c.B().Zremrangebyscore().Key(presence).Min("-inf").Max("(" + strconv.FormatInt(now.Add(-prune).UnixMilli(), 10)).Build(),
		// Members from the future: a clock far off, or planted.
		c.B().Zremrangebyscore().Key(presence).Min("(" + strconv.FormatInt(now.Add(MaxClockSkew).UnixMilli(), 10)).Max("+inf").Build(),
	}
}

// MaxClockSkew is how far ahead of a reader's clock a presence beat may be
// and still count (hosts' clocks differ a little; a beat further ahead is
// planted or broken, and pruned).
const MaxClockSkew = time.Minute

// doAll runs cmds in one round trip and returns the first error.
func doAll(ctx context.Context, c rueidis.Client, cmds ...rueidis.Completed) error {
	for _, r := range c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

// Leave removes member from the presence set and, when it holds no pending
// entries, consumer from group on the stream (XGROUP DELCONSUMER), so that a
// worker stopped on purpose leaves no ghost behind. It reports whether the
// consumer was removed.
func Leave(ctx context.Context, c rueidis.Client, stream, presence, group, consumer, member string) (bool, error) {
	if err := c.Do(ctx, c.B().Zrem().Key(presence).Member(member).Build()).Error(); err != nil {
		return false, err
	}
	mine, err := PendingOf(ctx, c, stream, group, "-", "+", 1, consumer)
	if err != nil || len(mine) > 0 {
		return false, err
	}
	// Between the check and the delete nothing can become pending for this
	// consumer: it no longer reads.
	if _, err := DeleteConsumer(ctx, c, stream, group, consumer); err != nil {
		return false, err
	}
	return true, nil
}
