// Code written by hand once, from the functions of this package that take
// (ctx, rueidis.Client, ...): one method of Port each (see port.go).
// TestPortCoversTheFunctions keeps the two in step.

package redisx

import (
	"context"
	"time"
)

// Begin is this package's Begin, through the port.
func (p *Port) Begin(ctx context.Context, a *BeginArgs) (BeginResult, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Begin(dctx, p.rc, a)
	return r0, overran(ctx, r1)
}

// DeleteStale is this package's DeleteStale, through the port.
func (p *Port) DeleteStale(ctx context.Context, s []Settle, res []SettleResult) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := DeleteStale(dctx, p.rc, s, res)
	return overran(ctx, r0)
}

// SettleAndAdd is this package's SettleAndAdd, through the port.
func (p *Port) SettleAndAdd(ctx context.Context, s []Settle, adds []Add, tied []Ack, acks []Ack, out []Result, sout []SettleResult) ([]Result, []SettleResult) {
	dctx, done := detach(ctx)
	defer done()
	return SettleAndAdd(dctx, p.rc, s, adds, tied, acks, out, sout)
}

// CacheMeta is this package's CacheMeta, through the port.
func (p *Port) CacheMeta(ctx context.Context, meta string) (uint64, uint64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1, r2 := CacheMeta(dctx, p.rc, meta)
	if retryable(ctx, r2) {
		r0, r1, r2 = CacheMeta(dctx, p.rc, meta)
	}
	return r0, r1, overran(ctx, r2)
}

// BumpGeneration is this package's BumpGeneration, through the port.
func (p *Port) BumpGeneration(ctx context.Context, meta string) (uint64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := BumpGeneration(dctx, p.rc, meta)
	return r0, overran(ctx, r1)
}

// DropEntry is this package's DropEntry, through the port.
func (p *Port) DropEntry(ctx context.Context, meta string, entry string) (bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := DropEntry(dctx, p.rc, meta, entry)
	return r0, overran(ctx, r1)
}

// KeyStats is this package's KeyStats, through the port.
func (p *Port) KeyStats(ctx context.Context, pattern string, limit int) (int, int64, bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1, r2, r3 := KeyStats(dctx, p.rc, pattern, limit)
	if retryable(ctx, r3) {
		r0, r1, r2, r3 = KeyStats(dctx, p.rc, pattern, limit)
	}
	return r0, r1, r2, overran(ctx, r3)
}

// AutoClaim is this package's AutoClaim, through the port.
func (p *Port) AutoClaim(ctx context.Context, key string, group string, consumer string, minIdle time.Duration, start string, count int64) (string, []Entry, []string, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1, r2, r3 := AutoClaim(dctx, p.rc, key, group, consumer, minIdle, start, count)
	return r0, r1, r2, overran(ctx, r3)
}

// PendingOf is this package's PendingOf, through the port.
func (p *Port) PendingOf(ctx context.Context, key string, group string, start string, end string, count int64, consumer string) ([]Pending, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := PendingOf(dctx, p.rc, key, group, start, end, count, consumer)
	if retryable(ctx, r1) {
		r0, r1 = PendingOf(dctx, p.rc, key, group, start, end, count, consumer)
	}
	return r0, overran(ctx, r1)
}

// Deliveries is this package's Deliveries, through the port.
func (p *Port) Deliveries(ctx context.Context, key string, group string, consumer string, ids []string) ([]int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Deliveries(dctx, p.rc, key, group, consumer, ids)
	if retryable(ctx, r1) {
		r0, r1 = Deliveries(dctx, p.rc, key, group, consumer, ids)
	}
	return r0, overran(ctx, r1)
}

// Touch is this package's Touch, through the port.
func (p *Port) Touch(ctx context.Context, key string, group string, consumer string, minIdle time.Duration, ids ...string) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := Touch(dctx, p.rc, key, group, consumer, minIdle, ids...)
	return overran(ctx, r0)
}

// Uncount is this package's Uncount, through the port.
func (p *Port) Uncount(ctx context.Context, key string, group string, consumer string, ps []Pending) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := Uncount(dctx, p.rc, key, group, consumer, ps)
	return overran(ctx, r0)
}

// Consumers is this package's Consumers, through the port.
func (p *Port) Consumers(ctx context.Context, key string, group string) ([]ConsumerInfo, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Consumers(dctx, p.rc, key, group)
	if retryable(ctx, r1) {
		r0, r1 = Consumers(dctx, p.rc, key, group)
	}
	return r0, overran(ctx, r1)
}

// DeleteConsumer is this package's DeleteConsumer, through the port.
func (p *Port) DeleteConsumer(ctx context.Context, key string, group string, consumer string) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := DeleteConsumer(dctx, p.rc, key, group, consumer)
	return r0, overran(ctx, r1)
}

// ClusterNodes is this package's ClusterNodes, through the port.
func (p *Port) ClusterNodes(ctx context.Context) ([]ClusterNode, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ClusterNodes(dctx, p.rc)
	if retryable(ctx, r1) {
		r0, r1 = ClusterNodes(dctx, p.rc)
	}
	return r0, overran(ctx, r1)
}

// KeySlot is this package's KeySlot, through the port.
func (p *Port) KeySlot(ctx context.Context, key string) (int, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := KeySlot(dctx, p.rc, key)
	if retryable(ctx, r1) {
		r0, r1 = KeySlot(dctx, p.rc, key)
	}
	return r0, overran(ctx, r1)
}

// ClusterEnabled is this package's ClusterEnabled, through the port.
func (p *Port) ClusterEnabled(ctx context.Context) bool {
	dctx, done := detach(ctx)
	defer done()
	return ClusterEnabled(dctx, p.rc)
}

// Ping is this package's Ping, through the port.
func (p *Port) Ping(ctx context.Context) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := Ping(dctx, p.rc)
	return overran(ctx, r0)
}

// ServerInfo is this package's ServerInfo, through the port.
func (p *Port) ServerInfo(ctx context.Context) (Server, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ServerInfo(dctx, p.rc)
	if retryable(ctx, r1) {
		r0, r1 = ServerInfo(dctx, p.rc)
	}
	return r0, overran(ctx, r1)
}

// ServerInfos is this package's ServerInfos, through the port.
func (p *Port) ServerInfos(ctx context.Context) ([]Server, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ServerInfos(dctx, p.rc)
	if retryable(ctx, r1) {
		r0, r1 = ServerInfos(dctx, p.rc)
	}
	return r0, overran(ctx, r1)
}

// DeleteEach is this package's DeleteEach, through the port.
func (p *Port) DeleteEach(ctx context.Context, keys ...string) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := DeleteEach(dctx, p.rc, keys...)
	return overran(ctx, r0)
}

// Delete is this package's Delete, through the port.
func (p *Port) Delete(ctx context.Context, keys ...string) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Delete(dctx, p.rc, keys...)
	return r0, overran(ctx, r1)
}

// AddControl is this package's AddControl, through the port.
func (p *Port) AddControl(ctx context.Context, key string, notices []Control) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := AddControl(dctx, p.rc, key, notices)
	return overran(ctx, r0)
}

// ReadControl is this package's ReadControl, through the port.
func (p *Port) ReadControl(ctx context.Context, key string, after string, count int64, block time.Duration) ([]Control, string, int, error) {
	return ReadControl(ctx, p.rc, key, after, count, block)
}

// AddOnce is this package's AddOnce, through the port.
func (p *Port) AddOnce(ctx context.Context, stream string, once string, data []byte, cp Cap, window time.Duration) (string, bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1, r2 := AddOnce(dctx, p.rc, stream, once, data, cp, window)
	return r0, r1, overran(ctx, r2)
}

// AddDelayed is this package's AddDelayed, through the port.
func (p *Port) AddDelayed(ctx context.Context, key string, member string, at time.Time, delay time.Duration, max int64) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := AddDelayed(dctx, p.rc, key, member, at, delay, max)
	return r0, overran(ctx, r1)
}

// ScheduleRetry is this package's ScheduleRetry, through the port.
func (p *Port) ScheduleRetry(ctx context.Context, key string, id string, delay time.Duration) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ScheduleRetry(dctx, p.rc, key, id, delay)
	return r0, overran(ctx, r1)
}

// RetryDue is this package's RetryDue, through the port.
func (p *Port) RetryDue(ctx context.Context, key string, ids []string) ([]int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := RetryDue(dctx, p.rc, key, ids)
	if retryable(ctx, r1) {
		r0, r1 = RetryDue(dctx, p.rc, key, ids)
	}
	return r0, overran(ctx, r1)
}

// Due is this package's Due, through the port.
func (p *Port) Due(ctx context.Context, parts []DuePart, group string, consumer string, limit int64, claim []int64, cp Cap) []DueResult {
	dctx, done := detach(ctx)
	defer done()
	return Due(dctx, p.rc, parts, group, consumer, limit, claim, cp)
}

// Range is this package's Range, through the port.
func (p *Port) Range(ctx context.Context, key string, start string, end string, count int64, rev bool) ([]Entry, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Range(dctx, p.rc, key, start, end, count, rev)
	if retryable(ctx, r1) {
		r0, r1 = Range(dctx, p.rc, key, start, end, count, rev)
	}
	return r0, overran(ctx, r1)
}

// DeadLetters is this package's DeadLetters, through the port.
func (p *Port) DeadLetters(ctx context.Context, key string, start string, end string, count int64) ([]DeadLetter, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := DeadLetters(dctx, p.rc, key, start, end, count)
	if retryable(ctx, r1) {
		r0, r1 = DeadLetters(dctx, p.rc, key, start, end, count)
	}
	return r0, overran(ctx, r1)
}

// Replay is this package's Replay, through the port.
func (p *Port) Replay(ctx context.Context, stream string, dlq string, id string, data []byte) (string, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Replay(dctx, p.rc, stream, dlq, id, data)
	return r0, overran(ctx, r1)
}

// Purge is this package's Purge, through the port.
func (p *Port) Purge(ctx context.Context, key string) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Purge(dctx, p.rc, key)
	return r0, overran(ctx, r1)
}

// AddBatchDurable is this package's AddBatchDurable, through the port.
func (p *Port) AddBatchDurable(ctx context.Context, adds []Add, d Durability, out []Result) []Result {
	dctx, done := detach(ctx)
	defer done()
	return AddBatchDurable(dctx, p.rc, adds, d, out)
}

// LoadFunctions is this package's LoadFunctions, through the port.
func (p *Port) LoadFunctions(ctx context.Context) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := LoadFunctions(dctx, p.rc)
	return overran(ctx, r0)
}

// ListFunctions is this package's ListFunctions, through the port.
func (p *Port) ListFunctions(ctx context.Context) ([]Library, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ListFunctions(dctx, p.rc)
	if retryable(ctx, r1) {
		r0, r1 = ListFunctions(dctx, p.rc)
	}
	return r0, overran(ctx, r1)
}

// DeleteOldFunctions is this package's DeleteOldFunctions, through the port.
func (p *Port) DeleteOldFunctions(ctx context.Context) ([]string, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := DeleteOldFunctions(dctx, p.rc)
	return r0, overran(ctx, r1)
}

// Info is this package's Info, through the port.
func (p *Port) Info(ctx context.Context, key string, dlq string, sets ...string) (StreamInfo, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Info(dctx, p.rc, key, dlq, sets...)
	if retryable(ctx, r1) {
		r0, r1 = Info(dctx, p.rc, key, dlq, sets...)
	}
	return r0, overran(ctx, r1)
}

// Groups is this package's Groups, through the port.
func (p *Port) Groups(ctx context.Context, key string) ([]GroupInfo, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Groups(dctx, p.rc, key)
	if retryable(ctx, r1) {
		r0, r1 = Groups(dctx, p.rc, key)
	}
	return r0, overran(ctx, r1)
}

// GroupExists is this package's GroupExists, through the port.
func (p *Port) GroupExists(ctx context.Context, key string, group string) (bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := GroupExists(dctx, p.rc, key, group)
	if retryable(ctx, r1) {
		r0, r1 = GroupExists(dctx, p.rc, key, group)
	}
	return r0, overran(ctx, r1)
}

// GroupDetail is this package's GroupDetail, through the port.
func (p *Port) GroupDetail(ctx context.Context, key string, group string) (PendingTotals, []ConsumerInfo, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1, r2 := GroupDetail(dctx, p.rc, key, group)
	if retryable(ctx, r2) {
		r0, r1, r2 = GroupDetail(dctx, p.rc, key, group)
	}
	return r0, r1, overran(ctx, r2)
}

// ScanStreams is this package's ScanStreams, through the port.
func (p *Port) ScanStreams(ctx context.Context, pattern string) ([]string, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ScanStreams(dctx, p.rc, pattern)
	if retryable(ctx, r1) {
		r0, r1 = ScanStreams(dctx, p.rc, pattern)
	}
	return r0, overran(ctx, r1)
}

// Sizes is this package's Sizes, through the port.
func (p *Port) Sizes(ctx context.Context, keys []string) ([]StreamSize, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Sizes(dctx, p.rc, keys)
	if retryable(ctx, r1) {
		r0, r1 = Sizes(dctx, p.rc, keys)
	}
	return r0, overran(ctx, r1)
}

// Responders is this package's Responders, through the port.
func (p *Port) Responders(ctx context.Context, stream string, presence string, now time.Time, window time.Duration) (bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Responders(dctx, p.rc, stream, presence, now, window)
	if retryable(ctx, r1) {
		r0, r1 = Responders(dctx, p.rc, stream, presence, now, window)
	}
	return r0, overran(ctx, r1)
}

// Beats is this package's Beats, through the port.
func (p *Port) Beats(ctx context.Context, presence string) (map[string]time.Time, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Beats(dctx, p.rc, presence)
	if retryable(ctx, r1) {
		r0, r1 = Beats(dctx, p.rc, presence)
	}
	return r0, overran(ctx, r1)
}

// Beat is this package's Beat, through the port.
func (p *Port) Beat(ctx context.Context, presence string, member string, now time.Time, prune time.Duration) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := Beat(dctx, p.rc, presence, member, now, prune)
	return overran(ctx, r0)
}

// Join is this package's Join, through the port.
func (p *Port) Join(ctx context.Context, stream string, group string, consumer string, presence string, member string, now time.Time, prune time.Duration) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := Join(dctx, p.rc, stream, group, consumer, presence, member, now, prune)
	return overran(ctx, r0)
}

// Leave is this package's Leave, through the port.
func (p *Port) Leave(ctx context.Context, stream string, presence string, group string, consumer string, member string) (bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Leave(dctx, p.rc, stream, presence, group, consumer, member)
	return r0, overran(ctx, r1)
}

// Partitions is this package's Partitions, through the port.
func (p *Port) Partitions(ctx context.Context, meta string) (PartitionMeta, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Partitions(dctx, p.rc, meta)
	if retryable(ctx, r1) {
		r0, r1 = Partitions(dctx, p.rc, meta)
	}
	return r0, overran(ctx, r1)
}

// SetPartitions is this package's SetPartitions, through the port.
func (p *Port) SetPartitions(ctx context.Context, meta string, n int) (PartitionMeta, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := SetPartitions(dctx, p.rc, meta, n)
	return r0, overran(ctx, r1)
}

// SetScheduling is this package's SetScheduling, through the port.
func (p *Port) SetScheduling(ctx context.Context, meta string, s Scheduling) (PartitionMeta, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := SetScheduling(dctx, p.rc, meta, s)
	return r0, overran(ctx, r1)
}

// ForgetPartitions is this package's ForgetPartitions, through the port.
func (p *Port) ForgetPartitions(ctx context.Context, meta string, m PartitionMeta, drain int, grace time.Duration) (bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ForgetPartitions(dctx, p.rc, meta, m, drain, grace)
	return r0, overran(ctx, r1)
}

// Drained is this package's Drained, through the port.
func (p *Port) Drained(ctx context.Context, key string, dlq string, sets []string, groups []string) (bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Drained(dctx, p.rc, key, dlq, sets, groups)
	if retryable(ctx, r1) {
		r0, r1 = Drained(dctx, p.rc, key, dlq, sets, groups)
	}
	return r0, overran(ctx, r1)
}

// ForgetPartitionCount is this package's ForgetPartitionCount, through the port.
func (p *Port) ForgetPartitionCount(ctx context.Context, meta string) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := ForgetPartitionCount(dctx, p.rc, meta)
	return overran(ctx, r0)
}

// CreateReplyStream is this package's CreateReplyStream, through the port.
func (p *Port) CreateReplyStream(ctx context.Context, key string, control []byte, ttl time.Duration) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := CreateReplyStream(dctx, p.rc, key, control, ttl)
	return overran(ctx, r0)
}

// RefreshTTL is this package's RefreshTTL, through the port.
func (p *Port) RefreshTTL(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := RefreshTTL(dctx, p.rc, key, ttl)
	return r0, overran(ctx, r1)
}

// AddBatch is this package's AddBatch, through the port.
func (p *Port) AddBatch(ctx context.Context, adds []Add, acks []Ack, out []Result) []Result {
	dctx, done := detach(ctx)
	defer done()
	return AddBatch(dctx, p.rc, adds, acks, out)
}

// AddTied is this package's AddTied, through the port.
func (p *Port) AddTied(ctx context.Context, adds []Add, tied []Ack, acks []Ack, out []Result) []Result {
	dctx, done := detach(ctx)
	defer done()
	return AddTied(dctx, p.rc, adds, tied, acks, out)
}

// Trim is this package's Trim, through the port.
func (p *Port) Trim(ctx context.Context, key string, n int64, age time.Duration) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Trim(dctx, p.rc, key, n, age)
	return r0, overran(ctx, r1)
}

// CreateGroup is this package's CreateGroup, through the port.
func (p *Port) CreateGroup(ctx context.Context, key string, group string, start string) error {
	dctx, done := detach(ctx)
	defer done()
	r0 := CreateGroup(dctx, p.rc, key, group, start)
	return overran(ctx, r0)
}

// ReadGroup is this package's ReadGroup, through the port.
func (p *Port) ReadGroup(ctx context.Context, key string, group string, consumer string, id string, count int64, block time.Duration) ([]Entry, error) {
	return ReadGroup(ctx, p.rc, key, group, consumer, id, count, block)
}

// ReadGroupAll is this package's ReadGroupAll, through the port.
func (p *Port) ReadGroupAll(ctx context.Context, keys []string, group string, consumer string, count int64, block time.Duration) ([][]Entry, error) {
	return ReadGroupAll(ctx, p.rc, keys, group, consumer, count, block)
}

// ReadGroupAllNow is this package's ReadGroupAllNow, through the port.
func (p *Port) ReadGroupAllNow(ctx context.Context, keys []string, group string, consumer string, count int64) ([][]Entry, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ReadGroupAllNow(dctx, p.rc, keys, group, consumer, count)
	return r0, overran(ctx, r1)
}

// ReadGroupNow is this package's ReadGroupNow, through the port.
func (p *Port) ReadGroupNow(ctx context.Context, key string, group string, consumer string, count int64) ([]Entry, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := ReadGroupNow(dctx, p.rc, key, group, consumer, count)
	return r0, overran(ctx, r1)
}

// Read is this package's Read, through the port.
func (p *Port) Read(ctx context.Context, key string, after string, count int64, block time.Duration) ([]Entry, error) {
	return Read(ctx, p.rc, key, after, count, block)
}

// MeasureBacklog is this package's MeasureBacklog, through the port.
func (p *Port) MeasureBacklog(ctx context.Context, key string) (Backlog, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := MeasureBacklog(dctx, p.rc, key)
	if retryable(ctx, r1) {
		r0, r1 = MeasureBacklog(dctx, p.rc, key)
	}
	return r0, overran(ctx, r1)
}

// RepairLag is this package's RepairLag, through the port.
func (p *Port) RepairLag(ctx context.Context, key string, group string) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := RepairLag(dctx, p.rc, key, group)
	return r0, overran(ctx, r1)
}

// GetLimits is this package's GetLimits, through the port.
func (p *Port) GetLimits(ctx context.Context, meta string) (Limits, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := GetLimits(dctx, p.rc, meta)
	if retryable(ctx, r1) {
		r0, r1 = GetLimits(dctx, p.rc, meta)
	}
	return r0, overran(ctx, r1)
}

// SetLimits is this package's SetLimits, through the port.
func (p *Port) SetLimits(ctx context.Context, meta string, l Limits) error {
	dctx, done := detach(ctx)
	defer done()
	return overran(ctx, SetLimits(dctx, p.rc, meta, l))
}

// ClearLimits is this package's ClearLimits, through the port.
func (p *Port) ClearLimits(ctx context.Context, meta string) error {
	dctx, done := detach(ctx)
	defer done()
	return overran(ctx, ClearLimits(dctx, p.rc, meta))
}

// TakePermits is this package's TakePermits, through the port.
func (p *Port) TakePermits(ctx context.Context, k LimitKeys, consumer string, want int64, leaseTTL time.Duration, avgCost int64, release int64) (Permit, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := TakePermits(dctx, p.rc, k, consumer, want, leaseTTL, avgCost, release)
	return r0, overran(ctx, r1)
}

// PermitsDone is this package's PermitsDone, through the port.
func (p *Port) PermitsDone(ctx context.Context, k LimitKeys, consumer string, release int64, unused int64, tokens int64, leaseTTL time.Duration) (int64, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := PermitsDone(dctx, p.rc, k, consumer, release, unused, tokens, leaseTTL)
	return r0, overran(ctx, r1)
}

// Pause is this package's Pause, through the port.
func (p *Port) Pause(ctx context.Context, meta string, ctl string, d time.Duration) (time.Time, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := Pause(dctx, p.rc, meta, ctl, d)
	return r0, overran(ctx, r1)
}

// Resume is this package's Resume, through the port.
func (p *Port) Resume(ctx context.Context, meta string, ctl string) error {
	dctx, done := detach(ctx)
	defer done()
	return overran(ctx, Resume(dctx, p.rc, meta, ctl))
}

// WaitNew is this package's WaitNew, through the port (a blocking read:
// it keeps its ctx, whose deadline is the read watchdog's).
func (p *Port) WaitNew(ctx context.Context, keys []string, block time.Duration) (bool, error) {
	return WaitNew(ctx, p.rc, keys, block)
}

// StartCost is this package's StartCost, through the port.
func (p *Port) StartCost(ctx context.Context, k LimitKeys, cost int64) (time.Duration, error) {
	dctx, done := detach(ctx)
	defer done()
	r0, r1 := StartCost(dctx, p.rc, k, cost)
	return r0, overran(ctx, r1)
}
