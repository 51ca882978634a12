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
// A shared-tier value is "<TTL ms>\n<reply envelope>": the TTL it was
// stored with, so that its age is that TTL minus what PTTL says is left,
// by Redis's own clock, trusting no host's clock. A flight marker is a list: its first element
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

// beginScript: see Begin. The XADD comes last: Redis serves a blocked
// reader only once the script has ended, so work after it would delay the
// worker. (Should it fail, WRONGTYPE on a foreign key, the marker it leaves
// expires with the caller's deadline, and joined callers take over.) ARGV: 1 gen, 2 max age ms (0: any), 3 waiter,
// 4 now ms, 5 leader deadline ms, 6 marker TTL ms, 7 max waiters, 8 field,
// 9 envelope, 10 cap kind ("", MAXLEN or MINID), 11 cap value, 12 "1" to
// skip and delete the stored value (it was corrupt), 13 "1" to skip the
// lookup only.
var beginScript = newScript("begin", `local meta = redis.call('HMGET', KEYS[2], 'gen', 'epoch')
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
    local ttl = i and tonumber(string.sub(v, 1, i - 1))
    if ttl then
      local left = redis.call('PTTL', KEYS[3])
      local age = ttl - left
      if age < 0 or left < 0 then age = 0 end
      local maxAge = tonumber(ARGV[2])
      if maxAge <= 0 or age <= maxAge then
        return {1, gen, epoch, string.sub(v, i + 1), age, left}
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
local ld = redis.call('LINDEX', KEYS[4], 0)
if ld then
  ld = tonumber(ld) or 0
  if ld > tonumber(ARGV[4]) then
    if redis.call('LLEN', KEYS[4]) > tonumber(ARGV[7]) then
      return {5, gen, epoch, xadd(), corrupt}
    end
    redis.call('LREM', KEYS[4], 0, ARGV[3])
    redis.call('RPUSH', KEYS[4], ARGV[3])
    if redis.call('PTTL', KEYS[4]) < ttl then redis.call('PEXPIRE', KEYS[4], ttl) end
    return {2, gen, epoch, ld, corrupt}
  end
  redis.call('LSET', KEYS[4], 0, ARGV[5])
  redis.call('LREM', KEYS[4], 0, ARGV[3])
  if redis.call('PTTL', KEYS[4]) < ttl then redis.call('PEXPIRE', KEYS[4], ttl) end
  return {4, gen, epoch, xadd(), corrupt}
end
redis.call('RPUSH', KEYS[4], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ttl)
return {3, gen, epoch, xadd(), corrupt}`)

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
	capKind, capVal := a.Cap.args()
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

// A settle stores a worker's answer and takes the flight's waiters,
// atomically, as one MULTI/EXEC: LRANGE the waiters, DEL the marker, SET
// the value ("<TTL ms>\n<envelope>") with its TTL. No script: a Lua call
// cost about 60 µs more round trip than a plain command here (see
// docs/cache.md), a transaction of plain commands a few.

// MaxFlightWaiters bounds the requests that may join one flight (the begin
// function refuses more) and the waiters a worker takes from a flight
// marker: someone who may write the marker could push far more.
const MaxFlightWaiters = 10_000

// Settle is one worker answer to store and one flight to settle.
type Settle struct {
	Entry, Flight, Meta string // keys (one hash tag)
	Gen                 uint64 // the entry's generation (from its id)
	Value               []byte // the reply envelope to store
	TTL                 time.Duration
	TakeWaiters         bool
}

// SettleResult is one Settle's outcome: the waiters it took, unvalidated
// (at most MaxFlightWaiters), and whether the answer was stored under a
// generation that is not the topic's current one (Stale: the caller
// deletes it, see DeleteStale).
type SettleResult struct {
	Waiters []string
	Stale   bool
	Err     error
}

// n is how many commands the settle's transaction holds, MULTI and EXEC
// included.
func (s *Settle) n() int {
	n := 2
	if s.TakeWaiters {
		n += 2
	}
	if s.TTL.Milliseconds() > 0 {
		n += 2
	}
	return n
}

// cmds appends the settle's transaction. A stored answer is followed by
// the topic's current generation: an answer whose request named another
// (a flush raced it, or someone wrote a request naming a future
// generation to plant an answer it would serve after the next flush) is
// deleted at once by the caller.
func (s *Settle) cmds(c rueidis.Client, dst rueidis.Commands) rueidis.Commands {
	dst = append(dst, c.B().Multi().Build())
	if s.TakeWaiters {
		dst = append(dst, c.B().Lrange().Key(s.Flight).Start(1).Stop(MaxFlightWaiters).Build(), c.B().Del().Key(s.Flight).Build())
	}
	if ttl := s.TTL.Milliseconds(); ttl > 0 {
		v := strconv.FormatInt(ttl, 10) + "\n" + rueidis.BinaryString(s.Value)
		dst = append(dst, c.B().Set().Key(s.Entry).Value(v).PxMilliseconds(ttl).Build(), c.B().Hget().Key(s.Meta).Field("gen").Build())
	}
	return append(dst, c.B().Exec().Build())
}

// DeleteStale deletes the answers of settles whose result was Stale, in
// one round trip (each key in its own DEL: they may live on other slots).
func DeleteStale(ctx context.Context, c rueidis.Client, s []Settle, res []SettleResult) error {
	var keys []string
	for i := range res {
		if res[i].Stale {
			keys = append(keys, s[i].Entry)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	return DeleteEach(ctx, c, keys...)
}

// settleResults reads the transactions' replies (res, in the order of s's
// commands) into out.
func settleResults(s []Settle, res []rueidis.RedisResult, out []SettleResult) []SettleResult {
	at := 0
	for i := range s {
		n := s[i].n()
		if err := res[at].Error(); err != nil { // MULTI refused
			out = append(out, SettleResult{Err: err})
			at += n
			continue
		}
		arr, err := res[at+n-1].ToArray()
		at += n
		switch {
		case err != nil:
			out = append(out, SettleResult{Err: err})
			continue
		case len(arr) != n-2:
			out = append(out, SettleResult{Err: fmt.Errorf("redisx: cache settle: EXEC returned %d replies for %d commands", len(arr), n-2)})
			continue
		}
		var r SettleResult
		if s[i].TakeWaiters {
			r.Waiters, r.Err = arr[0].AsStrSlice()
		}
		if r.Err == nil && s[i].TTL.Milliseconds() > 0 {
			r.Err = arr[len(arr)-2].Error()
			if r.Err == nil {
				cur := metaUint(arr[len(arr)-1])
				r.Stale = cur != s[i].Gen
			}
		}
		out = append(out, r)
	}
	return out
}

// SettleAndAdd runs the settles, then adds and the ack as AddBatch does, in
// one pipelined round trip: a worker stores its answers and takes their
// waiters in the same round trip that writes the replies to the requests'
// own callers and acknowledges them. The settles run first, so an answer is
// stored before its caller can see it. It appends one SettleResult per
// settle to sout and AddBatch's results to out.
//
// tied acks run with the adds as AddTied runs them (one server only).
func SettleAndAdd(ctx context.Context, c rueidis.Client, s []Settle, adds []Add, tied, acks []Ack, out []Result, sout []SettleResult) ([]Result, []SettleResult) {
	var head rueidis.Commands
	for i := range s {
		head = s[i].cmds(c, head)
	}
	out, hres := addTied(ctx, c, head, adds, tied, acks, out)
	return out, settleResults(s, hres, sout)
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
// counting at most limit matching keys and walking at most 20 x limit keys
// of the keyspace (SCAN's MATCH filters after the walk: a few matches in a
// big keyspace cost the walk); limit <= 0: all. It reports whether it
// stopped at a limit.
//
// On Redis Cluster it scans every master (the limit is per master).
func KeyStats(ctx context.Context, c rueidis.Client, pattern string, limit int) (n int, bytes int64, truncated bool, err error) {
	err = EachMaster(ctx, c, func(_ string, node rueidis.Client) error {
		cursor := uint64(0)
		seen, walked := 0, 0
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
			walked += 1000 // about: COUNT is a hint
			if err != nil {
				return err
			}
			if len(e.Elements) > 0 {
				cmds := make(rueidis.Commands, len(e.Elements))
				for i, k := range e.Elements {
					cmds[i] = node.B().Strlen().Key(k).Build()
				}
				for _, r := range node.DoMulti(ctx, cmds...) {
					if l, err := r.AsInt64(); err == nil {
						bytes += l
					}
				}
				n += len(e.Elements)
				seen += len(e.Elements)
			}
			if e.Cursor == 0 {
				return nil
			}
			if limit > 0 && (seen >= limit || walked >= 20*limit) {
				truncated = true
				return nil
			}
			cursor = e.Cursor
		}
	})
	return n, bytes, truncated, err
}
