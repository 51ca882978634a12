package redisx

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/rueidis"
)

// Backlog is what a topic stream holds that its groups have not finished:
// measured by producers (off their hot path) to hold publishers back before
// XADD's MAXLEN ~ trims entries nobody has read.
type Backlog struct {
	Length int64       // XLEN
	Groups []GroupInfo // XINFO GROUPS
}

// Unfinished is the most entries any one group has still to finish: its
// lag (entries not yet delivered to it) and its pending entries (delivered,
// not acknowledged), at most the stream's length. A stream without a group
// counts every entry (a group created later starts at its first entry,
// consumer.Config.StartID "0"); a group whose lag Redis cannot tell (nil
// after an XDEL ahead of it) counts the whole stream.
//
// Redis 7's lag overcounts for ever once entries were trimmed before a
// group read them (docs/flow-control.md, "Redis's lag after a trim"): the
// workers' RepairLag puts it right whenever the group has read up to the
// stream's last entry.
func (b Backlog) Unfinished() int64 {
	if len(b.Groups) == 0 {
		return b.Length
	}
	var most int64
	for _, g := range b.Groups {
		n := b.Length
		if g.Lag >= 0 {
			n = min(g.Lag+g.Pending, b.Length)
		}
		most = max(most, n)
	}
	return most
}

// MeasureBacklog reads key's length and groups in one round trip (XLEN,
// XINFO GROUPS). A missing stream has an empty backlog.
func MeasureBacklog(ctx context.Context, c rueidis.Client, key string) (Backlog, error) {
	res := c.DoMulti(ctx, c.B().Xlen().Key(key).Build(), c.B().XinfoGroups().Key(key).Build())
	n, err := res[0].AsInt64()
	if err != nil {
		return Backlog{}, fmt.Errorf("redis: XLEN %s: %w", key, err)
	}
	if n < 0 {
		return Backlog{}, errors.New("redis: XLEN: negative length")
	}
	groups, err := parseGroups(res[1])
	if err != nil {
		return Backlog{}, fmt.Errorf("redis: XINFO GROUPS %s: %w", key, err)
	}
	for i := range groups {
		if groups[i].Pending < 0 {
			return Backlog{}, errors.New("redis: XINFO GROUPS: negative pending count")
		}
	}
	return Backlog{Length: n, Groups: groups}, nil
}

// lagFixScript: KEYS[1] a topic stream, ARGV[1] a group. When the group has
// read up to the stream's last entry but Redis reports a lag (entries were
// trimmed before the group read them: Redis 7 then never counts them as
// read), it sets the group's read counter to the stream's entries-added, so
// the lag is 0 again; the group's last id is unchanged (same id, one atomic
// script: no entry is delivered again). Returns the lag put right (-1 for
// an unknown one), 0 when there was nothing to do. A server that reports no
// lag (Redis 6, miniredis) is left alone.
var lagFixScript = newScript("lagfix", `local ok, s = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return 0 end
local last, added
for i = 1, #s, 2 do
  if s[i] == 'last-generated-id' then last = s[i+1] elseif s[i] == 'entries-added' then added = s[i+1] end
end
if not added then return 0 end
local gok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not gok then return 0 end
for _, g in ipairs(groups) do
  local name, ld, lag, seen
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i+1]
    elseif g[i] == 'last-delivered-id' then ld = g[i+1]
    elseif g[i] == 'lag' then lag = g[i+1]; seen = true end
  end
  if name == ARGV[1] then
    if seen and ld == last and lag ~= 0 then
      redis.call('XGROUP', 'SETID', KEYS[1], name, ld, 'ENTRIESREAD', added)
      if lag then return lag end
      return -1
    end
    return 0
  end
end
return 0`)

// RepairLag puts group's lag on key right when it overcounts (see
// lagFixScript) and returns the lag it removed (-1: an unknown lag made
// known), 0 when there was nothing to do.
func RepairLag(ctx context.Context, c rueidis.Client, key, group string) (int64, error) {
	return lagFixScript.Exec(ctx, c, []string{key}, []string{group}).AsInt64()
}
