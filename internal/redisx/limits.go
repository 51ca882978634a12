package redisx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// Limits are a topic's fleet-wide flow-control settings, kept in its meta
// hash (bus.Keys.Meta) so every worker of every node sees one setting, and
// read by the permit function on each call (a change applies at once).
// Zero fields are unset.
type Limits struct {
	// Rate: at most Rate handler calls per RateInterval, Burst at once
	// (GCRA; Burst 0 means 1).
	Rate         int64
	RateInterval time.Duration
	Burst        int64
	// Tokens: a budget of Tokens cost units per TokensInterval (each
	// entry's cost: its estimate when it starts, corrected by what the
	// handler reports), of which TokensBurst may be spent at once (0: one
	// second's worth).
	Tokens         int64
	TokensInterval time.Duration
	TokensBurst    int64
	// Concurrency: handler calls in flight across the fleet.
	Concurrency int64
	// PausedUntil: no worker starts a handler before it (one 429 slows
	// the fleet); zero when not paused.
	PausedUntil time.Time
}

// Set reports whether any limit is set (a pause apart).
func (l Limits) Set() bool { return l.Rate > 0 || l.Tokens > 0 || l.Concurrency > 0 }

// The meta hash's fields of the limits.
var limitFields = []string{"limit_rate", "limit_rate_ms", "limit_burst", "limit_tokens", "limit_tokens_ms", "limit_tokens_burst", "limit_concurrency", "paused_until"}

// MaxLimit bounds every count of a limit (rates, bursts, budgets,
// concurrency): Lua's numbers are doubles, exact to 2^53.
const MaxLimit = 1 << 40

// Validate checks l's fields.
func (l Limits) Validate() error {
	for _, v := range []int64{l.Rate, l.Burst, l.Tokens, l.TokensBurst, l.Concurrency} {
		if v < 0 || v > MaxLimit {
			return fmt.Errorf("limits: counts must be 0 to %d", int64(MaxLimit))
		}
	}
	if l.Rate > 0 && (l.RateInterval < time.Millisecond || l.RateInterval > 24*time.Hour) {
		return errors.New("limits: a rate's interval must be 1ms to 24h")
	}
	if l.Tokens > 0 && (l.TokensInterval < time.Millisecond || l.TokensInterval > 24*time.Hour) {
		return errors.New("limits: a token budget's interval must be 1ms to 24h")
	}
	if l.Burst > 0 && l.Rate == 0 || l.TokensBurst > 0 && l.Tokens == 0 {
		return errors.New("limits: a burst needs its rate or token budget")
	}
	return nil
}

// GetLimits reads the limits kept in meta.
func GetLimits(ctx context.Context, c rueidis.Client, meta string) (Limits, error) {
	vals, err := c.Do(ctx, c.B().Hmget().Key(meta).Field(limitFields...).Build()).ToArray()
	if err != nil {
		return Limits{}, err
	}
	if len(vals) != len(limitFields) {
		return Limits{}, errors.New("redis: HMGET of the limits: unexpected reply")
	}
	var n [8]int64
	for i := range vals {
		if vals[i].IsNil() {
			continue
		}
		s, err := vals[i].ToString()
		if err != nil {
			return Limits{}, fmt.Errorf("%w: %s: %s", ErrCorruptMeta, meta, limitFields[i])
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 || v > MaxLimit && i != 7 {
			return Limits{}, fmt.Errorf("%w: %s: %s is %q", ErrCorruptMeta, meta, limitFields[i], s)
		}
		n[i] = v
	}
	l := Limits{Rate: n[0], RateInterval: time.Duration(n[1]) * time.Millisecond, Burst: n[2],
		Tokens: n[3], TokensInterval: time.Duration(n[4]) * time.Millisecond, TokensBurst: n[5], Concurrency: n[6]}
	if n[7] > 0 {
		l.PausedUntil = time.UnixMilli(n[7])
	}
	if err := l.Validate(); err != nil {
		return Limits{}, fmt.Errorf("%w: %s: %w", ErrCorruptMeta, meta, err)
	}
	return l, nil
}

// SetLimits replaces the limits kept in meta by l (its pause apart: see
// Pause): unset fields are removed.
func SetLimits(ctx context.Context, c rueidis.Client, meta string, l Limits) error {
	if err := l.Validate(); err != nil {
		return err
	}
	vals := []int64{l.Rate, l.RateInterval.Milliseconds(), l.Burst, l.Tokens, l.TokensInterval.Milliseconds(), l.TokensBurst, l.Concurrency}
	set := c.B().Hset().Key(meta).FieldValue()
	var del []string
	hasSet := false
	for i, v := range vals {
		if v > 0 {
			set = set.FieldValue(limitFields[i], strconv.FormatInt(v, 10))
			hasSet = true
		} else {
			del = append(del, limitFields[i])
		}
	}
	cmds := rueidis.Commands{c.B().Multi().Build()}
	if hasSet {
		cmds = append(cmds, set.Build())
	}
	if len(del) > 0 {
		cmds = append(cmds, c.B().Hdel().Key(meta).Field(del...).Build())
	}
	cmds = append(cmds, c.B().Exec().Build())
	for _, r := range c.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

// ClearLimits removes every limit and the pause kept in meta.
func ClearLimits(ctx context.Context, c rueidis.Client, meta string) error {
	return c.Do(ctx, c.B().Hdel().Key(meta).Field(limitFields...).Build()).Error()
}

// LimitKeys are the keys of a topic's limiter, all on the topic's hash tag
// (bus.Keys builds them).
type LimitKeys struct {
	Meta   string // the limits (and partition count, cache generation)
	Rate   string // the rate's GCRA state (its theoretical arrival time, ms)
	Tokens string // the token budget's GCRA state
	Leases string // hash: consumer -> leases held
	Expiry string // sorted set: consumer -> when its leases expire (ms)
}

func (k LimitKeys) list() []string { return []string{k.Meta, k.Rate, k.Tokens, k.Leases, k.Expiry} }

// permitScript: KEYS the LimitKeys; ARGV 1 the consumer, 2 permits
// wanted, 3 lease TTL ms, 4 the consumer's average cost per message, 5
// leases the consumer gives back first (a worker whose handler ended asks
// for that lease again in the same call: no other worker takes it in
// between, and none waits for a release still on its way).
// Grants at most ARGV[2] permits: the fewest the concurrency (leases
// free), the rate (GCRA) and the token budget (not in debt past its burst;
// as many messages as the tokens left pay at the average cost, at least
// one) allow, all or nothing per limit, and commits them
// (leases held by the consumer, the rate's arrival time). Returns {granted,
// wait ms (when none: until the next permit by rate, tokens or pause; -1:
// until a lease frees, unknown), limited (0: no limit and no pause: the
// caller stops asking for a while), paused until (ms, 0: not paused),
// leased (1: the permits hold concurrency leases), timed (1: a rate or a
// token budget is set: permits are to be used at once, not held by a
// blocking read), charged (tokens charged per permit granted, the
// caller's average cost: the caller gives them back once it charged the
// messages' own estimates)}.
var permitScript = newScript("permit", `local f = redis.call('HMGET', KEYS[1], 'limit_rate', 'limit_rate_ms', 'limit_burst', 'limit_tokens', 'limit_tokens_ms', 'limit_tokens_burst', 'limit_concurrency', 'paused_until')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want = tonumber(ARGV[2])
local rel = tonumber(ARGV[5])
if rel > 0 then
  local left = redis.call('HINCRBY', KEYS[4], ARGV[1], -rel)
  if left <= 0 then
    redis.call('HDEL', KEYS[4], ARGV[1])
    redis.call('ZREM', KEYS[5], ARGV[1])
  end
end
local pu = tonumber(f[8])
if pu and pu > now then return {0, pu - now, 1, pu, 0, 0, 0} end
local rate, cc, tok = tonumber(f[1]), tonumber(f[7]), tonumber(f[4])
if not rate and not cc and not tok then return {want, 0, 0, 0, 0, 0, 0} end
local grant, wait = want, 0
if cc then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
  for _, c in ipairs(dead) do
    redis.call('HDEL', KEYS[4], c)
    redis.call('ZREM', KEYS[5], c)
  end
  local used = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[4])) do used = used + tonumber(v) end
  grant = math.min(grant, math.max(cc - used, 0))
  if grant == 0 then wait = -1 end
end
local rtat, rT
if rate and grant > 0 then
  rT = tonumber(f[2]) / rate
  local burst = tonumber(f[3]) or 1
  rtat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  local n = math.floor((now + burst * rT - rtat) / rT + 1e-9)
  if n < grant then grant = math.max(n, 0) end
  if grant == 0 then wait = math.max(math.ceil(rtat + rT - burst * rT - now), 1) end
end
local ttat, tT, per
if tok and grant > 0 then
  local T = tonumber(f[5]) / tok
  tT, per = T, math.max(tonumber(ARGV[4]), 1)
  local burst = tonumber(f[6]) or math.max(math.floor(tok * 1000 / tonumber(f[5])), 1)
  ttat = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)
  local avail = (burst * T - (ttat - now)) / T
  if avail < 0 then
    grant = 0
    wait = math.max(math.ceil(-avail * T), 1)
  else
    local n = math.max(math.floor(avail / per), 1)
    if n < grant then grant = n end
  end
end
if grant > 0 then
  if cc then
    redis.call('HINCRBY', KEYS[4], ARGV[1], grant)
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[3]), ARGV[1])
  end
  if rtat then
    local tat = rtat + grant * rT
    redis.call('SET', KEYS[2], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  end
  if ttat then
    -- The messages' costs are known once read: charge the average now,
    -- so other workers asking meanwhile see it (permitdone corrects it).
    local tat = ttat + grant * per * tT
    redis.call('SET', KEYS[3], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  end
end
local leased, timed, charged = 0, 0, 0
if cc and grant > 0 then leased = 1 end
if rate or tok then timed = 1 end
if ttat and grant > 0 then charged = per end
return {grant, wait, 1, 0, leased, timed, charged}`)

// permitDoneScript: KEYS the LimitKeys; ARGV 1 the consumer, 2 leases to
// release, 3 rate permits to give back (granted, not used), 4 tokens to
// charge (negative: to give back), 5 lease TTL ms (its leases left are
// renewed). Returns the consumer's leases left.
var permitDoneScript = newScript("permitdone", `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = 0
local rel = tonumber(ARGV[2])
if rel > 0 then
  left = redis.call('HINCRBY', KEYS[4], ARGV[1], -rel)
  if left <= 0 then
    redis.call('HDEL', KEYS[4], ARGV[1])
    redis.call('ZREM', KEYS[5], ARGV[1])
    left = 0
  end
else
  left = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
end
if left > 0 then redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), ARGV[1]) end
local f = redis.call('HMGET', KEYS[1], 'limit_rate', 'limit_rate_ms', 'limit_tokens', 'limit_tokens_ms')
local back = tonumber(ARGV[3])
if back > 0 and f[1] then
  local T = tonumber(f[2]) / tonumber(f[1])
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat > now then
    tat = math.max(tat - back * T, now)
    redis.call('SET', KEYS[2], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  end
end
local charge = tonumber(ARGV[4])
if charge ~= 0 and f[3] then
  local T = tonumber(f[4]) / tonumber(f[3])
  local tat = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now) + charge * T
  if tat > now then
    redis.call('SET', KEYS[3], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  else
    redis.call('DEL', KEYS[3])
  end
end
return left`)

// Permit is the permit function's answer.
type Permit struct {
	Granted int64
	// Wait is when to ask again when none was granted (by rate, tokens or
	// pause); -1: when a lease frees (unknown: poll).
	Wait time.Duration
	// Limited is false when the topic has no limit and no pause: the
	// caller may stop asking for a while.
	Limited     bool
	PausedUntil time.Time
	// Leased: the permits hold concurrency leases (give them back with
	// PermitsDone when their handlers end).
	Leased bool
	// Timed: a rate or a token budget is set: the permits are spent when
	// granted (GCRA), so a read must use them at once, not hold them
	// while it blocks (permits granted to several blocked reads over time
	// would all be spent at once when entries come).
	Timed bool
	// Charged is the tokens charged per permit granted (the caller's
	// average cost; 0 without a token budget): the caller gives them back
	// (PermitsDone, negative tokens) as it charges each message's estimate.
	Charged int64
}

// TakePermits gives back release leases of consumer, then asks for up to
// want permits (see permitScript).
func TakePermits(ctx context.Context, c rueidis.Client, k LimitKeys, consumer string, want int64, leaseTTL time.Duration, avgCost, release int64) (Permit, error) {
	arr, err := permitScript.Exec(ctx, c, k.list(), []string{consumer, strconv.FormatInt(want, 10), strconv.FormatInt(max(leaseTTL.Milliseconds(), 1), 10),
		strconv.FormatInt(max(avgCost, 1), 10), strconv.FormatInt(max(release, 0), 10)}).ToArray()
	if err != nil {
		return Permit{}, err
	}
	if len(arr) != 7 {
		return Permit{}, errors.New("redis: permit function: unexpected reply")
	}
	var v [7]int64
	for i := range arr {
		if v[i], err = arr[i].AsInt64(); err != nil {
			return Permit{}, errors.New("redis: permit function: malformed reply")
		}
	}
	if v[0] < 0 || v[0] > want {
		return Permit{}, errors.New("redis: permit function: granted out of range")
	}
	p := Permit{Granted: v[0], Limited: v[2] != 0, Leased: v[4] != 0, Timed: v[5] != 0, Charged: max(v[6], 0)}
	if v[1] < 0 {
		p.Wait = -1
	} else {
		p.Wait = time.Duration(v[1]) * time.Millisecond
	}
	if v[3] > 0 {
		p.PausedUntil = time.UnixMilli(v[3])
	}
	return p, nil
}

// PermitsDone releases leases, gives back unused rate permits and charges
// tokens for consumer (see permitDoneScript), renewing its leases left; it
// returns how many it holds.
func PermitsDone(ctx context.Context, c rueidis.Client, k LimitKeys, consumer string, release, unused, tokens int64, leaseTTL time.Duration) (int64, error) {
	return permitDoneScript.Exec(ctx, c, k.list(), []string{consumer, strconv.FormatInt(release, 10), strconv.FormatInt(unused, 10),
		strconv.FormatInt(tokens, 10), strconv.FormatInt(max(leaseTTL.Milliseconds(), 1), 10)}).AsInt64()
}

// pauseScript: KEYS[1] a topic's meta, KEYS[2] its control stream; ARGV
// 1 a pause in ms (0: resume), 2 the control stream's cap. Sets
// paused_until to now + the pause unless it is later already (resume:
// removes it), and tells every worker at once with a pause notice on the
// control stream (until 0: resumed). Returns the pause's end (ms; 0 when
// resumed).
var pauseScript = newScript("pause", `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local d = tonumber(ARGV[1])
local until_ = 0
if d > 0 then
  until_ = now + d
  local cur = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
  if cur and cur >= until_ then return cur end
  redis.call('HSET', KEYS[1], 'paused_until', until_)
else
  redis.call('HDEL', KEYS[1], 'paused_until')
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'op', 'pause', 'until', until_)
return until_`)

// Pause pauses the topic of meta (and control stream ctl) for d (from
// Redis's clock) unless it is paused for longer already, and returns when
// the pause ends.
func Pause(ctx context.Context, c rueidis.Client, meta, ctl string, d time.Duration) (time.Time, error) {
	ms, err := pauseScript.Exec(ctx, c, []string{meta, ctl}, []string{strconv.FormatInt(max(d.Milliseconds(), 1), 10), strconv.Itoa(ControlMaxLen)}).AsInt64()
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(ms), nil
}

// Resume ends the topic's pause (Pause) now, telling every worker.
func Resume(ctx context.Context, c rueidis.Client, meta, ctl string) error {
	return pauseScript.Exec(ctx, c, []string{meta, ctl}, []string{"0", strconv.Itoa(ControlMaxLen)}).Error()
}

// startCostScript: KEYS[1] a topic's meta, KEYS[2] its token budget's
// state; ARGV[1] a message's estimated cost. A message much dearer than
// the average its permit was charged starts only when the budget's debt
// leaves room for it within the burst (or, dearer than the burst, when
// the budget is not in debt): then it is charged at once and 0 returned;
// else the ms to wait. No token budget: 0, nothing charged.
var startCostScript = newScript("startcost", `local f = redis.call('HMGET', KEYS[1], 'limit_tokens', 'limit_tokens_ms', 'limit_tokens_burst')
local tok = tonumber(f[1])
if not tok then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local T = tonumber(f[2]) / tok
local burst = tonumber(f[3]) or math.max(math.floor(tok * 1000 / tonumber(f[2])), 1)
local cost = tonumber(ARGV[1])
local ttat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
local debt = (ttat - now) / T
local room = math.max(burst - cost, 0)
if debt > room then return math.max(math.ceil((debt - room) * T), 1) end
local tat = ttat + cost * T
redis.call('SET', KEYS[2], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
return 0`)

// StartCost charges a dear message's cost to the topic's token budget when
// it has room (see startCostScript); otherwise it returns how long to wait
// before asking again.
func StartCost(ctx context.Context, c rueidis.Client, k LimitKeys, cost int64) (time.Duration, error) {
	ms, err := startCostScript.Exec(ctx, c, []string{k.Meta, k.Tokens}, []string{strconv.FormatInt(cost, 10)}).AsInt64()
	if err != nil {
		return 0, err
	}
	return time.Duration(max(ms, 0)) * time.Millisecond, nil
}
