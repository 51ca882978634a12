package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/egos/mycelium/bus"
	"github.com/egos/mycelium/inspect"
	"github.com/egos/mycelium/internal/redisx"
)

// Bounds of what one page lists.
const (
	defaultDeadLetters = 100
	maxDeadLetters     = 1000
	pendingSample      = 200 // pending entries read per group for the age buckets
	maxFindScan        = 10_000
	maxPause           = 7 * 24 * time.Hour
)

// statusOf maps an error of a read or change to an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, bus.ErrInvalidConfig):
		return http.StatusBadRequest
	case errors.Is(err, bus.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, bus.ErrNotReplayable):
		return http.StatusConflict
	case errors.Is(err, errBusy):
		return http.StatusTooManyRequests
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadGateway // Redis failed or refused
	}
}

// topicName returns the path's topic, checked as the bus checks names.
func topicName(r *http.Request) (string, error) {
	t := r.PathValue("topic")
	if err := bus.ValidateName("topic", t); err != nil {
		return "", err // wraps bus.ErrInvalidConfig
	}
	return t, nil
}

func (c *Console) overviewPage(w http.ResponseWriter, r *http.Request) {
	s, err := c.current(r.Context())
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	q := strings.TrimSpace(r.FormValue("q"))
	rows := s.Topics
	if q != "" {
		rows = nil
		for _, t := range s.Topics {
			if strings.Contains(t.Name, q) {
				rows = append(rows, t)
			}
		}
	}
	c.render(w, r, "overview", "Overview", map[string]any{"S": s, "Rows": rows, "Filter": q, "Prometheus": c.prom != nil})
}

// ageBucket is a count of pending entries of one age range.
type ageBucket struct {
	Label string
	Count int
}

// pendingAges sorts pending entries by their age (by id) into buckets.
func pendingAges(ps []inspect.Pending, now time.Time) []ageBucket {
	bounds := []struct {
		label string
		upTo  time.Duration
	}{{"under 1 s", time.Second}, {"1–10 s", 10 * time.Second}, {"10 s–1 min", time.Minute}, {"1–10 min", 10 * time.Minute}, {"10 min–1 h", time.Hour}, {"over 1 h", 1<<63 - 1}}
	out := make([]ageBucket, len(bounds))
	for k, b := range bounds {
		out[k].Label = b.label
	}
	for _, p := range ps {
		at, ok := redisx.IDTime(p.ID)
		if !ok {
			continue
		}
		a := now.Sub(at)
		for k, b := range bounds {
			if a < b.upTo {
				out[k].Count++
				break
			}
		}
	}
	return out
}

// groupView is a group on the topic page.
type groupView struct {
	inspect.Group
	AgesErr   string
	Ages      []ageBucket
	Sampled   int
	Truncated bool
}

func (c *Console) topicPage(w http.ResponseWriter, r *http.Request) {
	name, err := topicName(r)
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	ctx := r.Context()
	t, err := c.in.Topic(ctx, name)
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	now := time.Now()
	groups := make([]groupView, len(t.Groups))
	for k, g := range t.Groups {
		groups[k].Group = g
		if g.Pending == 0 {
			continue
		}
		ps, err := c.in.Pending(ctx, name, g.Name, "", pendingSample)
		if err != nil {
			groups[k].AgesErr = shown(err) // a group name the bus would not make, say: the rest of the page stands
			continue
		}
		groups[k].Ages, groups[k].Sampled, groups[k].Truncated = pendingAges(ps, now), len(ps), g.Pending > int64(len(ps))
	}
	// The cache's stored answers are counted by walking the keyspace: only
	// when asked, one walk at a time.
	var cache *inspect.CacheStats
	var cacheErr error
	if r.FormValue("cache") == "1" {
		if !c.begin() {
			cacheErr = errBusy
		} else {
			cs, err := c.in.CacheStats(ctx, name)
			c.end()
			cache, cacheErr = &cs, err
		}
	}
	var rates *topicRow
	if s, err := c.current(ctx); err == nil {
		for k := range s.Topics {
			if s.Topics[k].Name == name {
				rates = &s.Topics[k]
			}
		}
	}
	tr := row(&t)
	c.render(w, r, "topic", "Topic "+name, map[string]any{"T": t, "Row": tr, "Rates": rates, "Groups": groups,
		"Cache": cache, "CacheErr": errText(cacheErr), "Now": now})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return shown(err)
}

// letterView is a dead letter on its page, its message decoded.
type letterView struct {
	inspect.DeadLetter
	Msg *messageView
}

func (c *Console) deadLettersPage(w http.ResponseWriter, r *http.Request) {
	name, err := topicName(r)
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	limit := defaultDeadLetters
	if v := r.FormValue("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxDeadLetters {
			c.fail(w, r, http.StatusBadRequest, fmt.Errorf("limit %q: want 1 to %d", v, maxDeadLetters))
			return
		}
	}
	ctx := r.Context()
	dls, err := c.in.DeadLetters(ctx, name, limit+1)
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	more := len(dls) > limit
	dls = dls[:min(len(dls), limit)]
	t, err := c.in.Topic(ctx, name)
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	views := make([]letterView, len(dls))
	for k := range dls {
		views[k] = letterView{DeadLetter: dls[k], Msg: c.message(name, dls[k].Envelope, dls[k].Fields)}
	}
	c.render(w, r, "deadletters", "Dead letters of "+name, map[string]any{"Topic": name, "Letters": views, "More": more,
		"Limit": limit, "Total": t.DeadLetters})
}

func (c *Console) purgePage(w http.ResponseWriter, r *http.Request) {
	name, err := topicName(r)
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	t, err := c.in.Topic(r.Context(), name)
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	c.render(w, r, "purge", "Purge dead letters of "+name, map[string]any{"Topic": name, "Total": t.DeadLetters})
}

// replay puts dead letters back on their topic: the ids selected, or all.
func (c *Console) replay(r *http.Request) (what, back string, err error) {
	name, err := topicName(r)
	if err != nil {
		return "", "", err
	}
	back = c.root + "/topics/" + pathEscape(name) + "/dead-letters"
	ids := r.PostForm["id"]
	all := r.PostFormValue("all") == "1"
	switch {
	case all && len(ids) > 0:
		return "", back, fmt.Errorf("%w: ask for all dead letters or for some ids, not both", bus.ErrInvalidConfig)
	case !all && len(ids) == 0:
		return "", back, fmt.Errorf("%w: no dead letter selected", bus.ErrInvalidConfig)
	case len(ids) > maxDeadLetters:
		return "", back, fmt.Errorf("%w: %d ids, at most %d at once", bus.ErrInvalidConfig, len(ids), maxDeadLetters)
	}
	for _, id := range ids {
		if !entryID(id) {
			return "", back, fmt.Errorf("%w: %q is not an entry id", bus.ErrInvalidConfig, id)
		}
	}
	n, err := c.in.ReplayDeadLetters(r.Context(), name, ids...)
	what = fmt.Sprintf("replayed %d dead letter(s)", n)
	if all {
		what += " (all)"
	}
	return what, back, err
}

// purge deletes dead letters once the form confirms the topic's name.
func (c *Console) purge(r *http.Request) (what, back string, err error) {
	name, err := topicName(r)
	if err != nil {
		return "", "", err
	}
	back = c.root + "/topics/" + pathEscape(name) + "/dead-letters"
	if r.PostFormValue("confirm") != name {
		return "", back, fmt.Errorf("%w: type the topic's name to confirm the purge", bus.ErrInvalidConfig)
	}
	var older time.Duration
	if v := r.PostFormValue("older_than"); v != "" {
		if older, err = time.ParseDuration(v); err != nil || older < 0 {
			return "", back, fmt.Errorf("%w: older than %q: want a duration such as 24h", bus.ErrInvalidConfig, v)
		}
	}
	n, err := c.in.PurgeDeadLetters(r.Context(), name, older)
	what = fmt.Sprintf("purged %d dead letter(s)", n)
	if older > 0 {
		what += " older than " + older.String()
	}
	return what, back, err
}

// pause stops every worker of the topic from starting handlers for a
// while.
func (c *Console) pause(r *http.Request) (what, back string, err error) {
	name, err := topicName(r)
	if err != nil {
		return "", "", err
	}
	back = c.root + "/topics/" + pathEscape(name)
	d, err := time.ParseDuration(r.PostFormValue("for"))
	if err != nil || d <= 0 || d > maxPause {
		return "", back, fmt.Errorf("%w: pause for %q: want a duration from 1s to %v", bus.ErrInvalidConfig, r.PostFormValue("for"), maxPause)
	}
	until, err := c.in.PauseTopic(r.Context(), name, d)
	return "paused until " + until.UTC().Format(time.RFC3339), back, err
}

func (c *Console) resume(r *http.Request) (what, back string, err error) {
	name, err := topicName(r)
	if err != nil {
		return "", "", err
	}
	back = c.root + "/topics/" + pathEscape(name)
	return "resumed", back, c.in.ResumeTopic(r.Context(), name)
}

// foundView is a match on the find page.
type foundView struct {
	inspect.Found
	Msg *messageView
}

func (c *Console) findPage(w http.ResponseWriter, r *http.Request) {
	q := strings.TrimSpace(r.FormValue("q"))
	topic := strings.TrimSpace(r.FormValue("topic"))
	data := map[string]any{"Q": q, "Topic": topic, "Searched": false, "Scan": inspect.DefaultFindScan, "MaxScan": maxFindScan}
	if q != "" {
		scan := 0
		if v := r.FormValue("scan"); v != "" {
			var err error
			if scan, err = strconv.Atoi(v); err != nil || scan < 1 || scan > maxFindScan {
				c.fail(w, r, http.StatusBadRequest, fmt.Errorf("scan %q: want 1 to %d", v, maxFindScan))
				return
			}
		}
		if scan > 0 {
			data["Scan"] = scan
		}
		o := inspect.FindOptions{Topic: topic, Scan: scan}
		if topic == "" { // the topics the console knows, not a walk of the keyspace
			s, err := c.current(r.Context())
			if err != nil {
				c.fail(w, r, statusOf(err), err)
				return
			}
			o.Topics = make([]string, len(s.Topics))
			for k := range s.Topics {
				o.Topics[k] = s.Topics[k].Name
			}
		}
		if !c.begin() {
			c.fail(w, r, http.StatusTooManyRequests, errBusy)
			return
		}
		found, err := c.in.Find(r.Context(), q, o)
		c.end()
		if err != nil {
			c.fail(w, r, statusOf(err), err)
			return
		}
		views := make([]foundView, len(found))
		for k := range found {
			var fields map[string]string
			if found[k].Envelope == nil && found[k].Raw != "" {
				fields = map[string]string{redisx.Field: found[k].Raw}
			}
			if found[k].DeadLetter != nil {
				fields = found[k].DeadLetter.Fields
			}
			views[k] = foundView{Found: found[k], Msg: c.message(found[k].Topic, found[k].Envelope, fields)}
		}
		data["Searched"], data["Found"] = true, views
	}
	c.render(w, r, "find", "Find a message", data)
}

// workerView is one consumer of one topic's group on the workers page.
type workerView struct {
	Name, Topic, Group string
	Pending            int64
	Idle, LastBeat     time.Duration
	Live               bool
}

func (c *Console) workersPage(w http.ResponseWriter, r *http.Request) {
	s, err := c.current(r.Context())
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	var ws []workerView
	live := map[string]bool{}
	for _, t := range s.Overview.Topics {
		for _, g := range t.Groups {
			for _, cn := range g.Consumers {
				v := workerView{Name: cn.Name, Topic: t.Name, Group: g.Name, Pending: cn.Pending, Idle: cn.Idle, LastBeat: cn.LastBeat,
					Live: cn.LastBeat >= 0 && cn.LastBeat <= liveBeat}
				if v.Live {
					live[v.Name] = true
				}
				ws = append(ws, v)
			}
		}
	}
	slices.SortStableFunc(ws, func(a, b workerView) int {
		if a.Live != b.Live {
			if a.Live {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name+" "+a.Topic, b.Name+" "+b.Topic)
	})
	c.render(w, r, "workers", "Workers", map[string]any{"Workers": ws, "Live": len(live), "S": s})
}

func (c *Console) redisPage(w http.ResponseWriter, r *http.Request) {
	s, err := c.current(r.Context())
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	var nodes []inspect.ClusterNode
	nodesErr := ""
	if s.Mode == "cluster" {
		if nodes, err = c.in.ClusterNodes(r.Context()); err != nil {
			nodesErr = err.Error()
		}
	}
	c.render(w, r, "redis", "Redis", map[string]any{"S": s, "Nodes": nodes, "NodesErr": nodesErr,
		"Replies": len(s.Overview.ReplyStreams)})
}

// entryID reports whether s is a stream entry id.
func entryID(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok || ms == "" || seq == "" || len(s) > 41 {
		return false
	}
	for _, p := range []string{ms, seq} {
		if _, err := strconv.ParseUint(p, 10, 64); err != nil {
			return false
		}
	}
	return true
}
