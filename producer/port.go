package producer

import (
	"context"
	"time"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/internal/redisx"
)

// port is what the producer asks of Redis: the methods of redisx.Port it
// uses. The port owns the rules (no caller deadline reaches the client,
// errors classified, idempotent reads tried again once); every component
// reaches Redis through it, never through bus.Client.Redis().
type port interface {
	// Requests, events and the cache's round trip.
	AddBatch(ctx context.Context, adds []redisx.Add, acks []redisx.Ack, out []redisx.Result) []redisx.Result
	AddBatchDurable(ctx context.Context, adds []redisx.Add, d redisx.Durability, out []redisx.Result) []redisx.Result
	AddDelayed(ctx context.Context, key string, member string, at time.Time, delay time.Duration, max int64) (int64, error)
	AddOnce(ctx context.Context, stream string, once string, data []byte, cp redisx.Cap, window time.Duration) (string, bool, error)
	Begin(ctx context.Context, a *redisx.BeginArgs) (redisx.BeginResult, error)
	CacheMeta(ctx context.Context, meta string) (uint64, uint64, error)

	// Cancel and wake notices.
	AddControl(ctx context.Context, key string, notices []redisx.Control) error

	// The reply stream.
	CreateReplyStream(ctx context.Context, key string, control []byte, ttl time.Duration) error
	RefreshTTL(ctx context.Context, key string, ttl time.Duration) (bool, error)
	Read(ctx context.Context, key string, after string, count int64, block time.Duration) ([]redisx.Entry, error)
	Delete(ctx context.Context, keys ...string) (int64, error)

	// Topics: who serves them, how many partitions.
	Responders(ctx context.Context, stream string, presence string, now time.Time, window time.Duration) (bool, error)
	Partitions(ctx context.Context, meta string) (redisx.PartitionMeta, error)

	// Backpressure: how much of a stream its groups have not finished.
	MeasureBacklog(ctx context.Context, key string) (redisx.Backlog, error)
}

var _ port = (*redisx.Port)(nil)

// client is what the port is built over (a *bus.Client).
type client = interface{ Redis() rueidis.Client }

// portOf returns the port over c's client, or the one build makes when a
// test set it (Producer.portFor, export_test.go: WithFaults).
func portOf(c client, build func(client) port) port {
	if build != nil {
		return build(c)
	}
	return redisx.PortOf(c)
}
