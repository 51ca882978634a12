package consumer

import (
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// What happens to entries (a handler failed, an entry was dead-lettered or
// was malformed) is logged at warn level so that an operator reading the
// worker's log sees it, at most warnBurst lines per warnPeriod; the first
// line after a suppressed stretch says how many were left out. The counters
// (Stats, /metrics) count every one.
const (
	warnBurst  = 10
	warnPeriod = 10 * time.Second
)

// warnLimiter lets warnBurst events through per warnPeriod and counts the
// others. Safe for concurrent use.
type warnLimiter struct {
	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

// allow reports whether an event at now may be logged and, if so, how many
// were suppressed since the last one that was.
func (l *warnLimiter) allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= warnPeriod {
		l.start, l.n = now, 0
	}
	if l.n >= warnBurst {
		l.suppressed++
		return false, 0
	}
	l.n++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// warnEntry returns a warn event about entry id (attempt, reason), or nil
// when warnings are off or over the limit. The caller adds the error and
// sends it with Msg.
func (c *Consumer) warnEntry(id string, attempt int, reason string) *zerolog.Event {
	if c.log.GetLevel() > zerolog.WarnLevel {
		return nil
	}
	ok, suppressed := c.warns.allow(time.Now())
	if !ok {
		return nil
	}
	ev := c.log.Warn().Str("topic", c.cfg.Topic).Str("entry", id).Int("attempt", attempt).Str("reason", reason)
	if suppressed > 0 {
		ev = ev.Int("suppressed", suppressed)
	}
	return ev
}
