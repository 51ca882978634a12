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

// entryWarning is what happened to one entry, for warnEntry.
type entryWarning struct {
	id      string
	attempt int
	reason  string // retry | handler_error | max_deliveries | malformed
	handled bool   // a handler ran: request says what kind of entry it was
	request bool
	err     string // "" when there is none
	msg     string // what becomes of the entry
}

// warnEntry logs w at warn level unless warnings are off or over the limit.
func (e *env) warnEntry(w entryWarning) {
	if e.log.GetLevel() > zerolog.WarnLevel {
		return
	}
	ok, suppressed := e.warns.allow(time.Now())
	if !ok {
		return
	}
	ev := e.log.Warn().Str("topic", e.cfg.Topic).Str("entry", w.id).Int("attempt", w.attempt).Str("reason", w.reason)
	if w.handled {
		ev = ev.Bool("request", w.request)
	}
	if w.err != "" {
		ev = ev.Str("error", w.err)
	}
	if suppressed > 0 {
		ev = ev.Int("suppressed", suppressed)
	}
	ev.Msg(w.msg)
}
