package bus

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Field is the stream entry field that holds the encoded envelope.
const Field = "m"

// blockMargin is added to a blocking read's BLOCK time to form its ctx
// deadline: rueidis sets no timeout on blocked connections, so without it a
// hung server would hold the read forever.
const blockMargin = 2 * time.Second

// ReadDeadline guards consecutive blocking reads of one loop against a hung
// server. rueidis sets no timeout on a blocked connection, so each read
// needs its ctx to end by itself: ReadDeadline hands out one cancelable
// context (no deadline) and a watchdog timer, reset before every read, that
// cancels it BLOCK plus a margin later.
//
// Why a watchdog and not a ctx deadline: rueidis honours cancellation of a
// blocking read only on its queue path, which it takes for a ctx without a
// deadline; there an aborted read closes its connection at once, on the
// caller's goroutine. With a deadline it reads synchronously and ignores
// cancellation until the deadline; with UnblockOnCancel it closes the
// connection on a background goroutine, which raced a client Close into a
// hang here (pipe.Close waiting forever; seen with miniredis, which has no
// CLIENT UNBLOCK).
//
// It is owned by one goroutine; call Stop when the loop ends.
type ReadDeadline struct {
	parent context.Context
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer
}

// For returns the context for the next read of up to block, derived from
// parent, and arms the watchdog.
func (r *ReadDeadline) For(parent context.Context, block time.Duration) context.Context {
	if r.ctx != nil && r.parent == parent && r.ctx.Err() == nil && r.timer.Stop() {
		r.timer.Reset(block + blockMargin)
		return r.ctx
	}
	r.Stop()
	r.parent = parent
	r.ctx, r.cancel = context.WithCancel(context.WithValue(parent, guardedKey{}, true))
	r.timer = time.AfterFunc(block+blockMargin, r.cancel)
	return r.ctx
}

// Stop releases the watchdog and the context.
func (r *ReadDeadline) Stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
	if r.cancel != nil {
		r.cancel()
	}
	r.ctx, r.cancel, r.timer = nil, nil, nil
}

type guardedKey struct{}

// guard gives a blocking read a watchdog unless its ctx has a deadline (which
// bounds it, though rueidis then ignores cancellation before it) or comes
// from ReadDeadline.
func guard(ctx context.Context, block time.Duration) (context.Context, func()) {
	if _, ok := ctx.Deadline(); ok || ctx.Value(guardedKey{}) != nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(block+blockMargin, cancel)
	return ctx, func() { t.Stop(); cancel() }
}

// Entry is one stream entry as read from Redis.
type Entry struct {
	ID string
	// Data is the value of Field; empty when HasData is false.
	Data    string
	HasData bool
	// Deleted is set for a pending entry whose content Redis no longer has
	// (trimmed or XDELed while pending).
	Deleted bool
	// fields aliases the reply's flat field/value list, for dead-lettering
	// entries without Field.
	fields []rueidis.RedisMessage
}

// Fields returns every field/value pair of the entry, in order.
func (e *Entry) Fields() []string {
	out := make([]string, 0, len(e.fields))
	for i := range e.fields {
		s, _ := e.fields[i].ToString()
		out = append(out, s)
	}
	return out
}

// Cap is how XADD trims a stream: by length (MAXLEN ~ n) or by age
// (MINID ~ id), with its argument formatted once rather than per write.
// The zero Cap does not trim.
type Cap struct {
	n     int64
	s     string
	minID bool
}

// MaxLen returns the cap of about n entries; n <= 0 means no trimming.
func MaxLen(n int64) Cap {
	if n <= 0 {
		return Cap{}
	}
	return Cap{n: n, s: strconv.FormatInt(n, 10)}
}

// MinAge returns the cap that drops entries older than age at time now
// (MINID ~ of the stream id for now-age).
func MinAge(now time.Time, age time.Duration) Cap {
	return Cap{n: 1, s: strconv.FormatInt(now.Add(-age).UnixMilli(), 10) + "-0", minID: true}
}

// AddCmd builds XADD key [NOMKSTREAM] [MAXLEN|MINID ~ cap] * m data. data
// is passed without copying: keep it unchanged until the command completed.
func AddCmd(c rueidis.Client, key string, cp Cap, noMkStream bool, data []byte) rueidis.Completed {
	v := rueidis.BinaryString(data)
	k := c.B().Xadd().Key(key)
	switch {
	case noMkStream && cp.minID:
		return k.Nomkstream().Minid().Almost().Threshold(cp.s).Id("*").FieldValue().FieldValue(Field, v).Build()
	case noMkStream && cp.n > 0:
		return k.Nomkstream().Maxlen().Almost().Threshold(cp.s).Id("*").FieldValue().FieldValue(Field, v).Build()
	case noMkStream:
		return k.Nomkstream().Id("*").FieldValue().FieldValue(Field, v).Build()
	case cp.minID:
		return k.Minid().Almost().Threshold(cp.s).Id("*").FieldValue().FieldValue(Field, v).Build()
	case cp.n > 0:
		return k.Maxlen().Almost().Threshold(cp.s).Id("*").FieldValue().FieldValue(Field, v).Build()
	}
	return k.Id("*").FieldValue().FieldValue(Field, v).Build()
}

// Trim runs an exact XTRIM key MAXLEN n (n > 0) or MINID <now-age> (age >
// 0) and returns how many entries it removed.
func Trim(ctx context.Context, c rueidis.Client, key string, n int64, age time.Duration) (int64, error) {
	var cmd rueidis.Completed
	switch {
	case age > 0:
		cmd = c.B().Xtrim().Key(key).Minid().Threshold(strconv.FormatInt(time.Now().Add(-age).UnixMilli(), 10) + "-0").Build()
	case n > 0:
		cmd = c.B().Xtrim().Key(key).Maxlen().Threshold(strconv.FormatInt(n, 10)).Build()
	default:
		return 0, nil
	}
	return c.Do(ctx, cmd).AsInt64()
}

// AddFieldsCmd builds XADD key [MAXLEN ~ cap] * f1 v1 f2 v2 ... for entries
// that are not envelopes (dead letters). fv must hold at least one pair.
func AddFieldsCmd(c rueidis.Client, key string, cp Cap, fv ...string) rueidis.Completed {
	k := c.B().Xadd().Key(key)
	if cp.minID {
		f := k.Minid().Almost().Threshold(cp.s).Id("*").FieldValue()
		for i := 0; i+1 < len(fv); i += 2 {
			f = f.FieldValue(fv[i], fv[i+1])
		}
		return f.Build()
	}
	if cp.n > 0 {
		f := k.Maxlen().Almost().Threshold(cp.s).Id("*").FieldValue()
		for i := 0; i+1 < len(fv); i += 2 {
			f = f.FieldValue(fv[i], fv[i+1])
		}
		return f.Build()
	}
	f := k.Id("*").FieldValue()
	for i := 0; i+1 < len(fv); i += 2 {
		f = f.FieldValue(fv[i], fv[i+1])
	}
	return f.Build()
}

// AckCmd builds XACK key group id...
func AckCmd(c rueidis.Client, key, group string, ids ...string) rueidis.Completed {
	return c.B().Xack().Key(key).Group(group).Id(ids...).Build()
}

// CreateGroup creates group on key at start ("0" or "$"), creating the
// stream if needed. An existing group is success.
func CreateGroup(ctx context.Context, c rueidis.Client, key, group, start string) error {
	err := c.Do(ctx, c.B().XgroupCreate().Key(key).Group(group).Id(start).Mkstream().Build()).Error()
	if err != nil && !IsBusyGroup(err) {
		return fmt.Errorf("bus: create group %s on %s: %w", group, key, err)
	}
	return nil
}

// ReadGroup runs XREADGROUP GROUP group consumer COUNT count BLOCK block
// STREAMS key id on the blocking pool. Cancelling ctx aborts it at once
// (its connection is closed). A ctx from ReadDeadline.For, or any ctx
// without a deadline (which gets a watchdog here), also ends by itself if
// the server hangs. No entries within block yields (nil, nil). A missing
// group yields an error wrapping ErrNoGroup.
func ReadGroup(ctx context.Context, c rueidis.Client, key, group, consumer, id string, count int64, block time.Duration) ([]Entry, error) {
	ctx, cancel := guard(ctx, block)
	defer cancel()
	cmd := c.B().Xreadgroup().Group(group, consumer).Count(count).Block(block.Milliseconds()).Streams().Key(key).Id(id).Build()
	res := c.Do(ctx, cmd)
	if err := res.Error(); err != nil {
		if rueidis.IsRedisNil(err) {
			return nil, nil
		}
		return nil, groupErr(err, key, group)
	}
	return parseRead(res, key)
}

// Read runs XREAD COUNT count BLOCK block STREAMS key after on the blocking
// pool, with the same cancellation and watchdog rules as ReadGroup. No
// entries yields (nil, nil).
func Read(ctx context.Context, c rueidis.Client, key, after string, count int64, block time.Duration) ([]Entry, error) {
	ctx, cancel := guard(ctx, block)
	defer cancel()
	res := c.Do(ctx, c.B().Xread().Count(count).Block(block.Milliseconds()).Streams().Key(key).Id(after).Build())
	if err := res.Error(); err != nil {
		if rueidis.IsRedisNil(err) {
			return nil, nil
		}
		return nil, err
	}
	return parseRead(res, key)
}

// parseRead extracts key's entries from an XREAD/XREADGROUP reply in either
// RESP3 map or RESP2 array form, without building a map per entry.
func parseRead(res rueidis.RedisResult, key string) ([]Entry, error) {
	msg, err := res.ToMessage()
	if err != nil {
		return nil, err
	}
	var list rueidis.RedisMessage
	found := false
	if msg.IsMap() {
		m, err := msg.ToMap()
		if err != nil {
			return nil, err
		}
		list, found = m[key]
	} else {
		streams, err := msg.ToArray()
		if err != nil {
			return nil, fmt.Errorf("bus: read reply: %w", err)
		}
		for i := range streams {
			kv, err := streams[i].ToArray()
			if err != nil || len(kv) != 2 {
				return nil, fmt.Errorf("bus: read reply: malformed stream element")
			}
			if k, _ := kv[0].ToString(); k == key {
				list, found = kv[1], true
				break
			}
		}
	}
	if !found {
		return nil, nil
	}
	return parseEntries(&list)
}

func parseEntries(list *rueidis.RedisMessage) ([]Entry, error) {
	items, err := list.ToArray()
	if err != nil {
		return nil, fmt.Errorf("bus: read reply: %w", err)
	}
	out := make([]Entry, 0, len(items))
	for i := range items {
		if items[i].IsNil() { // Redis 6.2 XAUTOCLAIM: a deleted entry
			continue
		}
		out = append(out, Entry{})
		pair, err := items[i].ToArray()
		if err != nil || len(pair) != 2 {
			return nil, fmt.Errorf("bus: read reply: malformed entry")
		}
		e := &out[len(out)-1]
		if e.ID, err = pair[0].ToString(); err != nil {
			return nil, fmt.Errorf("bus: read reply: entry id: %w", err)
		}
		if pair[1].IsNil() {
			e.Deleted = true
			continue
		}
		fv, err := pair[1].ToArray()
		if err != nil {
			return nil, fmt.Errorf("bus: read reply: entry %s fields: %w", e.ID, err)
		}
		e.fields = fv
		for j := 0; j+1 < len(fv); j += 2 {
			if f, _ := fv[j].ToString(); f == Field {
				e.Data, _ = fv[j+1].ToString()
				e.HasData = true
				break
			}
		}
	}
	return out, nil
}

// IDTime returns the time encoded in a stream entry id (its millisecond part).
func IDTime(id string) (time.Time, bool) {
	for i := 0; i < len(id); i++ {
		if id[i] == '-' {
			ms, err := strconv.ParseInt(id[:i], 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			return time.UnixMilli(ms), true
		}
	}
	return time.Time{}, false
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
			return nil, fmt.Errorf("bus: XINFO GROUPS reply: %w", err)
		}
		g := GroupInfo{Lag: -1}
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

// isNoSuchKey matches XINFO's missing-stream error: "ERR no such key" on
// Redis, "no such key" on miniredis.
func isNoSuchKey(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(strings.TrimPrefix(re.Error(), "ERR "), "no such key")
}
