package console

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/codec"
	"github.com/egos/mycelium/inspect"
)

// pageNames are the templates under templates/, each rendered inside
// layout.html.
var pageNames = []string{"overview", "topic", "deadletters", "purge", "find", "workers", "redis", "signin", "error"}

// maxShown bounds how much of one payload a page shows.
const maxShown = 64 << 10

var funcs = template.FuncMap{
	"dur":   fmtDur,
	"bytes": fmtBytes,
	"rate": func(v float64) string {
		if v >= 100 {
			return strconv.FormatFloat(v, 'f', 0, 64)
		}
		return strconv.FormatFloat(v, 'f', 1, 64)
	},
	"pct":    func(v float64) string { return strconv.FormatFloat(100*v, 'f', 1, 64) + "%" },
	"pct100": func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) + "%" },
	"path":   pathEscape,
	"limits": fmtLimits,
	"utc":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"future": func(t time.Time) bool { return t.After(time.Now()) },
	"slots": func(rs [][2]int) string {
		parts := make([]string, len(rs))
		for k, r := range rs {
			parts[k] = strconv.Itoa(r[0]) + "–" + strconv.Itoa(r[1])
		}
		return strings.Join(parts, ", ")
	},
	"nanotime": func(ns int64) string {
		if ns == 0 {
			return "none"
		}
		return time.Unix(0, ns).UTC().Format("2006-01-02 15:04:05.000 UTC")
	},
}

func parseTemplates() (map[string]*template.Template, error) {
	out := make(map[string]*template.Template, len(pageNames))
	for _, n := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+n+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", n, err)
		}
		out[n] = t
	}
	return out, nil
}

// pageData is what every page's layout needs.
type pageData struct {
	Root, Title, Page string
	ReadOnly          bool // started without a token
	SignedIn          bool
	CSRF              string
	Redis             string // the redacted URL
	Refresh           int64  // ms
	Done              string // a change's result, after a redirect
	Path              string // this page's path and query, to come back after signing in
	D                 map[string]any
}

// render writes page name with data inside the layout.
func (c *Console) render(w http.ResponseWriter, r *http.Request, name, title string, data map[string]any) {
	p := pageData{Root: c.root, Title: title, Page: name, ReadOnly: c.cfg.Token == "", Redis: c.client.Redacted(),
		Refresh: c.cfg.Refresh.Milliseconds(), Done: c.done(r), Path: r.URL.RequestURI(), D: data}
	if s, ok := c.sessionOf(r); ok {
		p.SignedIn, p.CSRF = true, c.csrf(s)
	}
	var buf bytes.Buffer
	if err := c.pages[name].Execute(&buf, p); err != nil {
		c.log.Error().Err(err).Str("page", name).Msg("console: render")
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = buf.WriteTo(w)
}

// fail answers with status and an error page (JSON for a script that sent
// a bearer token).
func (c *Console) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	if status >= 500 {
		c.log.Warn().Err(err).Str("path", r.URL.Path).Msg("console: request failed")
	}
	if script(r) || strings.HasPrefix(r.URL.Path, c.root+"/api/") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": err.Error()})
		return
	}
	w.WriteHeader(status)
	c.render(w, r, "error", http.StatusText(status), map[string]any{"Status": status, "Err": shown(err),
		"SignIn": errors.Is(err, errSignIn)})
}

// shown is an error as a page says it: without the prefixes that name the
// packages it went through.
func shown(err error) string {
	s := err.Error()
	for {
		t := strings.TrimPrefix(strings.TrimPrefix(strings.TrimPrefix(s, "inspect: "), "console: "), bus.ErrInvalidConfig.Error()+": ")
		if t == s {
			return s
		}
		s = t
	}
}

// pathEscape escapes a topic for a URL path.
func pathEscape(s string) string { return url.PathEscape(s) }

func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "never"
	case d < time.Millisecond:
		return "0 ms"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + " ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s"
	case d < time.Hour:
		return fmt.Sprintf("%d min %02d s", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h %02d min", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	}
}

func fmtBytes(n int64) string {
	switch {
	case n < 1<<10:
		return strconv.FormatInt(n, 10) + " B"
	case n < 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	case n < 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	default:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 2, 64) + " GiB"
	}
}

// fmtLimits says a topic's limits in a few words ("" when none).
func fmtLimits(l inspect.Limits) string {
	var parts []string
	if l.Rate > 0 {
		parts = append(parts, "rate "+inspect.FormatRate(l.Rate, l.RateInterval))
	}
	if l.Tokens > 0 {
		parts = append(parts, "tokens "+inspect.FormatRate(l.Tokens, l.TokensInterval))
	}
	if l.Concurrency > 0 {
		parts = append(parts, "concurrency "+strconv.FormatInt(l.Concurrency, 10))
	}
	return strings.Join(parts, ", ")
}

// messageView is a message as a page shows it.
type messageView struct {
	Kind, ID, ReplyTo string
	Sent, Deadline    int64
	Headers           [][2]string
	// Format is how Body shows the payload: json (pretty-printed), text,
	// hex, or custom (the PayloadFormatter's).
	Format    string
	Body      string
	Size      int
	Truncated bool
	// Fields are an undecodable entry's fields as stored (each value
	// shown as text when it is, else in hex).
	Fields [][2]string
}

// message decodes what a page shows of an envelope, or of an entry's raw
// fields when it does not decode.
func (c *Console) message(topic string, env *codec.Envelope, fields map[string]string) *messageView {
	if env == nil {
		if len(fields) == 0 {
			return nil
		}
		m := &messageView{Format: "fields"}
		for _, k := range slices.Sorted(maps.Keys(fields)) {
			v, _, _ := showBytes([]byte(fields[k]))
			m.Fields = append(m.Fields, [2]string{k, v})
		}
		return m
	}
	m := &messageView{Kind: env.Kind.String(), ID: env.ID, ReplyTo: env.ReplyTo, Sent: env.Sent, Deadline: env.Deadline, Size: len(env.Payload)}
	for _, k := range slices.Sorted(maps.Keys(env.Headers)) {
		m.Headers = append(m.Headers, [2]string{k, env.Headers[k]})
	}
	if codec.Compressed(env) { // larger than what an operator's read decompresses (inspect)
		m.Body, m.Format, m.Truncated = showBytes(env.Payload)
		m.Format = codec.CompressionOf(env).String() + "-compressed, shown as " + m.Format
		return m
	}
	if c.format != nil {
		if s, ok := c.format(topic, env); ok {
			m.Format, m.Body = "custom", s
			if len(m.Body) > maxShown {
				m.Body, m.Truncated = m.Body[:maxShown], true
			}
			return m
		}
	}
	m.Body, m.Format, m.Truncated = showBytes(env.Payload)
	return m
}

// showBytes renders b as pretty JSON, text or a hex dump, at most maxShown
// bytes of it.
func showBytes(b []byte) (body, format string, truncated bool) {
	if len(b) == 0 {
		return "", "empty", false
	}
	if len(b) <= maxShown && json.Valid(b) && (b[0] == '{' || b[0] == '[' || bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) || bytes.HasPrefix(bytes.TrimSpace(b), []byte("["))) {
		var out bytes.Buffer
		if json.Indent(&out, b, "", "  ") == nil {
			return out.String(), "json", false
		}
	}
	shown := b[:min(len(b), maxShown)]
	if utf8.Valid(shown) && printable(shown) {
		return string(shown), "text", len(b) > maxShown
	}
	return hex.Dump(b[:min(len(b), maxShown/4)]), "hex", len(b) > maxShown/4
}

// printable reports whether text has no control characters but tabs and
// line breaks.
func printable(b []byte) bool {
	for _, r := range string(b) {
		if r < 0x20 && r != '\n' && r != '\r' && r != '\t' || r == 0x7f || r == utf8.RuneError {
			return false
		}
	}
	return true
}
