package redisx

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/codec"
)

// A topic's control stream (bus.Keys.Control) carries what every worker of
// the topic must hear at once: a caller cancelled a request, a delayed
// entry became due earlier than workers planned. Every worker reads it
// with XREAD (no group); entries are small field/value lists, validated
// here before anyone acts on them.

// Control operations.
const (
	OpCancel = "cancel" // a caller gave up on a request: cancel its handler, skip it if not picked up
	OpWake   = "wake"   // a delayed entry is due at Until: promote it then
	OpPause  = "pause"  // the topic is paused until Until (0: resumed): start no handler before
)

// Control fields.
const (
	ctlOp      = "op"
	ctlToken   = "tok"   // cancel: the request's cancel token (codec.Envelope.Token, its 16 bytes)
	ctlID      = "id"    // cancel: the request's correlation id (for people reading the stream)
	ctlReplyTo = "to"    // cancel: the request's reply stream (likewise)
	ctlUntil   = "until" // cancel: the request's deadline; wake: when the entry is due (unix ms)
)

// ControlMaxLen caps a control stream (MAXLEN ~): a worker starting reads
// back at most this many recent notices.
const ControlMaxLen = 10000

// maxControlField bounds a control field's value (a correlation id or a
// reply-stream key is far shorter).
const maxControlField = 512

// maxControlFields bounds a notice's field/value list.
const maxControlFields = 16

// Control is one notice on a control stream.
type Control struct {
	ID    string      // stream entry id (reading only)
	Op    string      // OpCancel or OpWake
	Token codec.Token // OpCancel: the request's cancel token; a notice without one is malformed
	Req   string      // OpCancel: correlation id (informative)
	To    string      // OpCancel: reply stream key (informative)
	Until int64       // unix milliseconds (see ctlUntil)
}

// AddControl appends notices to the control stream key, in one round trip
// (one MULTI/EXEC when several).
func AddControl(ctx context.Context, c rueidis.Client, key string, notices []Control) error {
	adds := make([]Add, len(notices))
	for i, n := range notices {
		f := []string{ctlOp, n.Op, ctlUntil, strconv.FormatInt(n.Until, 10)}
		if n.Op == OpCancel {
			f = append(f, ctlToken, string(n.Token[:]), ctlID, n.Req, ctlReplyTo, n.To)
		}
		adds[i] = Add{Key: key, Fields: f, Cap: MaxLen(ControlMaxLen)}
	}
	var errs []error
	for _, r := range AddBatch(ctx, c, adds, nil, make([]Result, 0, len(adds))) {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return errors.Join(errs...)
}

// ControlStart is the id to read a control stream from so that notices of
// the last window are seen (a worker that starts learns of requests
// cancelled before it ran).
func ControlStart(now time.Time, window time.Duration) string { return minID(now.Add(-window)) }

// ReadControl reads notices after id after (XREAD COUNT count BLOCK block,
// on the blocking pool; the same cancellation rules as Read; block <= 0:
// without BLOCK, what is there now). Notices that
// are not well formed are skipped; bad counts how many. The last id read
// (well formed or not) is returned for the next call ("" when nothing came).
func ReadControl(ctx context.Context, c rueidis.Client, key, after string, count int64, block time.Duration) (notices []Control, last string, bad int, err error) {
	var res rueidis.RedisResult
	if block <= 0 {
		res = c.Do(ctx, c.B().Xread().Count(count).Streams().Key(key).Id(after).Build())
	} else {
		ctx, cancel := guard(ctx, block)
		defer cancel()
		res = c.Do(ctx, c.B().Xread().Count(count).Block(block.Milliseconds()).Streams().Key(key).Id(after).Build())
	}
	if err := res.Error(); err != nil {
		if rueidis.IsRedisNil(err) {
			return nil, "", 0, nil
		}
		return nil, "", 0, err
	}
	lists, err := readLists(res)
	if err != nil {
		return nil, "", 0, err
	}
	list, ok := lists[key]
	if !ok {
		return nil, "", 0, nil
	}
	entries, err := list.ToArray()
	if err != nil {
		return nil, "", 0, err
	}
	for i := range entries {
		kv, err := entries[i].ToArray()
		if err != nil || len(kv) != 2 {
			bad++
			continue
		}
		id, err := kv[0].ToString()
		if err != nil {
			bad++
			continue
		}
		last = id
		fv, _ := kv[1].ToArray() // nil for an entry deleted meanwhile
		if len(fv) > maxControlFields {
			bad++
			continue
		}
		strs := make([]string, len(fv))
		for j := range fv {
			if strs[j], err = fv[j].ToString(); err != nil {
				break
			}
		}
		n, ok := parseControl(id, strs)
		if err != nil {
			ok = false
		}
		if !ok {
			bad++
			continue
		}
		notices = append(notices, n)
	}
	return notices, last, bad, nil
}

// parseControl validates one notice's fields.
func parseControl(id string, fv []string) (Control, bool) {
	n := Control{ID: id}
	if len(fv)%2 != 0 || len(fv) == 0 || len(fv) > maxControlFields {
		return n, false
	}
	var until string
	for i := 0; i+1 < len(fv); i += 2 {
		k, v := fv[i], fv[i+1]
		if len(v) > maxControlField {
			return n, false
		}
		switch k {
		case ctlOp:
			n.Op = v
		case ctlToken:
			if len(v) != codec.TokenSize {
				return n, false
			}
			copy(n.Token[:], v)
		case ctlID:
			n.Req = v
		case ctlReplyTo:
			n.To = v
		case ctlUntil:
			until = v
		}
	}
	u, err := strconv.ParseInt(until, 10, 64)
	if err != nil || u < 0 {
		return n, false
	}
	n.Until = u
	switch n.Op {
	case OpCancel:
		return n, !n.Token.IsZero()
	case OpWake, OpPause:
		return n, true
	}
	return n, false
}

// Delayed events: a sorted set per partition (bus.Keys.Delayed), member
// "<id>:<encoded envelope>", score the unix milliseconds (Redis's clock)
// when it is due. The id makes members unique (identical payloads delayed
// together are two entries). Workers move due entries to the partition's
// stream with promoteScript.

// redisNow is the Lua prelude that reads Redis's clock in milliseconds.
const redisNow = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// delayScript adds one member due at ARGV[2] (unix ms) or, when that is 0,
// ARGV[3] ms from now by Redis's clock; refused when the set already holds
// ARGV[4] members (0: no bound). Returns the due time.
var delayScript = newScript("delay", redisNow+`local due = tonumber(ARGV[2])
if due <= 0 then due = now + tonumber(ARGV[3]) end
local max = tonumber(ARGV[4])
if max > 0 and redis.call('ZCARD', KEYS[1]) >= max then
  return redis.error_reply('MYCFULL delayed set holds ' .. max .. ' entries')
end
redis.call('ZADD', KEYS[1], due, ARGV[1])
return due`)

// ErrDelayedFull is returned by AddDelayed when the delayed set holds as
// many entries as it may.
var ErrDelayedFull = errors.New("mycelium: delayed set full")

// AddDelayed adds member (see above) to the delayed set key, due at at (if
// not zero) or after delay by Redis's clock, unless the set holds max
// members already (max <= 0: no bound; ErrDelayedFull). It returns when
// the entry is due (unix ms).
func AddDelayed(ctx context.Context, c rueidis.Client, key, member string, at time.Time, delay time.Duration, max int64) (int64, error) {
	var atMs int64
	if !at.IsZero() {
		atMs = max64(at.UnixMilli(), 1)
	}
	due, err := delayScript.Exec(ctx, c, []string{key}, []string{member, strconv.FormatInt(atMs, 10),
		strconv.FormatInt(delay.Milliseconds(), 10), strconv.FormatInt(max, 10)}).AsInt64()
	if err != nil {
		if re, ok := redisErr(err); ok && len(re.Error()) >= 7 && re.Error()[:7] == "MYCFULL" {
			return 0, ErrDelayedFull
		}
		return 0, err
	}
	return due, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// Delayed retries keep their entry pending (never acknowledged and
// written again: the caller accepts a reply only for the entry it wrote);
// a sorted set per partition (bus.Keys.Retry) records when each is due, so
// that a consumer that reclaims it from a dead one waits for that time too.

// scheduleScript records entry ARGV[1] as due ARGV[2] ms from now (Redis's
// clock) in the retry set KEYS[1]. Returns the due time (unix ms).
var scheduleScript = newScript("schedule", redisNow+`local due = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
return due`)

// ScheduleRetry records that the pending entry id is to be delivered again
// after delay, in the retry set key. It returns when (unix ms, Redis's
// clock).
func ScheduleRetry(ctx context.Context, c rueidis.Client, key, id string, delay time.Duration) (int64, error) {
	return scheduleScript.Exec(ctx, c, []string{key}, []string{id, strconv.FormatInt(delay.Milliseconds(), 10)}).AsInt64()
}

// RetryDue returns, for each of ids, when it is due in the retry set key
// (unix ms, Redis's clock), or -1 when it has no retry scheduled (or the
// key is not a sorted set: someone replaced it, and its retries are lost,
// so the entry is handled now rather than never).
func RetryDue(ctx context.Context, c rueidis.Client, key string, ids []string) ([]int64, error) {
	out := make([]int64, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	cmds := make(rueidis.Commands, len(ids))
	for i, id := range ids {
		cmds[i] = c.B().Zscore().Key(key).Member(id).Build()
	}
	for i, r := range c.DoMulti(ctx, cmds...) {
		f, err := r.AsFloat64()
		switch {
		case IsNil(err), isWrongType(err):
			out[i] = -1
		case err != nil:
			return nil, err
		default:
			out[i] = int64(f)
		}
	}
	return out, nil
}

// dueScript does what is due on one partition (KEYS[1] its delayed
// events, KEYS[2] its stream, KEYS[3] its retries): it moves up to ARGV[2]
// due delayed events to the stream (field ARGV[1]; a member without its id
// separator is dropped; XADD capped like a producer's write: ARGV[6] MAXLEN
// or MINID, ~ ARGV[7], none when ARGV[6] is empty), and claims up to ARGV[5]
// due retries for consumer ARGV[4] of group ARGV[3] (each removed from the
// set first: of the workers woken for it, one gets it). A set that is not a
// sorted set (someone replaced it) is left alone and reported, so the other
// still works. Returns {moved, next due (unix ms, -1: none), now, claimed
// entries, 1 if the delayed set had the wrong type + 2 if the retry set
// had}.
var dueScript = newScript("due", redisNow+`local bad = 0
local function zset(k, bit)
  local t = redis.call('TYPE', k)['ok']
  if t == 'zset' then return true end
  if t ~= 'none' then bad = bad + bit end
  return false
end
local delayedOK, retryOK = zset(KEYS[1], 1), zset(KEYS[3], 2)
local moved = 0
if delayedOK then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
  for _, m in ipairs(due) do
    local sep = string.find(m, ':', 1, true)
    if sep then
      if ARGV[6] == '' then
        redis.call('XADD', KEYS[2], '*', ARGV[1], string.sub(m, sep + 1))
      else
        redis.call('XADD', KEYS[2], ARGV[6], '~', ARGV[7], '*', ARGV[1], string.sub(m, sep + 1))
      end
      moved = moved + 1
    end
    redis.call('ZREM', KEYS[1], m)
  end
end
local claimed = {}
local limit = tonumber(ARGV[5])
if limit > 0 and retryOK then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[3], id)
    local ok, e = pcall(redis.call, 'XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, id)
    if ok and e[1] then table.insert(claimed, e[1]) end
  end
end
local n = -1
for i, k in ipairs({KEYS[1], KEYS[3]}) do
  if (i == 1 and delayedOK) or (i == 2 and retryOK) then
    local nxt = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    if nxt[2] then
      local v = tonumber(nxt[2])
      if n < 0 or v < n then n = v end
    end
  end
end
return {moved, n, now, claimed, bad}`)

// DuePart names one partition's keys for Due.
type DuePart struct{ Delayed, Stream, Retry string }

// DueResult is what Due did on one partition.
type DueResult struct {
	Moved   int64   // delayed events moved to the stream
	Claimed []Entry // due retries, now pending for the consumer (delivery count raised)
	Next    int64   // when the next delayed event or retry is due (unix ms, Redis's clock); -1: none
	Now     int64   // Redis's clock when the script ran (unix ms)
	// BadDelayed and BadRetry: that key holds something other than a
	// sorted set (someone replaced it); it was left alone.
	BadDelayed, BadRetry bool
	Err                  error
}

// Due moves due delayed events (up to limit per partition) of each of
// parts to its stream (capped by cp, as a producer's write) and claims for
// consumer up to claim[i] due retries of parts[i]: one script per
// partition, sent together (auto-pipelined).
func Due(ctx context.Context, c rueidis.Client, parts []DuePart, group, consumer string, limit int64, claim []int64, cp Cap) []DueResult {
	out := make([]DueResult, len(parts))
	lim := strconv.FormatInt(limit, 10)
	capKind, capVal := cp.args()
	one := func(i int) {
		p := parts[i]
		r := dueScript.Exec(ctx, c, []string{p.Delayed, p.Stream, p.Retry}, []string{Field, lim, group, consumer, strconv.FormatInt(claim[i], 10), capKind, capVal})
		vals, err := r.ToArray()
		if err == nil && len(vals) != 5 {
			err = errors.New("redis: due script: unexpected reply")
		}
		if err != nil {
			out[i].Err = err
			return
		}
		var e1, e2, e3, e4, e5 error
		var bad int64
		out[i].Moved, e1 = vals[0].AsInt64()
		out[i].Next, e2 = vals[1].AsInt64()
		out[i].Now, e3 = vals[2].AsInt64()
		out[i].Claimed, e4 = parseEntries(&vals[3])
		bad, e5 = vals[4].AsInt64()
		out[i].BadDelayed, out[i].BadRetry = bad&1 != 0, bad&2 != 0
		out[i].Err = errors.Join(e1, e2, e3, e4, e5)
	}
	if len(parts) == 1 {
		one(0)
		return out
	}
	var wg sync.WaitGroup
	for i := range parts {
		wg.Go(func() { one(i) })
	}
	wg.Wait()
	return out
}

// Idempotent publishes: the first publish with an idempotency key within
// the topic's window writes the event and records its entry id under
// bus.Keys.Once; a later one within the window writes nothing and gets
// that id back. One script on the partition's hash tag: the check and the
// write are atomic.

// onceScript: KEYS[1] the stream, KEYS[2] the once key; ARGV 1 field,
// 2 envelope, 3 cap kind ("", MAXLEN or MINID), 4 cap value, 5 window ms.
// Returns {1, new id} or {0, the first publish's id}.
var onceScript = newScript("once", `local id = redis.call('GET', KEYS[2])
if id then return {0, id} end
if ARGV[3] == '' then
  id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
else
  id = redis.call('XADD', KEYS[1], ARGV[3], '~', ARGV[4], '*', ARGV[1], ARGV[2])
end
redis.call('SET', KEYS[2], id, 'PX', ARGV[5])
return {1, id}`)

// AddOnce appends data (an encoded envelope) to stream unless the once key
// records an earlier publish within the window: then it writes nothing and
// returns that publish's id with dup true.
func AddOnce(ctx context.Context, c rueidis.Client, stream, once string, data []byte, cp Cap, window time.Duration) (id string, dup bool, err error) {
	capKind, capVal := cp.args()
	arr, err := onceScript.Exec(ctx, c, []string{stream, once}, []string{Field, rueidis.BinaryString(data), capKind, capVal,
		strconv.FormatInt(max(window.Milliseconds(), 1), 10)}).ToArray()
	if err != nil {
		return "", false, err
	}
	if len(arr) != 2 {
		return "", false, errors.New("redis: once script: unexpected reply")
	}
	fresh, err1 := arr[0].AsInt64()
	id, err2 := arr[1].ToString()
	if err1 != nil || err2 != nil || !strings.Contains(id, "-") {
		return "", false, errors.New("redis: once script: malformed reply")
	}
	return id, fresh == 0, nil
}
