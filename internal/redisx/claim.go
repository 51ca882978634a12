package redisx

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// AutoClaim runs XAUTOCLAIM key group consumer minIdle start COUNT count:
// it takes over up to count entries of the group pending longer than
// minIdle, starting the scan at cursor start ("0-0" for the beginning). It
// returns the cursor to pass next time ("0-0" when the scan wrapped), the
// claimed entries, and the ids Redis reports deleted (trimmed while pending:
// they are no longer in the stream, and XAUTOCLAIM removed them from the
// pending list).
func AutoClaim(ctx context.Context, c rueidis.Client, key, group, consumer string, minIdle time.Duration, start string, count int64) (next string, entries []Entry, deleted []string, err error) {
	cmd := c.B().Xautoclaim().Key(key).Group(group).Consumer(consumer).MinIdleTime(strconv.FormatInt(minIdle.Milliseconds(), 10)).Start(start).Count(count).Build()
	res := c.Do(ctx, cmd)
	parts, err := res.ToArray()
	if err != nil {
		return "", nil, nil, groupErr(err, key, group)
	}
	if len(parts) < 2 {
		return "", nil, nil, fmt.Errorf("redis: XAUTOCLAIM reply has %d elements", len(parts))
	}
	if next, err = parts[0].ToString(); err != nil {
		return "", nil, nil, fmt.Errorf("redis: XAUTOCLAIM cursor: %w", err)
	}
	if entries, err = parseEntries(&parts[1]); err != nil {
		return "", nil, nil, err
	}
	if len(parts) > 2 { // Redis 7: ids of deleted entries
		if deleted, err = parts[2].AsStrSlice(); err != nil {
			return "", nil, nil, fmt.Errorf("redis: XAUTOCLAIM deleted ids: %w", err)
		}
	}
	return next, entries, deleted, nil
}

// Pending is one entry of XPENDING's extended form.
type Pending struct {
	ID         string
	Consumer   string
	Idle       time.Duration
	Deliveries int64
}

// PendingOf runs XPENDING key group start end count [consumer] (consumer ""
// means every consumer) and returns the pending entries in that id range.
func PendingOf(ctx context.Context, c rueidis.Client, key, group, start, end string, count int64, consumer string) ([]Pending, error) {
	q := c.B().Xpending().Key(key).Group(group).Start(start).End(end).Count(count)
	var cmd rueidis.Completed
	if consumer != "" {
		cmd = q.Consumer(consumer).Build()
	} else {
		cmd = q.Build()
	}
	rows, err := c.Do(ctx, cmd).ToArray()
	if err != nil {
		return nil, groupErr(err, key, group)
	}
	out := make([]Pending, 0, len(rows))
	for i := range rows {
		f, err := rows[i].ToArray()
		if err != nil || len(f) < 4 {
			return nil, fmt.Errorf("redis: XPENDING row %d is malformed", i)
		}
		var p Pending
		p.ID, _ = f[0].ToString()
		p.Consumer, _ = f[1].ToString()
		idle, _ := f[2].AsInt64()
		p.Idle = time.Duration(idle) * time.Millisecond
		p.Deliveries, _ = f[3].AsInt64()
		out = append(out, p)
	}
	return out, nil
}

// Deliveries returns the delivery count of each of ids pending for
// consumer in group (0 for an id not pending for it: acknowledged
// meanwhile, or claimed by another): one XPENDING key group id id 1
// consumer per id, sent together. A range over the ids
// would not do: ids claimed by due time are not in id order, and other
// entries pending for the consumer inside the range take the COUNT.
func Deliveries(ctx context.Context, c rueidis.Client, key, group, consumer string, ids []string) ([]int64, error) {
	cmds := make(rueidis.Commands, len(ids))
	for i, id := range ids {
		cmds[i] = c.B().Xpending().Key(key).Group(group).Start(id).End(id).Count(1).Consumer(consumer).Build()
	}
	out := make([]int64, len(ids))
	for i, r := range c.DoMulti(ctx, cmds...) {
		rows, err := r.ToArray()
		if err != nil {
			return nil, groupErr(err, key, group)
		}
		if len(rows) == 0 {
			continue
		}
		f, err := rows[0].ToArray()
		if err != nil || len(f) < 4 {
			return nil, fmt.Errorf("redis: XPENDING row of %q is malformed", ids[i])
		}
		if got, _ := f[0].ToString(); got != ids[i] {
			return nil, fmt.Errorf("redis: XPENDING %s answered for %q", ids[i], got)
		}
		n, err := f[3].AsInt64()
		if err != nil || n < 0 {
			return nil, fmt.Errorf("redis: XPENDING delivery count of %q is malformed", ids[i])
		}
		out[i] = n
	}
	return out, nil
}

// Touch resets the idle time of ids that consumer holds (XCLAIM key group
// consumer minIdle id... JUSTID), so that other consumers do not reclaim
// entries whose handler is still running. Entries idle less than minIdle
// are left alone, which keeps a late heartbeat from taking back an entry
// another consumer has just reclaimed. On Redis JUSTID does not count a
// delivery (miniredis does count one).
func Touch(ctx context.Context, c rueidis.Client, key, group, consumer string, minIdle time.Duration, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	return c.Do(ctx, c.B().Xclaim().Key(key).Group(group).Consumer(consumer).MinIdleTime(strconv.FormatInt(minIdle.Milliseconds(), 10)).Id(ids...).Justid().Build()).Error()
}

// Uncount sets the delivery count of each pending entry in ps (held by
// consumer) one lower, keeping it with consumer (XCLAIM ... RETRYCOUNT
// n-1 JUSTID, which does not count a delivery): an entry handed back
// unhandled (consumer.handBack) is not charged the delivery that never
// reached a handler when the next worker claims it. One pipelined round
// trip.
func Uncount(ctx context.Context, c rueidis.Client, key, group, consumer string, ps []Pending) error {
	if len(ps) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, 0, len(ps))
	for _, p := range ps {
		cmds = append(cmds, c.B().Xclaim().Key(key).Group(group).Consumer(consumer).MinIdleTime("0").Id(p.ID).
			Retrycount(max(p.Deliveries-1, 0)).Justid().Build())
	}
	for _, r := range c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

// ConsumerInfo is one consumer of a group, from XINFO CONSUMERS.
type ConsumerInfo struct {
	Name    string
	Pending int64
	Idle    time.Duration // since its last read or claim
}

// Consumers lists the consumers of group on key.
func Consumers(ctx context.Context, c rueidis.Client, key, group string) ([]ConsumerInfo, error) {
	return parseConsumers(c.Do(ctx, c.B().XinfoConsumers().Key(key).Group(group).Build()), key, group)
}

func parseConsumers(res rueidis.RedisResult, key, group string) ([]ConsumerInfo, error) {
	rows, err := res.ToArray()
	if err != nil {
		return nil, groupErr(err, key, group)
	}
	out := make([]ConsumerInfo, 0, len(rows))
	for i := range rows {
		m, err := rows[i].AsMap()
		if err != nil {
			return nil, fmt.Errorf("redis: XINFO CONSUMERS reply: %w", err)
		}
		var ci ConsumerInfo
		if v, ok := m["name"]; ok {
			ci.Name, _ = v.ToString()
		}
		if v, ok := m["pending"]; ok {
			ci.Pending, _ = v.AsInt64()
		}
		if v, ok := m["idle"]; ok {
			ms, _ := v.AsInt64()
			// miniredis reports -1 for a consumer whose activity it never
			// recorded (not every command updates it): no idle time.
			ci.Idle = time.Duration(max(ms, 0)) * time.Millisecond
		}
		out = append(out, ci)
	}
	return out, nil
}

// DeleteConsumer removes consumer from group (XGROUP DELCONSUMER) and
// returns how many pending entries it had: call it only for consumers with
// none, or their entries leave the pending list unhandled.
func DeleteConsumer(ctx context.Context, c rueidis.Client, key, group, consumer string) (int64, error) {
	return c.Do(ctx, c.B().XgroupDelconsumer().Key(key).Group(group).Consumername(consumer).Build()).AsInt64()
}
