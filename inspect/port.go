package inspect

import (
	"context"
	"time"

	"github.com/egos/mycelium/internal/redisx"
)

// port is what an Inspector asks of Redis: the methods of redisx.Port it
// uses (the port owns the rules: no caller deadline reaches the client,
// errors classified, idempotent reads tried again once).
type port interface {
	// Topics, partitions, groups and workers.
	ScanStreams(ctx context.Context, pattern string) ([]string, error)
	Sizes(ctx context.Context, keys []string) ([]redisx.StreamSize, error)
	Info(ctx context.Context, key string, dlq string, sets ...string) (redisx.StreamInfo, error)
	GroupDetail(ctx context.Context, key string, group string) (redisx.PendingTotals, []redisx.ConsumerInfo, error)
	PendingOf(ctx context.Context, key string, group string, start string, end string, count int64, consumer string) ([]redisx.Pending, error)
	Beats(ctx context.Context, presence string) (map[string]time.Time, error)
	Partitions(ctx context.Context, meta string) (redisx.PartitionMeta, error)
	SetPartitions(ctx context.Context, meta string, n int) (redisx.PartitionMeta, error)
	SetScheduling(ctx context.Context, meta string, s redisx.Scheduling) (redisx.PartitionMeta, error)
	ForgetPartitionCount(ctx context.Context, meta string) error
	Delete(ctx context.Context, keys ...string) (int64, error)
	Trim(ctx context.Context, key string, n int64, age time.Duration) (int64, error)
	Range(ctx context.Context, key string, start string, end string, count int64, rev bool) ([]redisx.Entry, error)

	// Fleet-wide limits and pauses.
	GetLimits(ctx context.Context, meta string) (redisx.Limits, error)
	SetLimits(ctx context.Context, meta string, l redisx.Limits) error
	ClearLimits(ctx context.Context, meta string) error
	Pause(ctx context.Context, meta string, ctl string, d time.Duration) (time.Time, error)
	Resume(ctx context.Context, meta string, ctl string) error

	// Dead letters.
	DeadLetters(ctx context.Context, key string, start string, end string, count int64) ([]redisx.DeadLetter, error)
	Replay(ctx context.Context, stream string, dlq string, id string, data []byte) (string, error)
	Purge(ctx context.Context, key string) (int64, error)

	// The response cache.
	CacheMeta(ctx context.Context, meta string) (uint64, uint64, error)
	BumpGeneration(ctx context.Context, meta string) (uint64, error)
	DropEntry(ctx context.Context, meta string, entry string) (bool, error)
	KeyStats(ctx context.Context, pattern string, limit int) (int, int64, bool, error)

	// Servers, cluster nodes and the bus's functions.
	ServerInfo(ctx context.Context) (redisx.Server, error)
	ServerInfos(ctx context.Context) ([]redisx.Server, error)
	ClusterNodes(ctx context.Context) ([]redisx.ClusterNode, error)
	KeySlot(ctx context.Context, key string) (int, error)
	LoadFunctions(ctx context.Context) error
	ListFunctions(ctx context.Context) ([]redisx.Library, error)
	DeleteOldFunctions(ctx context.Context) ([]string, error)
}

var _ port = (*redisx.Port)(nil)
