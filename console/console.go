package console

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/inspect"
)

// Defaults of Config's zero fields.
const (
	DefaultRefresh = 2 * time.Second
	DefaultHistory = 10 * time.Minute
)

// MinTokenLen is the shortest token Config accepts.
const MinTokenLen = 16

// maxHistory bounds Config.History (the samples are kept in memory).
const maxHistory = 24 * time.Hour

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// Config is a console's settings; the zero value is a read-only console
// mounted at the server's root.
type Config struct {
	// RootPath is the path the handler is mounted under, e.g. "/console"
	// (the server routes that path and everything under it to the
	// handler, without stripping it); "" or "/" for the root.
	RootPath string
	// Token, when set, allows changes (replay, purge, pause, resume) to
	// whoever signs in with it, or sends it as a bearer token. "" makes
	// the console read-only: every change is refused (403).
	Token string
	// Refresh is how often live pages update and Run samples the bus (0:
	// DefaultRefresh; at least 500 ms).
	Refresh time.Duration
	// History is how far back the charts go (0: DefaultHistory; at most
	// 24 h).
	History time.Duration
	// PrometheusURL, when set, is a Prometheus server that scrapes the
	// producers: the overview then shows the fleet's cache hit ratio over
	// the last 5 minutes (producers count hits in memory; Redis does not
	// hold them). Its credentials, if any, are never shown.
	PrometheusURL string
	// SessionTTL is how long a sign-in lasts (0: 12 hours).
	SessionTTL time.Duration
	// AllowedHosts are the host names (without port) browsers may reach
	// the console by, besides localhost and IP addresses: a request naming
	// another host is refused (421), so a page on another site cannot read
	// the console through DNS rebinding. Behind a proxy, list the name the
	// proxy serves it under.
	AllowedHosts []string
	// SecureCookies marks the session cookie Secure (sent over HTTPS only):
	// set it when a TLS proxy is in front (the console sets it by itself
	// when it serves TLS).
	SecureCookies bool
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	if c.RootPath != "" && (!strings.HasPrefix(c.RootPath, "/") || strings.ContainsAny(c.RootPath, "?#\"'<> ")) {
		return fmt.Errorf("console: %w: root path %q must start with / and be a plain path", bus.ErrInvalidConfig, c.RootPath)
	}
	if c.Refresh < 0 || (c.Refresh > 0 && c.Refresh < 500*time.Millisecond) {
		return fmt.Errorf("console: %w: refresh %v, want 0 or at least 500ms", bus.ErrInvalidConfig, c.Refresh)
	}
	if c.History < 0 || c.History > maxHistory {
		return fmt.Errorf("console: %w: history %v, want 0 to %v", bus.ErrInvalidConfig, c.History, maxHistory)
	}
	if c.SessionTTL < 0 {
		return fmt.Errorf("console: %w: session TTL %v is negative", bus.ErrInvalidConfig, c.SessionTTL)
	}
	if c.Token != "" && len(c.Token) < MinTokenLen {
		return fmt.Errorf("console: %w: the token must be at least %d characters", bus.ErrInvalidConfig, MinTokenLen)
	}
	for _, h := range c.AllowedHosts {
		if h == "" || strings.ContainsAny(h, ":/ ") {
			return fmt.Errorf("console: %w: allowed host %q: want a host name without port", bus.ErrInvalidConfig, h)
		}
	}
	if c.PrometheusURL != "" {
		u, err := url.Parse(c.PrometheusURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("console: %w: the Prometheus URL must be http(s)://host[:port]", bus.ErrInvalidConfig)
		}
	}
	return nil
}

// PayloadFormatter turns a message of topic into text for the dead-letter
// and find pages; ok false falls back to the console's own (JSON
// pretty-printed, text, or hex). It must not block for long.
type PayloadFormatter func(topic string, env *codec.Envelope) (text string, ok bool)

// Option sets a collaborator of a console.
type Option func(*Console)

// WithLogger logs every change made through the console (who, what, the
// result) and the errors of its reads; the default discards them.
func WithLogger(l zerolog.Logger) Option { return func(c *Console) { c.log = l } }

// WithPayloadFormatter shows payloads with f first.
func WithPayloadFormatter(f PayloadFormatter) Option { return func(c *Console) { c.format = f } }

// Console is the web console of one bus: an http.Handler, safe for
// concurrent use. Its pages read the bus when asked (at most once per
// Refresh, shared by every viewer); Run keeps sampling in the background so
// that the charts have history when a page opens.
type Console struct {
	cfg    Config
	client *bus.Client
	in     *inspect.Inspector
	log    zerolog.Logger
	format PayloadFormatter
	root   string // RootPath without its trailing slash ("" for /)
	mux    *http.ServeMux
	pages  map[string]*template.Template
	assets http.Handler
	key    []byte // signs sessions and CSRF tokens; new per process
	prom   *promClient

	reads singleflight.Group
	heavy chan struct{} // one walk of the keyspace or search at a time (Find, cache counts)
	mu    sync.Mutex
	hist  history
	last  *snapshot
	cpu   map[string]cpuReading // per node address
	// revoked are signed-out sessions (cookie values) until they expire.
	revoked map[string]time.Time
	promErr time.Time // when a failed Prometheus query was last logged
}

// New returns a console of the bus c reaches (it reads through an
// inspect.Inspector of c and never closes c). It does not start anything:
// mount it with http.Handle(cfg.RootPath+"/", console) and, for charts with
// history, call Run.
func New(c *bus.Client, cfg Config, opts ...Option) (*Console, error) {
	if c == nil {
		return nil, fmt.Errorf("console: %w: nil client", bus.ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.History == 0 {
		cfg.History = DefaultHistory
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	con := &Console{cfg: cfg, client: c, in: inspect.New(c), log: zerolog.Nop(),
		root: strings.TrimSuffix(cfg.RootPath, "/"), key: make([]byte, 32), cpu: map[string]cpuReading{}, revoked: map[string]time.Time{},
		heavy: make(chan struct{}, 1)}
	if _, err := rand.Read(con.key); err != nil {
		return nil, fmt.Errorf("console: session key: %w", err)
	}
	con.hist.max = int(cfg.History/cfg.Refresh) + 1
	for _, o := range opts {
		o(con)
	}
	if cfg.PrometheusURL != "" {
		con.prom = newPromClient(cfg.PrometheusURL)
	}
	var err error
	if con.pages, err = parseTemplates(); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(assetFS, "assets")
	if err != nil {
		return nil, fmt.Errorf("console: assets: %w", err)
	}
	con.assets = http.StripPrefix(con.root+"/assets/", assetServer(http.FileServerFS(sub)))
	con.routes()
	return con, nil
}

// Run samples the bus every Refresh until ctx ends, so the charts have the
// last History of figures when a page opens. It returns nil when ctx ends.
// Without Run, the console samples only while someone looks at it.
func (c *Console) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.Refresh)
	defer t.Stop()
	for {
		if _, err := c.current(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn().Err(err).Msg("console: sample")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// ServeHTTP serves the console's pages, its live events and its assets.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	if !c.hostAllowed(r.Host) {
		http.Error(w, "this console is not served under that host name (Config.AllowedHosts, --allowed-host)", http.StatusMisdirectedRequest)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// routes registers every page under the root path.
func (c *Console) routes() {
	m := http.NewServeMux()
	p := c.root
	m.HandleFunc("GET "+p+"/{$}", c.overviewPage)
	if p != "" {
		m.HandleFunc("GET "+p, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, p+"/", http.StatusMovedPermanently)
		})
	}
	m.HandleFunc("GET "+p+"/topics/{topic}", c.topicPage)
	m.HandleFunc("GET "+p+"/topics/{topic}/dead-letters", c.deadLettersPage)
	m.HandleFunc("GET "+p+"/topics/{topic}/dead-letters/purge", c.purgePage)
	m.HandleFunc("POST "+p+"/topics/{topic}/dead-letters/replay", c.mutation("replay", c.replay))
	m.HandleFunc("POST "+p+"/topics/{topic}/dead-letters/purge", c.mutation("purge", c.purge))
	m.HandleFunc("POST "+p+"/topics/{topic}/pause", c.mutation("pause", c.pause))
	m.HandleFunc("POST "+p+"/topics/{topic}/resume", c.mutation("resume", c.resume))
	m.HandleFunc("GET "+p+"/find", c.findPage)
	m.HandleFunc("GET "+p+"/workers", c.workersPage)
	m.HandleFunc("GET "+p+"/redis", c.redisPage)
	m.HandleFunc("GET "+p+"/sign-in", c.signInPage)
	m.HandleFunc("POST "+p+"/sign-in", c.signIn)
	m.HandleFunc("POST "+p+"/sign-out", c.signOut)
	m.HandleFunc("GET "+p+"/events", c.events)
	m.HandleFunc("GET "+p+"/api/overview", c.apiOverview)
	m.HandleFunc("GET "+p+"/api/history", c.apiHistory)
	m.Handle("GET "+p+"/assets/", c.assets)
	m.HandleFunc(p+"/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, http.StatusNotFound, errors.New("no such page"))
	})
	c.mux = m
}

// hostAllowed reports whether a request's Host may reach the console:
// localhost, an IP address (no DNS name to rebind), or an allowed host.
func (c *Console) hostAllowed(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") || net.ParseIP(strings.Trim(host, "[]")) != nil {
		return true
	}
	for _, a := range c.cfg.AllowedHosts {
		if strings.EqualFold(a, host) {
			return true
		}
	}
	return false
}

// begin takes the console's one slot for a heavy read (a search, a walk of
// the keyspace); false when another holds it.
func (c *Console) begin() bool {
	select {
	case c.heavy <- struct{}{}:
		return true
	default:
		return false
	}
}

func (c *Console) end() { <-c.heavy }

// errBusy answers a heavy read asked while another runs.
var errBusy = errors.New("another search or count is running: try again in a moment")

// assetServer serves the embedded assets with a cache lifetime (they change
// only with the binary).
func assetServer(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		h.ServeHTTP(w, r)
	})
}

// current returns the latest snapshot, reading the bus when the latest is
// older than Refresh; concurrent callers share one read.
func (c *Console) current(ctx context.Context) (*snapshot, error) {
	c.mu.Lock()
	s := c.last
	c.mu.Unlock()
	if s != nil && time.Since(s.Time) < c.cfg.Refresh*9/10 {
		return s, nil
	}
	v, err, _ := c.reads.Do("sample", func() (any, error) {
		// One read serves every waiting viewer: it must not end with the
		// first viewer's request.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return c.sample(rctx)
	})
	if err != nil {
		return nil, err
	}
	return v.(*snapshot), nil
}
