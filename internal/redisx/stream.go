package redisx

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Field is the stream entry field that holds the encoded envelope.
const Field = "m"

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

// args are a script's arguments for c: "MAXLEN" or "MINID" and the
// threshold, or two empty strings for none.
func (c Cap) args() (kind, val string) {
	switch {
	case c.minID:
		return "MINID", c.s
	case c.n > 0:
		return "MAXLEN", c.s
	}
	return "", ""
}

// MinAge returns the cap that drops entries older than age at time now
// (MINID ~ of the stream id for now-age).
func MinAge(now time.Time, age time.Duration) Cap {
	return Cap{n: 1, s: minID(now.Add(-age)), minID: true}
}

// minID is the smallest stream id of time t: the one place that formats a
// MINID threshold.
func minID(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) + "-0" }

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

// Add is one XADD: XADD Key [NOMKSTREAM] [MAXLEN|MINID ~ cap] * followed by
// Fields when set (entries that are not envelopes: dead letters), else by
// Field and Data.
type Add struct {
	Key string
	// Data is passed without copying: keep it unchanged until the call that
	// sends it returned.
	Data       []byte
	Fields     []string // field/value pairs; at least one pair when set
	Cap        Cap
	NoMkStream bool
}

// cmd builds the XADD.
func (a *Add) cmd(c rueidis.Client) rueidis.Completed {
	k := c.B().Xadd().Key(a.Key)
	switch {
	case a.NoMkStream && a.Cap.minID:
		return withValues(a, k.Nomkstream().Minid().Almost().Threshold(a.Cap.s).Id("*").FieldValue())
	case a.NoMkStream && a.Cap.n > 0:
		return withValues(a, k.Nomkstream().Maxlen().Almost().Threshold(a.Cap.s).Id("*").FieldValue())
	case a.NoMkStream:
		return withValues(a, k.Nomkstream().Id("*").FieldValue())
	case a.Cap.minID:
		return withValues(a, k.Minid().Almost().Threshold(a.Cap.s).Id("*").FieldValue())
	case a.Cap.n > 0:
		return withValues(a, k.Maxlen().Almost().Threshold(a.Cap.s).Id("*").FieldValue())
	}
	return withValues(a, k.Id("*").FieldValue())
}

// fieldValues is rueidis's XADD field/value builder (its type is internal
// to rueidis, hence the type parameter).
type fieldValues[F any] interface {
	FieldValue(field, value string) F
	Build() rueidis.Completed
}

// withValues completes an XADD with a's fields.
func withValues[F fieldValues[F]](a *Add, f F) rueidis.Completed {
	if a.Fields == nil {
		return f.FieldValue(Field, rueidis.BinaryString(a.Data)).Build()
	}
	for i := 0; i+1 < len(a.Fields); i += 2 {
		f = f.FieldValue(a.Fields[i], a.Fields[i+1])
	}
	return f.Build()
}

// Ack acknowledges IDs of Group on the stream Key (XACK).
type Ack struct {
	Key, Group string
	IDs        []string
}

// Result is the outcome of one command of a batch.
type Result struct {
	ID  string // XADD: the new entry's id
	N   int64  // XACK: how many entries it acknowledged
	Err error  // a Redis error reply, the nil reply (IsNil: NOMKSTREAM on a missing stream) or a connection error (IsConnErr)
}

// AddBatch writes adds and then the XACK of each of acks (one per stream),
// in one pipelined round trip (see DoBatch: two or more adds to one stream
// go as one MULTI/EXEC, so a blocked reader gets them in one read). It
// appends one Result per add, then one per ack, to out. Commands are built on every call,
// so calling it again after a failure is a correct retry.
func AddBatch(ctx context.Context, c rueidis.Client, adds []Add, acks []Ack, out []Result) []Result {
	out, _ = addBatch(ctx, c, nil, adds, acks, out)
	return out
}

// AddTied is AddBatch for replies and the acknowledgements of the requests
// they answer, on one server (not a cluster client: the keys are on many
// slots): the adds and the tied acks run in one MULTI/EXEC, so an add that
// Redis refuses when it is queued (OOM under noeviction) aborts the whole
// transaction and no tied ack runs without its reply; acks run after it.
// It appends one Result per add, one per tied ack, then one per ack.
func AddTied(ctx context.Context, c rueidis.Client, adds []Add, tied, acks []Ack, out []Result) []Result {
	out, _ = addTied(ctx, c, nil, adds, tied, acks, out)
	return out
}

func addTied(ctx context.Context, c rueidis.Client, head rueidis.Commands, adds []Add, tied, acks []Ack, out []Result) ([]Result, []rueidis.RedisResult) {
	if len(tied) == 0 {
		return addBatch(ctx, c, head, adds, acks, out)
	}
	n := len(adds) + len(tied)
	all := make(rueidis.Commands, 0, len(head)+n+2+len(acks))
	all = append(all, head...)
	all = append(all, c.B().Multi().Build())
	for i := range adds {
		all = append(all, adds[i].cmd(c))
	}
	for i := range tied {
		all = append(all, tied[i].cmd(c))
	}
	all = append(all, c.B().Exec().Build())
	for i := range acks {
		all = append(all, acks[i].cmd(c))
	}
	res := c.DoMulti(ctx, all...)
	headRes, res := res[:len(head)], res[len(head):]
	txn := make([]rueidis.RedisResult, n)
	execResults(txn, res[:n+2])
	for i := range adds {
		id, err := txn[i].ToString()
		out = append(out, Result{ID: id, Err: err})
	}
	for _, r := range append(txn[len(adds):], res[n+2:]...) {
		v, err := r.AsInt64()
		out = append(out, Result{N: v, Err: err})
	}
	return out, headRes
}

func (a *Ack) cmd(c rueidis.Client) rueidis.Completed {
	return c.B().Xack().Key(a.Key).Group(a.Group).Id(a.IDs...).Build()
}

// addBatch is AddBatch with head commands sent first (their results
// returned apart).
func addBatch(ctx context.Context, c rueidis.Client, head rueidis.Commands, adds []Add, acks []Ack, out []Result) ([]Result, []rueidis.RedisResult) {
	cp := cmdsPool.Get().(*rueidis.Commands)
	cmds := (*cp)[:0]
	for i := range adds {
		cmds = append(cmds, adds[i].cmd(c))
	}
	var tail []rueidis.Completed
	for i := range acks {
		tail = append(tail, acks[i].cmd(c))
	}
	headRes, res := doBatch(ctx, c, head, cmds, tail)
	for i := range adds {
		id, err := res[i].ToString()
		out = append(out, Result{ID: id, Err: err})
	}
	reuse := true
	for i := range acks {
		n, err := res[len(adds)+i].AsInt64()
		out = append(out, Result{N: n, Err: err})
	}
	for i := range res {
		// A connection that broke returns DoMulti's results before its
		// writer goroutine is done with the commands (rueidis's pipe keeps
		// reading the slice it was given): that slice must not be reused.
		if IsConnErr(res[i].Error()) {
			reuse = false
			break
		}
	}
	if reuse {
		clear(cmds)
		*cp = cmds[:0]
		cmdsPool.Put(cp)
	}
	return out, headRes
}

var cmdsPool = sync.Pool{New: func() any {
	c := make(rueidis.Commands, 0, 64)
	return &c
}}

// Trim runs an exact XTRIM key MAXLEN n (n > 0) or MINID <now-age> (age >
// 0) and returns how many entries it removed.
func Trim(ctx context.Context, c rueidis.Client, key string, n int64, age time.Duration) (int64, error) {
	var cmd rueidis.Completed
	switch {
	case age > 0:
		cmd = c.B().Xtrim().Key(key).Minid().Threshold(minID(time.Now().Add(-age))).Build()
	case n > 0:
		cmd = c.B().Xtrim().Key(key).Maxlen().Threshold(strconv.FormatInt(n, 10)).Build()
	default:
		return 0, nil
	}
	return c.Do(ctx, cmd).AsInt64()
}

// CreateGroup creates group on key at start ("0" or "$"), creating the
// stream if needed. An existing group is success.
func CreateGroup(ctx context.Context, c rueidis.Client, key, group, start string) error {
	err := c.Do(ctx, c.B().XgroupCreate().Key(key).Group(group).Id(start).Mkstream().Build()).Error()
	if err != nil && !rueidis.IsRedisBusyGroup(err) {
		return fmt.Errorf("redis: create group %s on %s: %w", group, key, err)
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

// ReadGroupAll runs one XREADGROUP GROUP group consumer COUNT count BLOCK
// block STREAMS keys... > > ... on the blocking pool: up to count entries of
// each stream, returned by stream in keys' order (nil for a stream without
// entries). The keys must share a hash slot on Redis Cluster; on a single
// server any keys go. Same cancellation, watchdog and error rules as
// ReadGroup (a group missing on any stream fails the whole read with
// ErrNoGroup).
func ReadGroupAll(ctx context.Context, c rueidis.Client, keys []string, group, consumer string, count int64, block time.Duration) ([][]Entry, error) {
	if len(keys) == 1 {
		e, err := ReadGroup(ctx, c, keys[0], group, consumer, ">", count, block)
		return [][]Entry{e}, err
	}
	ctx, cancel := guard(ctx, block)
	defer cancel()
	ids := make([]string, len(keys))
	for i := range ids {
		ids[i] = ">"
	}
	cmd := c.B().Xreadgroup().Group(group, consumer).Count(count).Block(block.Milliseconds()).Streams().Key(keys...).Id(ids...).Build()
	return parseReadAll(c.Do(ctx, cmd), keys, group)
}

// parseReadAll parses a multi-stream XREADGROUP reply: the entries by
// stream in keys' order (nil for a stream without entries).
func parseReadAll(res rueidis.RedisResult, keys []string, group string) ([][]Entry, error) {
	out := make([][]Entry, len(keys))
	if err := res.Error(); err != nil {
		if rueidis.IsRedisNil(err) {
			return out, nil
		}
		return nil, groupErr(err, strings.Join(keys, " "), group)
	}
	lists, err := readLists(res)
	if err != nil {
		return nil, err
	}
	for i, k := range keys {
		if l, ok := lists[k]; ok {
			if out[i], err = parseEntries(&l); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// readLists maps each stream of an XREAD/XREADGROUP reply (RESP3 map or
// RESP2 array) to its entry list.
func readLists(res rueidis.RedisResult) (map[string]rueidis.RedisMessage, error) {
	msg, err := res.ToMessage()
	if err != nil {
		return nil, err
	}
	if msg.IsMap() {
		return msg.ToMap()
	}
	streams, err := msg.ToArray()
	if err != nil {
		return nil, fmt.Errorf("redis: read reply: %w", err)
	}
	out := make(map[string]rueidis.RedisMessage, len(streams))
	for i := range streams {
		kv, err := streams[i].ToArray()
		if err != nil || len(kv) != 2 {
			return nil, fmt.Errorf("redis: read reply: malformed stream element")
		}
		k, _ := kv[0].ToString()
		out[k] = kv[1]
	}
	return out, nil
}

// ReadGroupNow runs XREADGROUP GROUP group consumer COUNT count STREAMS key
// > without BLOCK: it returns what is there now, through the auto-pipeline
// (no dedicated connection). No entries yields (nil, nil); a missing group
// an error wrapping ErrNoGroup.
func ReadGroupNow(ctx context.Context, c rueidis.Client, key, group, consumer string, count int64) ([]Entry, error) {
	res := c.Do(ctx, c.B().Xreadgroup().Group(group, consumer).Count(count).Streams().Key(key).Id(">").Build())
	if err := res.Error(); err != nil {
		if rueidis.IsRedisNil(err) {
			return nil, nil
		}
		return nil, groupErr(err, key, group)
	}
	return parseRead(res, key)
}

// ReadGroupAllNow is ReadGroupAll without BLOCK, through the auto-pipeline
// (as ReadGroupNow): up to count entries of each of keys, by stream in
// keys' order (nil for a stream without entries).
func ReadGroupAllNow(ctx context.Context, c rueidis.Client, keys []string, group, consumer string, count int64) ([][]Entry, error) {
	if len(keys) == 1 {
		e, err := ReadGroupNow(ctx, c, keys[0], group, consumer, count)
		return [][]Entry{e}, err
	}
	ids := make([]string, len(keys))
	for i := range ids {
		ids[i] = ">"
	}
	return parseReadAll(c.Do(ctx, c.B().Xreadgroup().Group(group, consumer).Count(count).Streams().Key(keys...).Id(ids...).Build()), keys, group)
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
			return nil, fmt.Errorf("redis: read reply: %w", err)
		}
		for i := range streams {
			kv, err := streams[i].ToArray()
			if err != nil || len(kv) != 2 {
				return nil, fmt.Errorf("redis: read reply: malformed stream element")
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
		return nil, fmt.Errorf("redis: read reply: %w", err)
	}
	out := make([]Entry, 0, len(items))
	for i := range items {
		if items[i].IsNil() { // Redis 6.2 XAUTOCLAIM: a deleted entry
			continue
		}
		out = append(out, Entry{})
		pair, err := items[i].ToArray()
		if err != nil || len(pair) != 2 {
			return nil, fmt.Errorf("redis: read reply: malformed entry")
		}
		e := &out[len(out)-1]
		if e.ID, err = pair[0].ToString(); err != nil {
			return nil, fmt.Errorf("redis: read reply: entry id: %w", err)
		}
		if pair[1].IsNil() {
			e.Deleted = true
			continue
		}
		fv, err := pair[1].ToArray()
		if err != nil {
			return nil, fmt.Errorf("redis: read reply: entry %s fields: %w", e.ID, err)
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

// WaitNew waits, on the blocking pool, until an entry is added to one of
// keys after the call began (XREAD COUNT 1 BLOCK block STREAMS keys... $),
// or block passes; it reports whether one came. The keys must share a
// hash slot on Redis Cluster. A reader whose permits must be used at once
// (a rate limit) waits here holding none, then reads without blocking;
// an entry added just before the call is noticed only after block.
func WaitNew(ctx context.Context, c rueidis.Client, keys []string, block time.Duration) (bool, error) {
	ctx, cancel := guard(ctx, block)
	defer cancel()
	ids := make([]string, len(keys))
	for i := range ids {
		ids[i] = "$"
	}
	res := c.Do(ctx, c.B().Xread().Count(1).Block(max(block.Milliseconds(), 1)).Streams().Key(keys...).Id(ids...).Build())
	if err := res.Error(); err != nil {
		if rueidis.IsRedisNil(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// Range reads up to count entries of key between start and end (XRANGE
// ids; "-" and "+" for all), oldest first, or newest first with rev (then
// start is the high end, as XREVRANGE takes it). count must be positive: an
// operator's read is bounded. A missing key has no entries.
func Range(ctx context.Context, c rueidis.Client, key, start, end string, count int64, rev bool) ([]Entry, error) {
	if count <= 0 {
		return nil, fmt.Errorf("redis: range of %s: count %d, want > 0", key, count)
	}
	var cmd rueidis.Completed
	if rev {
		cmd = c.B().Xrevrange().Key(key).End(start).Start(end).Count(count).Build()
	} else {
		cmd = c.B().Xrange().Key(key).Start(start).End(end).Count(count).Build()
	}
	list, err := c.Do(ctx, cmd).ToMessage()
	if err != nil {
		return nil, err
	}
	return parseEntries(&list)
}
