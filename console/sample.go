package console

import (
	"context"
	"errors"
	"slices"
	"sort"
	"time"

	"github.com/egos/mycelium/inspect"
)

// liveBeat is how recent a consumer's last beat must be for the console to
// count it as a live worker: three of a worker's beats (every 5 s).
const liveBeat = 15 * time.Second

// snapshot is the bus at one moment, as the pages show it.
type snapshot struct {
	Time     time.Time
	Overview *inspect.Overview
	Topics   []topicRow // by name
	Totals   topicRow
	Servers  []nodeRow
	// ServersErr is why the servers could not be read (an ACL user
	// without INFO); the topics are shown all the same.
	ServersErr string
	Mode       string
	// HitRatio is the fleet's cache hit ratio from Prometheus, when
	// HitOK.
	HitRatio float64
	HitOK    bool
}

// topicRow is one topic's figures on the overview.
type topicRow struct {
	Name        string
	Length      int64
	Pending     int64 // over every group
	Backlog     int64 // the most behind group's entries not yet delivered; the length when no group reads it; -1 unknown
	DeadLetters int64
	Delayed     int64
	// OldestPending is the oldest pending entry's age over the groups.
	OldestPending time.Duration
	Workers       int // consumers that beat within liveBeat
	Partitions    int
	Draining      int
	Levels        int
	Strict        bool
	Limits        inspect.Limits
	// InRate and OutRate are entries added and acknowledged (over every
	// group) per second since the previous sample; RatesOK is false on the
	// first sample and when Redis does not count (before 7.0). A topic no
	// group reads counts its length's growth as what was added.
	InRate, OutRate float64
	RatesOK         bool
	Err             string

	added, acked int64 // counters behind the rates; -1 unknown
}

// nodeRow is one Redis master on the Redis page.
type nodeRow struct {
	inspect.NodeServer
	CPUPercent float64 // over the last sample; valid when CPUKnown
	CPUKnown   bool
}

// cpuReading is a node's CPU time at one moment.
type cpuReading struct {
	at  time.Time
	cpu time.Duration
}

// point is one sample of the charts: totals, and each topic's in, out and
// backlog.
type point struct {
	t       time.Time
	in, out float64
	backlog float64
	names   []string // sorted; shared between points while unchanged
	vals    [][3]float32
}

// history is the last max points.
type history struct {
	max    int
	points []point
}

func (h *history) add(p point) {
	if len(h.points) > 0 && slices.Equal(h.points[len(h.points)-1].names, p.names) {
		p.names = h.points[len(h.points)-1].names
	}
	h.points = append(h.points, p)
	if len(h.points) > h.max {
		h.points = slices.Delete(h.points, 0, len(h.points)-h.max)
	}
}

// sample reads the bus and records the figures.
func (c *Console) sample(ctx context.Context) (*snapshot, error) {
	ov, err := c.in.Overview(ctx)
	if err != nil {
		return nil, err
	}
	s := &snapshot{Time: ov.Time, Overview: ov, Mode: c.client.Mode()}
	s.Topics = make([]topicRow, len(ov.Topics))
	for k := range ov.Topics {
		s.Topics[k] = row(&ov.Topics[k])
	}
	sort.Slice(s.Topics, func(a, b int) bool { return s.Topics[a].Name < s.Topics[b].Name })
	nodes, err := c.in.Servers(ctx)
	if err != nil {
		s.ServersErr = err.Error()
	}
	if c.prom != nil {
		var err error
		s.HitRatio, err = c.prom.hitRatio(ctx)
		s.HitOK = err == nil
		if err != nil && !errors.Is(err, errNoRatio) {
			c.mu.Lock()
			if time.Since(c.promErr) > time.Minute {
				c.promErr = time.Now()
				c.log.Warn().Err(err).Msg("console: the cache hit ratio could not be read from Prometheus (logged once a minute)")
			}
			c.mu.Unlock()
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.last
	if prev != nil && !prev.Time.Before(s.Time) {
		return prev, nil // a later read won the race
	}
	for _, n := range nodes {
		r := nodeRow{NodeServer: n}
		if p, ok := c.cpu[n.Addr]; ok && n.CPUOK && s.Time.After(p.at) {
			r.CPUPercent, r.CPUKnown = 100*float64(n.CPU-p.cpu)/float64(s.Time.Sub(p.at)), true
			r.CPUPercent = max(r.CPUPercent, 0)
		}
		if n.CPUOK {
			c.cpu[n.Addr] = cpuReading{at: s.Time, cpu: n.CPU}
		}
		s.Servers = append(s.Servers, r)
	}
	rates(prev, s)
	p := point{t: s.Time, in: s.Totals.InRate, out: s.Totals.OutRate, backlog: float64(s.Totals.Backlog),
		names: make([]string, len(s.Topics)), vals: make([][3]float32, len(s.Topics))}
	for k := range s.Topics {
		t := &s.Topics[k]
		p.names[k] = t.Name
		p.vals[k] = [3]float32{float32(t.InRate), float32(t.OutRate), float32(max(t.Backlog, 0))}
	}
	c.hist.add(p)
	c.last = s
	return s, nil
}

// row turns a topic into its overview figures.
func row(t *inspect.Topic) topicRow {
	r := topicRow{Name: t.Name, Length: t.Length, DeadLetters: t.DeadLetters, Delayed: t.Delayed,
		Partitions: t.Partitions, Draining: t.Draining, Levels: t.Levels, Strict: t.Strict, Limits: t.Limits, Err: t.Err,
		Backlog: t.Length, added: -1, acked: 0}
	if len(t.Groups) > 0 {
		r.Backlog = 0
	}
	seen := map[string]bool{}
	for _, g := range t.Groups {
		r.Pending += g.Pending
		r.OldestPending = max(r.OldestPending, g.OldestPendingAge)
		if r.Backlog >= 0 {
			if g.Lag < 0 {
				r.Backlog = -1
			} else {
				r.Backlog = max(r.Backlog, g.Lag)
			}
		}
		if g.Read >= 0 && g.Lag >= 0 {
			r.added = max(r.added, g.Read+g.Lag)
		}
		if r.acked >= 0 {
			if g.Read < 0 {
				r.acked = -1
			} else {
				r.acked += g.Read - g.Pending
			}
		}
		for _, cn := range g.Consumers {
			if cn.LastBeat >= 0 && cn.LastBeat <= liveBeat && !seen[cn.Name] {
				seen[cn.Name] = true
				r.Workers++
			}
		}
	}
	if len(t.Groups) == 0 {
		// Nobody reads it, so nothing trims it but the producers' caps:
		// its length counts what was added (exactly, until a cap trims
		// it), and nothing is acknowledged.
		r.added, r.acked = t.Length, 0
	}
	return r
}

// rates fills in s's rates from prev's counters, and s's totals.
func rates(prev *snapshot, s *snapshot) {
	tot := &s.Totals
	tot.Name = "all topics"
	tot.RatesOK = prev != nil
	var before map[string]*topicRow
	if prev != nil {
		before = make(map[string]*topicRow, len(prev.Topics))
		for k := range prev.Topics {
			before[prev.Topics[k].Name] = &prev.Topics[k]
		}
	}
	for k := range s.Topics {
		t := &s.Topics[k]
		if p, ok := before[t.Name]; ok {
			dt := s.Time.Sub(prev.Time).Seconds()
			if t.added >= 0 && p.added >= 0 && t.acked >= 0 && p.acked >= 0 && dt > 0 {
				t.InRate, t.OutRate, t.RatesOK = max(float64(t.added-p.added)/dt, 0), max(float64(t.acked-p.acked)/dt, 0), true
			}
		}
		tot.Length += t.Length
		tot.Pending += t.Pending
		tot.Backlog += max(t.Backlog, 0)
		tot.DeadLetters += t.DeadLetters
		tot.Delayed += t.Delayed
		tot.OldestPending = max(tot.OldestPending, t.OldestPending)
		tot.Workers += t.Workers
		tot.InRate += t.InRate
		tot.OutRate += t.OutRate
	}
}
