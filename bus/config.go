package bus

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Defaults for Config fields left at their zero value.
const (
	DefaultURL              = "redis://127.0.0.1:6379"
	DefaultPrefix           = "myc"
	DefaultDialTimeout      = 2 * time.Second
	DefaultWriteTimeout     = 5 * time.Second
	DefaultConnBuffer       = 128 << 10
	DefaultBlockingPoolSize = 64
	// DefaultMaxFlushDelay is none: the bus gathers concurrent writes
	// itself, so a delay only adds a timer (docs/performance.md).
	DefaultMaxFlushDelay = 0
)

// Config describes how to reach Redis. The zero value connects to
// DefaultURL. Config is plain data: copy it freely.
type Config struct {
	// URL is redis://[user:pass@]host:port[/db] or rediss:// for TLS.
	// Empty means DefaultURL. Several hosts, comma-separated
	// (redis://h1:p1,h2:p2,h3:p3), are seed nodes of a Redis Cluster (the
	// cluster client learns every node from them); with master_set=NAME in
	// the query (or MasterSet set) they are Redis Sentinels watching that
	// master set instead (docs/cluster.md).
	URL string
	// Cluster makes a URL of one host a Redis Cluster seed: the cluster
	// client is built, and connecting fails if the server is not a cluster
	// node. A URL of several hosts implies it; so does a single host that
	// turns out to be a cluster node (Connect asks it: cluster_enabled).
	Cluster bool
	// MasterSet names the master set the URL's hosts, Redis Sentinels,
	// watch: the client follows that master across failovers. Empty means
	// the URL's master_set query value, if any.
	MasterSet string
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// (which have their own users); empty means none. Username and Password
	// are the master's.
	SentinelUsername, SentinelPassword string
	// Username and Password, when set, replace the URL's (so the password
	// need not be in a URL, argv or a log line: read it from a file or the
	// environment). Empty means the URL's.
	Username, Password string
	// Prefix starts every key of the bus (see Keys); producers and
	// consumers that talk to each other must share it. Empty means
	// DefaultPrefix.
	Prefix string
	// ClientName is sent with CLIENT SETNAME so operators can tell
	// connections apart in CLIENT LIST. Empty means none, unless the URL
	// carries client_name.
	ClientName string
	// DialTimeout bounds establishing one connection. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// WriteTimeout bounds waiting for a reply to a non-blocking command on a
	// connection and drives hung-server detection. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// ConnBuffer is the read and the write buffer size of every connection,
	// including each dedicated connection that a blocking read holds. Zero
	// means DefaultConnBuffer (the rueidis default of 512 KiB each way costs
	// 1 MiB per blocked reader).
	ConnBuffer int
	// BlockingPoolSize bounds the connections used by concurrently blocked
	// reads (one per consumer read loop and per producer reply reader). Zero
	// means DefaultBlockingPoolSize.
	BlockingPoolSize int
	// MaxFlushDelay lets the auto-pipeline wait up to this long after a
	// flush, while other callers wait on the same connection, to batch more
	// commands into one write. Zero means DefaultMaxFlushDelay (none);
	// negative disables it too.
	MaxFlushDelay time.Duration
	// PipelineConns is the number of auto-pipelined connections per node,
	// rounded up to a power of two. Zero means the rueidis default (2 on 2
	// cores, 4 on 4 or more).
	PipelineConns int
	// TLS, when non-nil, is used for rediss:// URLs instead of the default
	// (TLS 1.2+, the system's CAs, server name from the URL): set RootCAs
	// for your own CA, Certificates for mutual TLS, ServerName to check
	// another name. Its MinVersion is raised to TLS 1.2; its ServerName,
	// when empty, is the URL's host. A redis:// URL with TLS set is an
	// error.
	TLS *tls.Config
}

// Validate reports the first problem with c, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	_, err := c.clientOption()
	return err
}

// clientOption translates c into rueidis client options: standalone client,
// client-side caching off, buffers and blocking pool sized from c.
func (c Config) clientOption() (rueidis.ClientOption, error) {
	if err := c.checkLimits(); err != nil {
		return rueidis.ClientOption{}, err
	}
	opt, shown, err := c.parseURL()
	if err != nil {
		return rueidis.ClientOption{}, err
	}
	if c.Username != "" {
		opt.Username = c.Username
	}
	if c.Password != "" {
		opt.Password = c.Password
	}
	if err := c.topology(&opt, shown); err != nil {
		return rueidis.ClientOption{}, err
	}
	c.tune(&opt)
	return opt, nil
}

// parseURL checks c.URL (or DefaultURL) and parses it into rueidis
// options; shown is the URL as errors show it (without its password).
func (c Config) parseURL() (opt rueidis.ClientOption, shown string, err error) {
	raw := cmp.Or(c.URL, DefaultURL)
	shown = redactURL(raw) // errors never carry the password
	if _, rest, ok := strings.Cut(raw, "://"); ok {
		if at, cut := strings.LastIndex(rest, "@"), strings.IndexAny(rest, "/?#"); at >= 0 && cut >= 0 && cut < at && strings.Contains(rest[:at], ":") {
			return opt, shown, fmt.Errorf("%w: redis URL %q: its password holds '/', '?', '#' or '@' unencoded: percent-encode it (%%2F, %%3F, %%23, %%40), or pass it with --redis-password-file or MYCELIUM_REDIS_PASSWORD", ErrInvalidConfig, shown)
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return opt, shown, fmt.Errorf("%w: redis URL %q: %w", ErrInvalidConfig, shown, secretSafe(raw, unwrapURLError(err)))
	}
	if why := c.checkURL(u); why != "" {
		return opt, shown, fmt.Errorf("%w: redis URL %q: %s", ErrInvalidConfig, shown, why)
	}
	if u.Path == "/" { // redis://host:port/ means database 0, as for other clients
		u.Path = ""
	}
	// Several comma-separated hosts: seeds (or sentinels). rueidis parses
	// the first; the others join its InitAddress.
	hosts := strings.Split(u.Host, ",")
	for i, h := range hosts {
		if h == "" {
			return opt, shown, fmt.Errorf("%w: redis URL %q: empty host in the host list", ErrInvalidConfig, shown)
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			if len(hosts) > 1 || strings.Count(h, ":") > 0 {
				return opt, shown, fmt.Errorf("%w: redis URL %q: host %d (%q): want host:port", ErrInvalidConfig, shown, i+1, h)
			}
		}
	}
	u.Host = hosts[0]
	raw = u.String()
	if opt, err = rueidis.ParseURL(raw); err != nil {
		return opt, shown, fmt.Errorf("%w: redis URL %q: %w", ErrInvalidConfig, shown, secretSafe(raw, err))
	}
	opt.InitAddress = append(opt.InitAddress, hosts[1:]...)
	return opt, shown, nil
}

// checkURL returns what is wrong with u, or "".
func (c Config) checkURL(u *url.URL) string {
	switch {
	case u.Scheme != "redis" && u.Scheme != "rediss":
		return "scheme must be redis:// or rediss://"
	case u.Host == "":
		return "missing host"
	case u.Query().Has("skip_verify"):
		return "skip_verify is not accepted in a URL: set Config.TLS.InsecureSkipVerify (bus-worker --tls-insecure-skip-verify) if you must"
	case c.TLS != nil && u.Scheme != "rediss":
		return "TLS settings need a rediss:// URL"
	}
	if _, port, err := net.SplitHostPort(u.Host); err == nil && port == "" {
		return "empty port"
	}
	return ""
}

// checkLimits checks c's durations, sizes and prefix.
func (c Config) checkLimits() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DialTimeout", c.DialTimeout}, {"WriteTimeout", c.WriteTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%w: %s must not be negative, got %v", ErrInvalidConfig, d.name, d.v)
		}
	}
	if c.Prefix != "" {
		if err := ValidateName("prefix", c.Prefix); err != nil {
			return err
		}
	}
	if c.ConnBuffer < 0 || c.BlockingPoolSize < 0 || c.PipelineConns < 0 {
		return fmt.Errorf("%w: ConnBuffer, BlockingPoolSize and PipelineConns must not be negative", ErrInvalidConfig)
	}
	return nil
}

// topology sets how the client finds its servers: Sentinel's master set,
// a cluster's seeds, or one standalone server.
func (c Config) topology(opt *rueidis.ClientOption, shown string) error {
	if c.MasterSet != "" {
		opt.Sentinel.MasterSet = c.MasterSet
	}
	switch {
	case opt.Sentinel.MasterSet != "":
		if c.Cluster {
			return fmt.Errorf("%w: redis URL %q: a master set (Sentinel) and Cluster exclude each other", ErrInvalidConfig, shown)
		}
		if err := ValidateName("master set", opt.Sentinel.MasterSet); err != nil {
			return err
		}
		opt.Sentinel.Username, opt.Sentinel.Password = c.SentinelUsername, c.SentinelPassword
		// The sentinels tell the client of a failover by PUB/SUB; the
		// periodic check catches a missed message (rueidis's advice).
		opt.Sentinel.TopologyRefreshInterval = 2 * time.Second
	case c.Cluster || len(opt.InitAddress) > 1:
		if opt.SelectDB != 0 {
			return fmt.Errorf("%w: redis URL %q: Redis Cluster has database 0 only", ErrInvalidConfig, shown)
		}
		// Topology: refreshed lazily on MOVED/ASK and connection errors,
		// and every few seconds (a failover elsewhere shows up without an
		// error on this client). Redirections are bounded by the ctx.
		opt.ClusterOption.ShardsRefreshInterval = 5 * time.Second
	default:
		opt.ForceSingleClient = true // standalone; never let CLUSTER SLOTS pick the client
	}
	return nil
}

// tune sets the connection's timeouts, buffers, pools and TLS from c.
func (c Config) tune(opt *rueidis.ClientOption) {
	opt.DisableCache = true // no DoCache use; also required by miniredis
	opt.ClientSetInfo = rueidis.DisableClientSetInfo
	if c.ClientName != "" {
		opt.ClientName = c.ClientName
	}
	opt.Dialer.Timeout = cmp.Or(c.DialTimeout, DefaultDialTimeout)
	opt.Dialer.KeepAlive = time.Second
	opt.ConnWriteTimeout = cmp.Or(c.WriteTimeout, DefaultWriteTimeout)
	opt.ReadBufferEachConn = cmp.Or(c.ConnBuffer, DefaultConnBuffer)
	opt.WriteBufferEachConn = opt.ReadBufferEachConn
	opt.BlockingPoolSize = cmp.Or(c.BlockingPoolSize, DefaultBlockingPoolSize)
	opt.BlockingPoolCleanup = time.Minute
	opt.BlockingPoolMinSize = 4
	opt.MaxFlushDelay = max(0, cmp.Or(c.MaxFlushDelay, DefaultMaxFlushDelay))
	switch {
	case c.PipelineConns == 1:
		opt.PipelineMultiplex = -1
	case c.PipelineConns > 1:
		opt.PipelineMultiplex = bits.Len(uint(c.PipelineConns - 1))
	}
	if c.TLS != nil && opt.TLSConfig != nil {
		tc := c.TLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName = opt.TLSConfig.ServerName // the URL's host
		}
		tc.MinVersion = max(tc.MinVersion, tls.VersionTLS12)
		opt.TLSConfig = tc
	}
	if opt.Sentinel.MasterSet != "" {
		opt.Sentinel.Dialer = opt.Dialer
		opt.Sentinel.TLSConfig = opt.TLSConfig
		opt.Sentinel.ClientName = opt.ClientName
	}
}

// Redacted returns the URL with any password replaced, for logs.
func (c Config) Redacted() string {
	raw := c.URL
	if raw == "" {
		raw = DefaultURL
	}
	return redactURL(raw)
}

// redactURL returns raw with the password of its userinfo replaced by
// xxxxx, whether or not raw parses: a malformed URL's error must not print
// it either. The userinfo is taken to run to the last "@" of the whole URL,
// not the first "/", "?" or "#" as a URL parser reads it: a password holding
// one of those unencoded would otherwise show (an "@" in a query, rare in
// a Redis URL, only hides more than it must).
func redactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		scheme, rest = "", raw
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	user, _, hasPass := strings.Cut(rest[:at], ":")
	if !hasPass {
		return raw
	}
	out := user + ":xxxxx" + rest[at:]
	if ok {
		out = scheme + "://" + out
	}
	return out
}

// secretSafe returns err, or a generic error when raw holds a password and
// err's text might quote part of it (a bad escape in the password).
func secretSafe(raw string, err error) error {
	if redactURL(raw) == raw {
		return err
	}
	return errors.New("malformed URL (details not shown: it holds a password)")
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
