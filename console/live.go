package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// liveTopic is one topic's figures in a live update (and /api/overview).
type liveTopic struct {
	Name           string   `json:"name"`
	Length         int64    `json:"length"`
	Pending        int64    `json:"pending"`
	Backlog        int64    `json:"backlog"` // -1: Redis cannot tell
	DeadLetters    int64    `json:"dead_letters"`
	Delayed        int64    `json:"delayed"`
	Workers        int      `json:"workers"`
	OldestPendingS float64  `json:"oldest_pending_seconds"`
	In             *float64 `json:"in_per_second"`  // null until two samples
	Out            *float64 `json:"out_per_second"` // acknowledged, over every group
	PausedUntil    int64    `json:"paused_until_ms,omitempty"`
	Error          string   `json:"error,omitempty"`
}

// liveData is one live update.
type liveData struct {
	Time     int64       `json:"time_ms"`
	Totals   liveTopic   `json:"totals"`
	Topics   []liveTopic `json:"topics"`
	HitRatio *float64    `json:"cache_hit_ratio,omitempty"`
}

func live(t *topicRow) liveTopic {
	l := liveTopic{Name: t.Name, Length: t.Length, Pending: t.Pending, Backlog: t.Backlog, DeadLetters: t.DeadLetters,
		Delayed: t.Delayed, Workers: t.Workers, OldestPendingS: t.OldestPending.Seconds(), Error: t.Err}
	if t.RatesOK {
		in, out := t.InRate, t.OutRate
		l.In, l.Out = &in, &out
	}
	if t.Limits.PausedUntil.After(time.Now()) {
		l.PausedUntil = t.Limits.PausedUntil.UnixMilli()
	}
	return l
}

// liveOf is s for the live updates: every topic, or only topic.
func liveOf(s *snapshot, topic string) liveData {
	d := liveData{Time: s.Time.UnixMilli(), Totals: live(&s.Totals), Topics: make([]liveTopic, 0, len(s.Topics))}
	for k := range s.Topics {
		if topic == "" || s.Topics[k].Name == topic {
			d.Topics = append(d.Topics, live(&s.Topics[k]))
		}
	}
	if s.HitOK {
		h := s.HitRatio
		d.HitRatio = &h
	}
	return d
}

// events streams the live figures as server-sent events ("overview"), one
// per Refresh, until the browser goes away; ?topic= narrows them to one
// topic.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		c.fail(w, r, http.StatusInternalServerError, fmt.Errorf("streaming is not supported by this server"))
		return
	}
	topic := r.FormValue("topic")
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	ctx := r.Context()
	fmt.Fprintf(w, "retry: %d\n\n", c.cfg.Refresh.Milliseconds())
	fl.Flush()
	t := time.NewTicker(c.cfg.Refresh)
	defer t.Stop()
	var last time.Time
	for {
		s, err := c.current(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if _, err := fmt.Fprintf(w, "event: failure\ndata: %s\n\n", jsonString(err.Error())); err != nil {
				return
			}
		case !s.Time.Equal(last):
			last = s.Time
			b, _ := json.Marshal(liveOf(s, topic))
			if _, err := fmt.Fprintf(w, "event: overview\ndata: %s\n\n", b); err != nil {
				return
			}
		}
		fl.Flush()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// apiOverview answers the live figures as JSON.
func (c *Console) apiOverview(w http.ResponseWriter, r *http.Request) {
	s, err := c.current(r.Context())
	if err != nil {
		c.fail(w, r, statusOf(err), err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(liveOf(s, r.FormValue("topic")))
}

// series is the charts' history: times (unix seconds) and values.
type series struct {
	Time    []float64  `json:"t"`
	In      []*float64 `json:"in"`
	Out     []*float64 `json:"out"`
	Backlog []*float64 `json:"backlog"`
}

// apiHistory answers the last History of rates and backlog: the totals, or
// one topic's (?topic=).
func (c *Console) apiHistory(w http.ResponseWriter, r *http.Request) {
	topic := r.FormValue("topic")
	c.mu.Lock()
	var out series
	for k, p := range c.hist.points {
		if k == 0 {
			continue // no rates before a second sample
		}
		in, o, b := p.in, p.out, p.backlog
		if topic != "" {
			j, ok := searchNames(p.names, topic)
			if !ok {
				continue
			}
			in, o, b = float64(p.vals[j][0]), float64(p.vals[j][1]), float64(p.vals[j][2])
		}
		out.Time = append(out.Time, float64(p.t.UnixMilli())/1000)
		out.In, out.Out, out.Backlog = append(out.In, &in), append(out.Out, &o), append(out.Backlog, &b)
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}

func searchNames(names []string, name string) (int, bool) {
	lo, hi := 0, len(names)
	for lo < hi {
		m := (lo + hi) / 2
		if names[m] < name {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(names) && names[lo] == name
}

// promClient asks a Prometheus server for the fleet's cache hit ratio.
type promClient struct {
	base string
	hc   *http.Client
}

func newPromClient(base string) *promClient {
	return &promClient{base: base, hc: &http.Client{Timeout: 2 * time.Second}}
}

// hitQuery is the fleet's cache hit ratio over 5 minutes (producer
// metrics, prom package).
const hitQuery = `(sum(rate(mycelium_producer_cache_hits_local_total[5m])) + sum(rate(mycelium_producer_cache_hits_shared_total[5m]))) / (sum(rate(mycelium_producer_cache_hits_local_total[5m])) + sum(rate(mycelium_producer_cache_hits_shared_total[5m])) + sum(rate(mycelium_producer_cache_misses_total[5m])))`

// errNoRatio: Prometheus answered, without one ratio (no producer
// scraped, or no cached request in 5 minutes).
var errNoRatio = errors.New("no cache hit ratio in the answer")

// hitRatio returns the ratio; errNoRatio when Prometheus has none.
func (p *promClient) hitRatio(ctx context.Context) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/api/v1/query?query="+url.QueryEscape(hitQuery), nil)
	if err != nil {
		return 0, err
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return 0, redactURLError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("the Prometheus server answered %s", resp.Status)
	}
	var body struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body); err != nil || body.Status != "success" {
		return 0, errors.New("the Prometheus server's answer does not read as a query result")
	}
	if len(body.Data.Result) != 1 {
		return 0, errNoRatio
	}
	s, ok := body.Data.Result[0].Value[1].(string)
	if !ok {
		return 0, errNoRatio
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v > 1 {
		return 0, errNoRatio // NaN when nothing was asked
	}
	return v, nil
}

// redactURLError drops the URL (which may hold credentials) from an HTTP
// client's error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("asking Prometheus: %w", ue.Err)
	}
	return err
}
