package bus

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/rueidis"
)

// StreamInfo summarises one stream for operators (bus-worker stats,
// /metrics). Reading it costs O(1) in the stream's length.
type StreamInfo struct {
	Key     string
	Length  int64
	FirstID string // oldest entry's id; "" when the stream is empty or missing
	LastID  string // newest entry's id; "" when the stream is empty or missing
	Groups  []GroupInfo
}

// Info reads key's length, first and last entry ids and consumer groups
// in one round trip. A missing stream has zero length and no groups. The
// key must be a stream or missing.
func Info(ctx context.Context, c rueidis.Client, key string) (StreamInfo, error) {
	res := c.DoMulti(ctx,
		c.B().Xlen().Key(key).Build(),
		c.B().Xrange().Key(key).Start("-").End("+").Count(1).Build(),
		c.B().Xrevrange().Key(key).End("+").Start("-").Count(1).Build(),
		c.B().XinfoGroups().Key(key).Build(),
	)
	si := StreamInfo{Key: key}
	var err error
	if si.Length, err = res[0].AsInt64(); err != nil {
		return si, fmt.Errorf("bus: XLEN %s: %w", key, err)
	}
	if si.FirstID, err = firstID(res[1]); err != nil {
		return si, fmt.Errorf("bus: XRANGE %s: %w", key, err)
	}
	if si.LastID, err = firstID(res[2]); err != nil {
		return si, fmt.Errorf("bus: XREVRANGE %s: %w", key, err)
	}
	if si.Groups, err = parseGroups(res[3]); err != nil {
		return si, fmt.Errorf("bus: XINFO GROUPS %s: %w", key, err)
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

// PendingTotals summarises a group's pending entries (XPENDING summary form).
type PendingTotals struct {
	Count    int64
	OldestID string           // smallest pending id; "" when none
	ByOwner  map[string]int64 // consumer name -> pending entries
}

// PendingSummary reads the summary of group's pending entries on key. Its
// cost grows with the number of consumers, not of entries.
func PendingSummary(ctx context.Context, c rueidis.Client, key, group string) (PendingTotals, error) {
	arr, err := c.Do(ctx, c.B().Xpending().Key(key).Group(group).Build()).ToArray()
	if err != nil {
		return PendingTotals{}, groupErr(err, key, group)
	}
	if len(arr) < 4 {
		return PendingTotals{}, fmt.Errorf("bus: XPENDING %s %s: reply of %d elements", key, group, len(arr))
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
func ScanStreams(ctx context.Context, c rueidis.Client, pattern string) ([]string, error) {
	var out []string
	cursor := uint64(0)
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Type("stream").Build()).AsScanEntry()
		if err != nil {
			return nil, fmt.Errorf("bus: SCAN %s: %w", pattern, err)
		}
		out = append(out, e.Elements...)
		if e.Cursor == 0 {
			return out, nil
		}
		cursor = e.Cursor
	}
}
