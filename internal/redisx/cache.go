package redisx

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// The response cache's Redis side (docs/cache.md). Every key a script
// touches comes through KEYS and shares the topic's hash tag, so each
// script runs in one Cluster slot.
//
// A shared-tier value is "<stored unix ms>\n<reply envelope>": the time,
// from Redis's own clock (TIME), lets a caller ask for a maximum age without
// trusting any host's clock. A flight marker is a list: its first element
// is the leader's deadline (unix ms, the leader's clock), the others are
// the waiters that joined, each "<reply stream> <correlation id>".

// Begin outcomes.
const (
	BeginStale    = 0 // the caller's generation is old: retry with Gen
	BeginHit      = 1 // Value holds the shared answer
	BeginJoined   = 2 // joined a live flight: the worker answers the waiter
	BeginLead     = 3 // added the request and marked it in flight
	BeginTakeOver = 4 // the flight's leader gave up (deadline passed): re-added the request as the new leader
	BeginUnmarked = 5 // the flight is full: added the request without joining
)

// beginScript: see Begin. ARGV: 1 gen, 2 max age ms (0: any), 3 waiter,
// 4 now ms, 5 leader deadline ms, 6 marker TTL ms, 7 max waiters, 8 field,
// 9 envelope, 10 cap kind ("", MAXLEN or MINID), 11 cap value, 12 "1" to
// skip and delete the stored value (it was corrupt), 13 "1" to skip the
// lookup only.
var beginScript = rueidis.NewLuaScript(`local meta = redis.call('HMGET', KEYS[2], 'gen', 'epoch')
local gen = meta[1] or '0'
local epoch = meta[2] or '0'
if gen ~= ARGV[1] then return {0, gen, epoch} end
local corrupt = 0
if ARGV[12] == '1' then
  redis.call('DEL', KEYS[3])
elseif ARGV[13] ~= '1' then
  local v = redis.call('GET', KEYS[3])
  if v then
    local i = string.find(v, '\n', 1, true)
    local stored = i and tonumber(string.sub(v, 1, i - 1))
    if stored then
      local t = redis.call('TIME')
      local age = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - stored
      if age < 0 then age = 0 end
      local maxAge = tonumber(ARGV[2])
      if maxAge <= 0 or age <= maxAge then
        return {1, gen, epoch, string.sub(v, i + 1), age, redis.call('PTTL', KEYS[3])}
      end
    else
      redis.call('DEL', KEYS[3])
      corrupt = 1
    end
  end
end
local function xadd()
  if ARGV[10] == '' then return redis.call('XADD', KEYS[1], '*', ARGV[8], ARGV[9]) end
  return redis.call('XADD', KEYS[1], ARGV[10], '~', ARGV[11], '*', ARGV[8], ARGV[9])
end
local ttl = tonumber(ARGV[6])
local function extend()
  if redis.call('PTTL', KEYS[4]) < ttl then redis.call('PEXPIRE', KEYS[4], ttl) end
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  local ld = tonumber(redis.call('LINDEX', KEYS[4], 0))
  if ld and ld > tonumber(ARGV[4]) then
    if redis.call('LLEN', KEYS[4]) > tonumber(ARGV[7]) then
      return {5, gen, epoch, xadd(), corrupt}
    end
    redis.call('LREM', KEYS[4], 0, ARGV[3])
    redis.call('RPUSH', KEYS[4], ARGV[3])
    extend()
    return {2, gen, epoch, ld, corrupt}
  end
  local id = xadd()
  redis.call('LSET', KEYS[4], 0, ARGV[5])
  redis.call('LREM', KEYS[4], 0, ARGV[3])
  extend()
  return {4, gen, epoch, id, corrupt}
end
local id = xadd()
redis.call('RPUSH', KEYS[4], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ttl)
return {3, gen, epoch, id, corrupt}`)

// BeginArgs is one cached request's lookup-or-send.
type BeginArgs struct {
	Stream, Meta, Entry, Flight string // keys (one hash tag)
	Gen                         uint64
	MaxAge                      time.Duration // 0: any age
	Waiter                      string        // "<reply stream> <correlation id>"
	Now, Deadline               time.Time     // the caller's clock
	MarkerTTL                   time.Duration
	MaxWaiters                  int
	Data                        []byte // the request's envelope
	Cap                         Cap
	DropValue                   bool // the stored value was corrupt: delete it and do not look
	SkipLookup                  bool // ask the worker even if a value is stored (no-cache)
}

// BeginResult is what Begin found or did.
type BeginResult struct {
	Outcome   int
	Gen       uint64 // the topic's current generation
	Epoch     uint64 // the topic's current invalidation epoch
	Value     string // BeginHit: the stored reply envelope
	Age       time.Duration
	TTL       time.Duration // BeginHit: the value's remaining lifetime
	ID        string        // BeginLead, BeginTakeOver, BeginUnmarked: the new entry
	Leader    time.Time     // BeginJoined: the leader's deadline
	Corrupted bool          // a stored value without its time prefix was deleted
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

func (a *BeginArgs) exec() rueidis.LuaExec {
	capKind, capVal := "", ""
	switch {
	case a.Cap.minID:
		capKind, capVal = "MINID", a.Cap.s
	case a.Cap.n > 0:
		capKind, capVal = "MAXLEN", a.Cap.s
	}
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	return rueidis.LuaExec{
		Keys: []string{a.Stream, a.Meta, a.Entry, a.Flight},
		Args: []string{strconv.FormatUint(a.Gen, 10), ms(a.MaxAge), a.Waiter,
			strconv.FormatInt(a.Now.UnixMilli(), 10), strconv.FormatInt(a.Deadline.UnixMilli(), 10), ms(a.MarkerTTL),
			strconv.Itoa(a.MaxWaiters), Field, rueidis.BinaryString(a.Data), capKind, capVal,
			flag(a.DropValue), flag(a.SkipLookup)},
	}
}

// Begin runs the cached request path's one round trip: it returns the
// shared answer when one is stored (and young enough), joins an identical
// request in flight, or adds the request to the stream and marks it in
// flight, atomically.
func Begin(ctx context.Context, c rueidis.Client, a *BeginArgs) (BeginResult, error) {
	return parseBegin(beginScript.Exec(ctx, c, a.Keys(), a.exec().Args))
}

// Keys returns the keys the script touches.
func (a *BeginArgs) Keys() []string { return []string{a.Stream, a.Meta, a.Entry, a.Flight} }

// BeginMulti runs several Begins in one pipelined round trip.
func BeginMulti(ctx context.Context, c rueidis.Client, args []BeginArgs) []BeginOrErr {
	execs := make([]rueidis.LuaExec, len(args))
	for i := range args {
		execs[i] = args[i].exec()
	}
	res := beginScript.ExecMulti(ctx, c, execs...)
	out := make([]BeginOrErr, len(res))
	for i, r := range res {
		out[i].Result, out[i].Err = parseBegin(r)
	}
	return out
}

// BeginOrErr is one result of BeginMulti.
type BeginOrErr struct {
	Result BeginResult
	Err    error
}

// parseBegin validates the script's reply (it comes from Redis: checked,
// not trusted).
func parseBegin(r rueidis.RedisResult) (BeginResult, error) {
	var out BeginResult
	arr, err := r.ToArray()
	if err != nil {
		return out, err
	}
	bad := func(what string) (BeginResult, error) {
		return BeginResult{}, fmt.Errorf("redisx: cache script: malformed reply: %s", what)
	}
	if len(arr) < 3 {
		return bad("short")
	}
	o, err := arr[0].AsInt64()
	if err != nil || o < BeginStale || o > BeginUnmarked {
		return bad("outcome")
	}
	out.Outcome = int(o)
	if out.Gen, err = parseUint(arr[1]); err != nil {
		return bad("generation")
	}
	if out.Epoch, err = parseUint(arr[2]); err != nil {
		return bad("epoch")
	}
	if out.Outcome == BeginStale {
		return out, nil
	}
	if out.Outcome == BeginHit {
		if len(arr) < 6 {
			return bad("short hit")
		}
		if out.Value, err = arr[3].ToString(); err != nil {
			return bad("value")
		}
		age, err1 := arr[4].AsInt64()
		ttl, err2 := arr[5].AsInt64()
		if err1 != nil || err2 != nil {
			return bad("age")
		}
		out.Age, out.TTL = time.Duration(max(age, 0))*time.Millisecond, time.Duration(max(ttl, 0))*time.Millisecond
		return out, nil
	}
	if len(arr) < 5 {
		return bad("short")
	}
	if c, err := arr[4].AsInt64(); err == nil && c == 1 {
		out.Corrupted = true
	}
	if out.Outcome == BeginJoined {
		ld, err := arr[3].AsInt64()
		if err != nil {
			return bad("leader deadline")
		}
		out.Leader = time.UnixMilli(ld)
		return out, nil
	}
	if out.ID, err = arr[3].ToString(); err != nil || !strings.Contains(out.ID, "-") {
		return bad("entry id")
	}
	return out, nil
}

func parseUint(m rueidis.RedisMessage) (uint64, error) {
	s, err := m.ToString()
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(s, 10, 64)
}

// settleScript stores a worker's answer and takes the flight's waiters,
// atomically. ARGV: 1 value, 2 TTL ms (0: do not store), 3 "1" to take
// the waiters.
var settleScript = rueidis.NewLuaScript(`local w = {}
if ARGV[3] == '1' then
  w = redis.call('LRANGE', KEYS[2], 1, -1)
  redis.call('DEL', KEYS[2])
end
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f', now) .. '\n' .. ARGV[1], 'PX', ARGV[2])
end
return w`)

// Settle is one worker answer to store and one flight to settle.
type Settle struct {
	Entry, Flight string // keys (one hash tag)
	Value         []byte // the reply envelope to store
	TTL           time.Duration
	TakeWaiters   bool
}

// SettleResult is one Settle's outcome: the waiters it took, unvalidated.
type SettleResult struct {
	Waiters []string
	Err     error
}

// SettleMulti runs the settles in one pipelined round trip.
func SettleMulti(ctx context.Context, c rueidis.Client, s []Settle, out []SettleResult) []SettleResult {
	execs := make([]rueidis.LuaExec, len(s))
	for i := range s {
		take := "0"
		if s[i].TakeWaiters {
			take = "1"
		}
		execs[i] = rueidis.LuaExec{Keys: []string{s[i].Entry, s[i].Flight},
			Args: []string{rueidis.BinaryString(s[i].Value), ms(s[i].TTL), take}}
	}
	for _, r := range settleScript.ExecMulti(ctx, c, execs...) {
		w, err := r.AsStrSlice()
		out = append(out, SettleResult{Waiters: w, Err: err})
	}
	return out
}

// SplitValue takes a shared-tier value apart ("<ms>\n<envelope>").
func SplitValue(v string) (stored time.Time, envelope string, ok bool) {
	i := strings.IndexByte(v, '\n')
	if i <= 0 {
		return time.Time{}, "", false
	}
	n, err := strconv.ParseInt(v[:i], 10, 64)
	if err != nil {
		return time.Time{}, "", false
	}
	return time.UnixMilli(n), v[i+1:], true
}

// CacheMeta reads a topic's cache generation and invalidation epoch.
func CacheMeta(ctx context.Context, c rueidis.Client, meta string) (gen, epoch uint64, err error) {
	vals, err := c.Do(ctx, c.B().Hmget().Key(meta).Field("gen", "epoch").Build()).ToArray()
	if err != nil {
		return 0, 0, err
	}
	if len(vals) != 2 {
		return 0, 0, fmt.Errorf("redisx: HMGET %s: %d values", meta, len(vals))
	}
	return metaUint(vals[0]), metaUint(vals[1]), nil
}

// metaUint reads one metadata field: missing or malformed counts as 0.
func metaUint(m rueidis.RedisMessage) uint64 {
	s, err := m.ToString()
	if err != nil {
		return 0
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// BumpGeneration invalidates every cache entry of a topic at once: it
// increments the generation (new entries get new keys; old ones expire by
// their TTL) and the epoch (producers drop their local copies). It returns
// the new generation.
func BumpGeneration(ctx context.Context, c rueidis.Client, meta string) (uint64, error) {
	res := c.DoMulti(ctx, c.B().Multi().Build(), c.B().Hincrby().Key(meta).Field("gen").Increment(1).Build(),
		c.B().Hincrby().Key(meta).Field("epoch").Increment(1).Build(), c.B().Exec().Build())
	arr, err := res[3].ToArray()
	if err != nil {
		return 0, err
	}
	if len(arr) != 2 {
		return 0, fmt.Errorf("redisx: cache flush: EXEC returned %d replies", len(arr))
	}
	g, err := arr[0].AsInt64()
	return uint64(g), err
}

// DropEntry deletes one cache entry (the key of the current generation)
// and increments the epoch so producers drop their local copy. It reports
// whether the entry existed.
func DropEntry(ctx context.Context, c rueidis.Client, meta, entry string) (bool, error) {
	res := c.DoMulti(ctx, c.B().Multi().Build(), c.B().Del().Key(entry).Build(),
		c.B().Hincrby().Key(meta).Field("epoch").Increment(1).Build(), c.B().Exec().Build())
	arr, err := res[3].ToArray()
	if err != nil {
		return false, err
	}
	if len(arr) != 2 {
		return false, fmt.Errorf("redisx: cache flush: EXEC returned %d replies", len(arr))
	}
	n, err := arr[0].AsInt64()
	return n > 0, err
}

// KeyStats counts the keys matching pattern and sums their string lengths,
// scanning at most limit keys (limit <= 0: all). It reports whether it
// stopped at the limit.
func KeyStats(ctx context.Context, c rueidis.Client, pattern string, limit int) (n int, bytes int64, truncated bool, err error) {
	cursor := uint64(0)
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return n, bytes, false, err
		}
		if len(e.Elements) > 0 {
			cmds := make(rueidis.Commands, len(e.Elements))
			for i, k := range e.Elements {
				cmds[i] = c.B().Strlen().Key(k).Build()
			}
			for _, r := range c.DoMulti(ctx, cmds...) {
				if l, err := r.AsInt64(); err == nil {
					bytes += l
				}
			}
			n += len(e.Elements)
		}
		if e.Cursor == 0 {
			return n, bytes, false, nil
		}
		if limit > 0 && n >= limit {
			return n, bytes, true, nil
		}
		cursor = e.Cursor
	}
}
