package bus

import (
	"context"
	"fmt"

	"github.com/redis/rueidis"
)

// Connect builds a rueidis client from cfg and checks that Redis answers
// PING within ctx. The caller owns the client and must Close it.
func Connect(ctx context.Context, cfg Config) (rueidis.Client, error) {
	opt, err := cfg.ClientOption()
	if err != nil {
		return nil, err
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("bus: connect to %s: %w", cfg.Redacted(), err)
	}
	if err := Ping(ctx, c); err != nil {
		c.Close()
		return nil, fmt.Errorf("bus: connect to %s: %w", cfg.Redacted(), err)
	}
	return c, nil
}

// Ping checks that Redis answers.
func Ping(ctx context.Context, c rueidis.Client) error {
	return c.Do(ctx, c.B().Ping().Build()).Error()
}
