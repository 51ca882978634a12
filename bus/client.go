package bus

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/redis/rueidis"

	"github.com/egos/mycelium/internal/redisx"
)

// Client is a connection to the Redis that carries the bus: it owns a rueidis
// client tuned for this workload (see Config) and the key builders of
// Config.Prefix. Producers and consumers share one Client. It is safe for
// concurrent use; Close it after the producers and consumers that use it.
type Client struct {
	rc   rueidis.Client
	keys Keys
	cfg  Config
	user string // the ACL user it authenticates as; "" for the default user
}

// Connect builds a Client from cfg and checks that Redis answers PING within
// ctx. The caller owns the Client and must Close it.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	opt, err := cfg.clientOption()
	if err != nil {
		return nil, err
	}
	rc, err := rueidis.NewClient(opt) // dials one connection
	if err != nil {
		return nil, fmt.Errorf("bus: connect to %s: %w", cfg.Redacted(), connErr(err))
	}
	if err := redisx.Ping(ctx, rc); err != nil {
		rc.Close()
		return nil, fmt.Errorf("bus: connect to %s: %w%s", cfg.Redacted(), connErr(err), tlsHint(opt, err))
	}
	if cfg.Cluster && rc.Mode() != rueidis.ClientModeCluster {
		rc.Close()
		return nil, fmt.Errorf("bus: connect to %s: %w: Cluster is set but the server is not a Redis Cluster node (cluster_enabled:0)", cfg.Redacted(), ErrInvalidConfig)
	}
	if rc.Mode() == rueidis.ClientModeStandalone && opt.Sentinel.MasterSet == "" && redisx.ClusterEnabled(ctx, rc) {
		// One host given, and it is a cluster node: a standalone client
		// would send every other slot's command there and get MOVED.
		rc.Close()
		cfg.Cluster = true
		return Connect(ctx, cfg)
	}
	return &Client{rc: rc, keys: Keys{Prefix: cfg.Prefix}, cfg: cfg, user: userOf(opt.Username)}, nil
}

// userOf is the ACL user a client authenticates as: "" for the default
// user.
func userOf(name string) string {
	if name == "default" {
		return ""
	}
	return name
}

// User returns the ACL user the client authenticates as (from the URL or
// Config.Username), or "" for the default user. A producer names its reply
// streams after it (producer.Config.Owner).
func (c *Client) User() string { return c.user }

// Mode says how the client reaches Redis: "standalone", "cluster" (Redis
// Cluster: commands routed by hash slot) or "sentinel" (the master of a
// Sentinel-watched set).
func (c *Client) Mode() string { return string(c.rc.Mode()) }

// Node connects to one node at addr ("host:port") with the client's
// credentials and TLS, as a standalone client: for operator actions aimed
// at a given node of a cluster (a replica's CLUSTER FAILOVER, say). The
// caller closes it.
func (c *Client) Node(ctx context.Context, addr string) (*Client, error) {
	cfg := c.cfg
	cfg.Cluster, cfg.MasterSet = false, ""
	opt, err := cfg.clientOption()
	if err != nil {
		return nil, err
	}
	opt.InitAddress = []string{addr}
	opt.ForceSingleClient = true
	opt.Sentinel = rueidis.SentinelOption{}
	rc, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("bus: connect to node %s: %w", addr, connErr(err))
	}
	if err := redisx.Ping(ctx, rc); err != nil {
		rc.Close()
		return nil, fmt.Errorf("bus: connect to node %s: %w", addr, connErr(err))
	}
	return &Client{rc: rc, keys: c.keys, cfg: cfg, user: c.user}, nil
}

// tlsHint says what a TLS client that got no answer is most likely facing:
// a plaintext server, which waits for the end of a "command" that never
// comes (the TLS hello), so the dial times out with nothing more said.
func tlsHint(opt rueidis.ClientOption, err error) string {
	var ne net.Error
	if opt.TLSConfig != nil && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		return " (no TLS handshake: is the server speaking TLS on that port? a plaintext Redis wants a redis:// URL)"
	}
	return ""
}

// connErr classifies a failure to connect: wrong credentials (WRONGPASS,
// NOAUTH, NOPERM, from the server or a sentinel) wrap ErrPermission, an
// unreachable server ErrUnavailable.
func connErr(err error) error {
	return redisx.Unavailable(redisx.Permission(err, "authenticating"))
}

// Keys returns the key builders of the client's prefix.
func (c *Client) Keys() Keys { return c.keys }

// Redacted returns the Redis URL the client was built from, with any
// password replaced, for logs.
func (c *Client) Redacted() string { return c.cfg.Redacted() }

// Config returns the configuration c was made with (for example to connect
// again as another user). It holds the password, if any: keep it out of
// logs (Redacted is for those).
func (c *Client) Config() Config { return c.cfg }

// Ping checks that Redis answers within ctx; a connection failure wraps
// ErrUnavailable.
func (c *Client) Ping(ctx context.Context) error {
	return redisx.Unavailable(redisx.Ping(ctx, c.rc))
}

// Redis returns the underlying rueidis client: the escape hatch for commands
// the bus does not offer (and for tests). The bus's own traffic does not
// depend on anything done through it; do not Close it, Close the Client.
func (c *Client) Redis() rueidis.Client { return c.rc }

// Close closes the connections. Close producers and consumers first.
func (c *Client) Close() {
	redisx.ForgetClient(c.rc)
	c.rc.Close()
}
