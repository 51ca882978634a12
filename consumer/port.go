package consumer

import (
	"context"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// port is what the consumer asks of Redis: the methods of redisx.Port it
// uses. The port owns the rules (no caller deadline reaches the client,
// errors classified, idempotent reads tried again once); every component
// reaches Redis through env.port, never through bus.Client.Redis().
type port interface {
	// Replies, acknowledgements, dead letters, cache settles, notices.
	AddBatch(ctx context.Context, adds []redisx.Add, acks []redisx.Ack, out []redisx.Result) []redisx.Result
	AddTied(ctx context.Context, adds []redisx.Add, tied []redisx.Ack, acks []redisx.Ack, out []redisx.Result) []redisx.Result
	SettleAndAdd(ctx context.Context, s []redisx.Settle, adds []redisx.Add, tied []redisx.Ack, acks []redisx.Ack, out []redisx.Result, sout []redisx.SettleResult) ([]redisx.Result, []redisx.SettleResult)
	DeleteStale(ctx context.Context, s []redisx.Settle, res []redisx.SettleResult) error
	AddControl(ctx context.Context, key string, notices []redisx.Control) error
	ScheduleRetry(ctx context.Context, key string, id string, delay time.Duration) (int64, error)
	PendingOf(ctx context.Context, key string, group string, start string, end string, count int64, consumer string) ([]redisx.Pending, error)
	Uncount(ctx context.Context, key string, group string, consumer string, ps []redisx.Pending) error

	// Reading, claiming and keeping entries.
	ReadGroup(ctx context.Context, key string, group string, consumer string, id string, count int64, block time.Duration) ([]redisx.Entry, error)
	ReadGroupAll(ctx context.Context, keys []string, group string, consumer string, count int64, block time.Duration) ([][]redisx.Entry, error)
	ReadGroupNow(ctx context.Context, key string, group string, consumer string, count int64) ([]redisx.Entry, error)
	ReadGroupAllNow(ctx context.Context, keys []string, group string, consumer string, count int64) ([][]redisx.Entry, error)
	ReadControl(ctx context.Context, key string, after string, count int64, block time.Duration) ([]redisx.Control, string, int, error)
	AutoClaim(ctx context.Context, key string, group string, consumer string, minIdle time.Duration, start string, count int64) (string, []redisx.Entry, []string, error)
	Deliveries(ctx context.Context, key string, group string, consumer string, ids []string) ([]int64, error)
	RetryDue(ctx context.Context, key string, ids []string) ([]int64, error)
	Touch(ctx context.Context, key string, group string, consumer string, minIdle time.Duration, ids ...string) error
	Due(ctx context.Context, parts []redisx.DuePart, group string, consumer string, limit int64, claim []int64, cp redisx.Cap) []redisx.DueResult

	// The group and the presence set.
	CreateGroup(ctx context.Context, key string, group string, start string) error
	Join(ctx context.Context, stream string, group string, consumer string, presence string, member string, now time.Time, prune time.Duration) error
	Beat(ctx context.Context, presence string, member string, now time.Time, prune time.Duration) error
	Leave(ctx context.Context, stream string, presence string, group string, consumer string, member string) (bool, error)
	GroupExists(ctx context.Context, key string, group string) (bool, error)
	Groups(ctx context.Context, key string) ([]redisx.GroupInfo, error)
	Consumers(ctx context.Context, key string, group string) ([]redisx.ConsumerInfo, error)
	DeleteConsumer(ctx context.Context, key string, group string, consumer string) (int64, error)

	// Partitions and retention.
	Partitions(ctx context.Context, meta string) (redisx.PartitionMeta, error)
	ForgetPartitions(ctx context.Context, meta string, m redisx.PartitionMeta, drain int, grace time.Duration) (bool, error)
	Drained(ctx context.Context, key string, dlq string, sets []string, groups []string) (bool, error)
	DeleteEach(ctx context.Context, keys ...string) error
	Trim(ctx context.Context, key string, n int64, age time.Duration) (int64, error)
	RepairLag(ctx context.Context, key string, group string) (int64, error)

	// Fleet-wide limits (limiter.go).
	TakePermits(ctx context.Context, k redisx.LimitKeys, consumer string, want int64, leaseTTL time.Duration, avgCost int64, release int64) (redisx.Permit, error)
	PermitsDone(ctx context.Context, k redisx.LimitKeys, consumer string, release int64, unused int64, tokens int64, leaseTTL time.Duration) (int64, error)
	Pause(ctx context.Context, meta string, ctl string, d time.Duration) (time.Time, error)
	WaitNew(ctx context.Context, keys []string, block time.Duration) (bool, error)
	StartCost(ctx context.Context, k redisx.LimitKeys, cost int64) (time.Duration, error)
	GetLimits(ctx context.Context, meta string) (redisx.Limits, error)
}

var _ port = (*redisx.Port)(nil)
