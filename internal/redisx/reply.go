package redisx

import (
	"context"
	"time"

	"github.com/redis/rueidis"
)

// CreateReplyStream creates a producer's reply stream with its first entry
// (control, an encoded control envelope) and gives it ttl, in one round
// trip. Consumers write replies with NOMKSTREAM, so once the stream expires
// (its producer is gone) late replies are not written at all.
func CreateReplyStream(ctx context.Context, c rueidis.Client, key string, control []byte, ttl time.Duration) error {
	add := Add{Key: key, Data: control}
	return doAll(ctx, c, add.cmd(c), c.B().Pexpire().Key(key).Milliseconds(ttl.Milliseconds()).Build())
}

// RefreshTTL gives key ttl again and reports false when the key does not
// exist (Redis lost it: a restart without persistence, FLUSHALL).
func RefreshTTL(ctx context.Context, c rueidis.Client, key string, ttl time.Duration) (bool, error) {
	return c.Do(ctx, c.B().Pexpire().Key(key).Milliseconds(ttl.Milliseconds()).Build()).AsBool()
}
